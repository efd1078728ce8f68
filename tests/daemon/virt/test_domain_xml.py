"""Domain XML: what a provisioned domain is made of, escaping, UUIDs, and a real define."""

from __future__ import annotations

import dataclasses
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterator

import libvirt
import pytest

from daemon.virt.domain_xml import (
    METADATA_NS,
    DomainSpec,
    build_domain_xml,
    build_volume_xml,
    capabilities_summary,
    disks_of,
    domain_uuid_for,
    parse_request_metadata,
    volume_facts_of,
)

DATA = Path(__file__).resolve().parents[2] / "data"
NS = {"p": METADATA_NS}
EVIL = "<x>&\"';$(rm -rf /)"


def spec(**overrides: Any) -> DomainSpec:
    values: dict[str, Any] = dict(
        name="web-42", uuid=domain_uuid_for("req-42"), domain_type="kvm", arch="x86_64",
        cpus=2, memory_kib=262144, disk_pool="pool-dir", disk_volume="free-15g.qcow2",
        disk_format="qcow2", cdrom_path=None, cdrom_pool="pool-dir", cdrom_volume="ipxe.iso",
        network=None, request_id="req-42", owner="alice", template="ipxe", size="small",
        resource_pool="rp")
    values.update(overrides)
    return DomainSpec(**values)


def parse(s: DomainSpec) -> ET.Element:
    return ET.fromstring(build_domain_xml(s))


def disk(root: ET.Element, device: str) -> ET.Element:
    [found] = root.findall(f"./devices/disk[@device='{device}']")
    return found


# --------------------------------------------------------------------------- the XML


def test_domain_has_name_uuid_type_cpus_and_memory() -> None:
    root = parse(spec())

    assert root.tag == "domain" and root.get("type") == "kvm"
    assert root.findtext("name") == "web-42"
    assert root.findtext("uuid") == domain_uuid_for("req-42")
    assert root.findtext("vcpu") == "2"
    memory = root.find("memory")
    assert memory is not None and memory.get("unit") == "KiB" and memory.text == "262144"
    assert root.find("currentMemory").text == "262144"  # type: ignore[union-attr]
    os_type = root.find("./os/type")
    assert os_type is not None and os_type.text == "hvm" and os_type.get("arch") == "x86_64"


def test_disk_is_the_requests_volume() -> None:
    d = disk(parse(spec()), "disk")
    assert d.get("type") == "volume"
    assert d.find("source").attrib == {"pool": "pool-dir",  # type: ignore[union-attr]
                                       "volume": "free-15g.qcow2"}
    assert d.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert d.find("target").get("dev") == "vda"  # type: ignore[union-attr]


def test_disk_without_a_format_is_raw() -> None:
    d = disk(parse(spec(disk_format=None)), "disk")
    assert d.find("driver").get("type") == "raw"  # type: ignore[union-attr]


def test_template_iso_volume_is_a_readonly_cdrom() -> None:
    cd = disk(parse(spec()), "cdrom")
    assert cd.get("type") == "volume"
    assert cd.find("source").attrib == {"pool": "pool-dir",  # type: ignore[union-attr]
                                        "volume": "ipxe.iso"}
    assert cd.find("readonly") is not None


def test_template_iso_file_is_a_file_cdrom() -> None:
    cd = disk(parse(spec(cdrom_pool=None, cdrom_volume=None,
                         cdrom_path="/usr/lib/ipxe/ipxe.iso")), "cdrom")
    assert cd.get("type") == "file"
    assert cd.find("source").attrib == {"file": "/usr/lib/ipxe/ipxe.iso"}  # type: ignore


def test_boots_from_cdrom_then_disk() -> None:
    root = parse(spec())
    assert [b.get("dev") for b in root.findall("./os/boot")] == ["cdrom", "hd"]


def test_network_only_when_the_size_names_one() -> None:
    assert parse(spec()).find("./devices/interface") is None
    nic = parse(spec(network="default")).find("./devices/interface")
    assert nic is not None and nic.find("source").get("network") == "default"  # type: ignore


