"""Domain and volume XML, built with ElementTree: user strings are never pasted into text."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass

METADATA_NS = "urn:x-provisiond:request:1"
METADATA_PREFIX = "provisiond"
REQUEST_UUID_NAMESPACE = uuid.UUID("9b7f2c1e-5d0a-4c57-a6f3-0e2d8b41c9aa")
VOLUME_PREFIX = "provisiond-"


def domain_uuid_for(request_id: str) -> str:
    """The domain UUID of a request: derived from its id, so a retried define finds it."""
    return str(uuid.uuid5(REQUEST_UUID_NAMESPACE, request_id))


def volume_name_for(request_id: str, volume_format: str | None) -> str:
    """The name of the volume a request creates: derived from its id."""
    suffix = f".{volume_format}" if volume_format else ""
    return f"{VOLUME_PREFIX}{request_id}{suffix}"


@dataclass(frozen=True)
class DomainSpec:
    """Everything a provisioned domain is made of."""

    name: str
    uuid: str
    domain_type: str
    arch: str
    cpus: int
    memory_kib: int
    disk_pool: str
    disk_volume: str
    disk_format: str | None
    cdrom_path: str | None
    cdrom_pool: str | None
    cdrom_volume: str | None
    network: str | None
    request_id: str
    owner: str
    template: str
    size: str
    resource_pool: str
    boot: tuple[str, ...] = ("cdrom", "hd")
    """Boot order: an installer ISO boots first; an appliance (its CD-ROM is the
    cloud-init seed) boots from its disk."""
    kernel_path: str | None = None
    """A kickstart installer's kernel, booted directly (with ``initrd_path`` and
    ``cmdline``) until ``without_direct_boot`` takes them out."""
    initrd_path: str | None = None
    cmdline: str | None = None

    def disks(self) -> list[tuple[str | None, str | None, str | None]]:
        """(path, pool, volume) of each disk of its XML, as ``disks_of`` reads them back."""
        cdrom = ((None, self.cdrom_pool, self.cdrom_volume)
                 if self.cdrom_pool and self.cdrom_volume else (self.cdrom_path or "", None, None))
        return [(None, self.disk_pool, self.disk_volume), cdrom]


def build_domain_xml(spec: DomainSpec) -> str:
    """The domain XML: disk from the volume, the ISO (or an appliance's cloud-init seed)
    as CD-ROM, the boot order, serial console, guest agent channel, a VNC display
    listening nowhere, metadata."""
    ET.register_namespace(METADATA_PREFIX, METADATA_NS)
    dom = ET.Element("domain", type=spec.domain_type)
    ET.SubElement(dom, "name").text = spec.name
    ET.SubElement(dom, "uuid").text = spec.uuid
    meta = ET.SubElement(dom, "metadata")
    req = ET.SubElement(meta, f"{{{METADATA_NS}}}request")
    for key in ("request_id", "owner", "template", "size", "resource_pool"):
        ET.SubElement(req, f"{{{METADATA_NS}}}{key.replace('_', '-')}").text = getattr(spec, key)
    ET.SubElement(dom, "memory", unit="KiB").text = str(spec.memory_kib)
    ET.SubElement(dom, "currentMemory", unit="KiB").text = str(spec.memory_kib)
    ET.SubElement(dom, "vcpu", placement="static").text = str(spec.cpus)
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch=spec.arch).text = "hvm"
    if spec.kernel_path:
        ET.SubElement(os_el, "kernel").text = spec.kernel_path
        if spec.initrd_path:
            ET.SubElement(os_el, "initrd").text = spec.initrd_path
        if spec.cmdline:
            ET.SubElement(os_el, "cmdline").text = spec.cmdline
    for dev in spec.boot:
        ET.SubElement(os_el, "boot", dev=dev)
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    devices = ET.SubElement(dom, "devices")

    disk = ET.SubElement(devices, "disk", type="volume", device="disk")
    driver = {"name": "qemu", "type": spec.disk_format or "raw"}
    ET.SubElement(disk, "driver", driver)
    ET.SubElement(disk, "source", pool=spec.disk_pool, volume=spec.disk_volume)
    ET.SubElement(disk, "target", dev="vda", bus="virtio")

    if spec.cdrom_pool and spec.cdrom_volume:
        cdrom = ET.SubElement(devices, "disk", type="volume", device="cdrom")
        ET.SubElement(cdrom, "driver", name="qemu", type="raw")
        ET.SubElement(cdrom, "source", pool=spec.cdrom_pool, volume=spec.cdrom_volume)
    else:
        cdrom = ET.SubElement(devices, "disk", type="file", device="cdrom")
        ET.SubElement(cdrom, "driver", name="qemu", type="raw")
        ET.SubElement(cdrom, "source", file=spec.cdrom_path or "")
    ET.SubElement(cdrom, "target", dev="sda", bus="sata")
    ET.SubElement(cdrom, "readonly")

    if spec.network:
        nic = ET.SubElement(devices, "interface", type="network")
        ET.SubElement(nic, "source", network=spec.network)
        ET.SubElement(nic, "model", type="virtio")
    ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(devices, "console", type="pty")
    # The QEMU guest agent's channel: libvirt makes its socket; a guest with the agent
    # then tells its addresses (provctl show) and shuts down cleanly.
    channel = ET.SubElement(devices, "channel", type="unix")
    ET.SubElement(channel, "target", type="virtio", name="org.qemu.guest_agent.0")
    # A display that listens nowhere (no TCP port other local users could reach): provisiond
    # gets each connection to it from libvirt (virDomainOpenGraphicsFD) for its owner.
    graphics = ET.SubElement(devices, "graphics", type="vnc")
    ET.SubElement(graphics, "listen", type="none")
    return ET.tostring(dom, encoding="unicode")


def build_volume_xml(name: str, capacity_bytes: int, volume_format: str | None, *,
                     backing_path: str | None = None,
                     backing_format: str | None = None) -> str:
    """The XML of a new volume; thin (allocation 0) where the format allows it. With
    ``backing_path``, a qcow2 overlay on that image (its format always given: libvirt
    and QEMU must never guess it from the content)."""
    vol = ET.Element("volume")
    ET.SubElement(vol, "name").text = name
    ET.SubElement(vol, "capacity", unit="bytes").text = str(capacity_bytes)
    if volume_format:
        ET.SubElement(vol, "allocation", unit="bytes").text = "0"
        target = ET.SubElement(vol, "target")
        ET.SubElement(target, "format", type=volume_format)
    if backing_path is not None:
        backing = ET.SubElement(vol, "backingStore")
        ET.SubElement(backing, "path").text = backing_path
        ET.SubElement(backing, "format", type=backing_format or "raw")
    return ET.tostring(vol, encoding="unicode")


DIRECT_BOOT = ("kernel", "initrd", "cmdline", "dtb")


def without_direct_boot(xml: str) -> str | None:
    """The domain XML with its direct kernel boot removed (and booting from its disk), or
    None if it has none (nothing to redefine)."""
    root = ET.fromstring(xml)
    os_el = root.find("os")
    found = [e for e in (os_el if os_el is not None else []) if e.tag in DIRECT_BOOT]
    if os_el is None or not found:
        return None
    for element in found:
        os_el.remove(element)
    for boot in os_el.findall("boot"):
        os_el.remove(boot)
    ET.SubElement(os_el, "boot", dev="hd")
    return ET.tostring(root, encoding="unicode")


def seed_volume_name(request_id: str) -> str:
    """The name of the cloud-init seed volume of a request: derived from its id."""
    return f"{VOLUME_PREFIX}{request_id}-seed.iso"


def parse_request_metadata(xml: str) -> dict[str, str]:
    """The provisiond fields from a domain's ``<metadata>`` element XML (as libvirt returns)."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    out = {}
    for child in root:
        tag = child.tag.split("}", 1)[-1]
        out[tag.replace("-", "_")] = child.text or ""
    return out


def disks_of(domain_xml: str) -> list[tuple[str | None, str | None, str | None]]:
    """(path, pool, volume) of each disk of a domain XML, whatever its type."""
    root = ET.fromstring(domain_xml)
    out = []
    for disk in root.findall("./devices/disk"):
        src = disk.find("source")
        if src is None:
            continue
        path = src.get("file") or src.get("dev") or src.get("dir")
        out.append((path, src.get("pool"), src.get("volume")))
    return out


def pool_facts_of(pool_xml: str) -> tuple[str, str, str]:
    """(type, source, target path) of a storage pool XML. ``source`` names the storage
    itself, as one canonical line: the ``<source>``'s hosts (and ports), directory,
    devices and name, sorted; not how a host reaches it (format, auth, initiator, ...),
    which may differ from host to host for the same storage. "" if it names nothing."""
    root = ET.fromstring(pool_xml)
    parts: list[str] = []
    source = root.find("source")
    if source is not None:
        for host in source.findall("host"):
            port = host.get("port")
            parts.append(f"host={host.get('name', '')}" + (f":{port}" if port else ""))
        for tag in ("dir", "device"):
            parts += [f"{tag}={e.get('path', '')}" for e in source.findall(tag)]
        name = (source.findtext("name") or "").strip()
        if name:
            parts.append(f"name={name}")
    return (root.get("type", ""), ";".join(sorted(parts)),
            (root.findtext("target/path") or "").strip())


_UNITS = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2,
          "g": 1024**3, "gib": 1024**3, "t": 1024**4, "tib": 1024**4, "kb": 1000,
          "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}


def volume_facts_of(volume_xml: str) -> tuple[str, int, int, str | None, str | None]:
    """(path, capacity, allocation in bytes, target format or None, backing file or None)
    of a storage volume XML: what ``info()`` and ``path()`` would say, in the one answer
    of ``XMLDesc``."""
    root = ET.fromstring(volume_xml)

    def size(tag: str) -> int:
        element = root.find(tag)
        if element is None or element.text is None:
            return 0
        return int(element.text) * _UNITS[element.get("unit", "bytes").lower()]

    fmt = root.find("./target/format")
    return (root.findtext("./target/path") or "", size("capacity"), size("allocation"),
            fmt.get("type") if fmt is not None else None,
            root.findtext("./backingStore/path") or None)


def capabilities_summary(caps_xml: str) -> tuple[str, str]:
    """(domain type, arch) for new domains: the host's own arch first ('kvm' when offered,
    else 'qemu'); libvirt lists guest arches in arch order, so i686 would come first."""
    root = ET.fromstring(caps_xml)
    host_arch = root.findtext("./host/cpu/arch") or "x86_64"
    offered: dict[str, set[str | None]] = {}
    for guest in root.findall("./guest"):
        arch = guest.find("arch")
        if guest.findtext("os_type") != "hvm" or arch is None:
            continue
        offered.setdefault(arch.get("name") or host_arch, set()).update(
            d.get("type") for d in arch.findall("domain"))
    if host_arch in offered:
        return ("kvm" if "kvm" in offered[host_arch] else "qemu"), host_arch
    for arch, types in offered.items():
        if "kvm" in types:
            return "kvm", arch
    return "qemu", host_arch