def test_metadata_carries_the_request() -> None:
    req = parse(spec()).find("./metadata/p:request", NS)
    assert req is not None
    assert {child.tag.split("}")[1]: child.text for child in req} == {
        "request-id": "req-42", "owner": "alice", "template": "ipxe", "size": "small",
        "resource-pool": "rp"}


@pytest.mark.parametrize("field", ["name", "owner", "template", "request_id"])
def test_metacharacters_are_escaped_and_round_trip(field: str) -> None:
    evil_spec = spec(**{field: EVIL})
    xml = build_domain_xml(evil_spec)

    root = ET.fromstring(xml)  # still well-formed
    assert EVIL not in xml  # never pasted raw
    if field == "name":
        assert root.findtext("name") == EVIL
    else:
        tag = field.replace("_", "-")
        assert root.findtext(f"./metadata/p:request/p:{tag}", namespaces=NS) == EVIL
    # Nothing was injected: the same elements as for a harmless spec.
    assert [e.tag for e in root.iter()] == [e.tag for e in parse(spec()).iter()]


def test_disk_and_volume_names_are_escaped_in_attributes() -> None:
    root = parse(spec(disk_volume=EVIL, cdrom_pool=None, cdrom_volume=None, cdrom_path=EVIL))
    assert disk(root, "disk").find("source").get("volume") == EVIL  # type: ignore[union-attr]
    assert disk(root, "cdrom").find("source").get("file") == EVIL  # type: ignore[union-attr]


# --------------------------------------------------------------------------- UUIDs


def test_domain_uuid_is_deterministic_per_request() -> None:
    first = domain_uuid_for("5f0c3e0a9b8d4c7e")
    assert domain_uuid_for("5f0c3e0a9b8d4c7e") == first
    assert str(uuid.UUID(first)) == first  # a canonical UUID string


def test_domain_uuid_differs_between_requests() -> None:
    ids = [f"req-{i}" for i in range(200)]
    assert len({domain_uuid_for(i) for i in ids}) == len(ids)


# --------------------------------------------------------------------------- capabilities


def caps(host_arch: str, *guests: tuple[str, str, list[str]]) -> str:
    """A capabilities document: guests as (os_type, arch, domain types)."""
    parts = [f"<capabilities><host><cpu><arch>{host_arch}</arch></cpu></host>"]
    for os_type, arch, types in guests:
        domains = "".join(f"<domain type='{t}'/>" for t in types)
        parts.append(f"<guest><os_type>{os_type}</os_type><arch name='{arch}'>"
                     f"<wordsize>64</wordsize>{domains}</arch></guest>")
    parts.append("</capabilities>")
    return "".join(parts)


def test_capabilities_pick_kvm_when_offered() -> None:
    doc = caps("x86_64", ("hvm", "x86_64", ["qemu", "kvm"]))
    assert capabilities_summary(doc) == ("kvm", "x86_64")


def test_capabilities_fall_back_to_qemu() -> None:
    doc = caps("aarch64", ("hvm", "aarch64", ["qemu"]))
    assert capabilities_summary(doc) == ("qemu", "aarch64")


def test_capabilities_ignore_kvm_for_non_hvm_guests() -> None:
    doc = caps("x86_64", ("xen", "x86_64", ["kvm"]), ("hvm", "x86_64", ["qemu"]))
    assert capabilities_summary(doc) == ("qemu", "x86_64")


def test_capabilities_of_the_test_driver_are_qemu() -> None:
    conn = libvirt.open(f"test://{DATA / 'host_basic.xml'}")
    try:
        assert capabilities_summary(conn.getCapabilities())[0] == "qemu"
    finally:
        conn.close()


def test_capabilities_prefer_the_hosts_own_arch() -> None:
    # The order libvirt's qemu driver lists guests in on an x86_64 KVM host.
    doc = caps("x86_64", ("hvm", "i686", ["qemu", "kvm"]), ("hvm", "x86_64", ["qemu", "kvm"]))
    assert capabilities_summary(doc) == ("kvm", "x86_64")


# --------------------------------------------------------------------------- a real define


@pytest.fixture
def conn() -> Iterator[Any]:
    """A private test-driver host (each open of a test:/// URI is its own host)."""
    c = libvirt.open("test://" + str((DATA / "host_basic.xml").resolve()))
    yield c
    c.close()


def test_built_xml_defines_on_libvirt_with_its_cpus_memory_and_metadata(conn: Any) -> None:
    domain_type, arch = capabilities_summary(conn.getCapabilities())
    s = spec(domain_type=domain_type, arch=arch, cpus=3, memory_kib=393216)

    dom = conn.defineXML(build_domain_xml(s))

    assert dom.name() == "web-42" and dom.UUIDString() == s.uuid
    _state, max_mem, _mem, vcpus, _cpu_time = dom.info()
    assert (vcpus, max_mem) == (3, 393216)
    assert not dom.isActive()  # defined, not started
    meta = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS)
    assert parse_request_metadata(meta) == {
        "request_id": "req-42", "owner": "alice", "template": "ipxe", "size": "small",
        "resource_pool": "rp"}
    defined = ET.fromstring(dom.XMLDesc(0))
    assert [b.get("dev") for b in defined.findall("./os/boot")] == ["cdrom", "hd"]
    assert disk(defined, "disk").find("source").attrib == {  # type: ignore[union-attr]
        "pool": "pool-dir", "volume": "free-15g.qcow2"}


def test_an_owner_with_metacharacters_round_trips_through_libvirt(conn: Any) -> None:
    domain_type, arch = capabilities_summary(conn.getCapabilities())
    dom = conn.defineXML(build_domain_xml(spec(domain_type=domain_type, arch=arch,
                                               owner=EVIL, template=EVIL)))
    meta = parse_request_metadata(dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                                               METADATA_NS))
    assert meta["owner"] == EVIL and meta["template"] == EVIL


def test_redefining_the_same_request_finds_the_same_domain(conn: Any) -> None:
    domain_type, arch = capabilities_summary(conn.getCapabilities())
    first = conn.defineXML(build_domain_xml(spec(domain_type=domain_type, arch=arch)))
    again = conn.defineXML(build_domain_xml(dataclasses.replace(
        spec(domain_type=domain_type, arch=arch), cpus=4)))
    assert again.UUIDString() == first.UUIDString()
    assert [d.name() for d in conn.listAllDomains()].count("web-42") == 1
    assert conn.lookupByUUIDString(first.UUIDString()).info()[3] == 4


@pytest.mark.parametrize("overrides", [
    {},
    {"cdrom_pool": None, "cdrom_volume": None, "cdrom_path": "/srv/iso/ipxe.iso"},
    {"network": "default", "disk_format": None},
])
def test_a_spec_names_the_disks_its_xml_has(overrides: dict) -> None:
    # The inventory records a new domain's disks from its spec, without parsing its XML.
    s = spec(**overrides)
    assert s.disks() == disks_of(build_domain_xml(s))


def test_a_volumes_xml_says_what_info_and_path_say(conn: Any) -> None:
    # The inventory reads each volume with one XMLDesc instead of info() + path() + XMLDesc.
    volumes = [v for pool in conn.listAllStoragePools() if pool.isActive()
               for v in pool.listAllVolumes()]
    assert len(volumes) > 5
    for vol in volumes:
        path, capacity, allocation, _fmt, _backing = volume_facts_of(vol.XMLDesc(0))
        assert (path, capacity, allocation) == (vol.path(), *vol.info()[1:]), vol.name()
    assert volume_facts_of(build_volume_xml("v", 7 * 1024**3, "qcow2"))[1:] == (
        7 * 1024**3, 0, "qcow2", None)
    assert volume_facts_of("<volume><capacity unit='KiB'>4</capacity>"
                           "<target><path>/x</path></target></volume>") == (
        "/x", 4096, 0, None, None)
    overlay = build_volume_xml("o", 1024, "qcow2", backing_path="/img/base.raw")
    assert volume_facts_of(overlay)[4] == "/img/base.raw"
