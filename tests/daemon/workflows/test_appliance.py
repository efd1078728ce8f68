"""Appliance templates on a test-driver host: the disk from the image, the seed step.

The test driver creates overlays (``<backingStore>``) and same-pool copies, but cannot
upload a volume's content (``../shared/LIBVIRT_NOTES.md``): the seed's volume is made and
the log says its content was not stored. A real guest reading its seed is in tests/e2e.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from daemon.virt.domain_xml import domain_uuid_for, seed_volume_name
from statemachines.provisioning import State
from tests.conftest import ALICE

IMAGE = {"pool": "pool-dir", "name": "debian-12-cloud.qcow2"}
KEY = ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDsDWE4PU+LBMh1vozmklZxsKJacuWC2Plkzzr1hND46 "
       "alice@laptop")


def templates(**appliance: object) -> dict[str, object]:
    return {"ipxe": {"kind": "iso", "volume": {"pool": "pool-dir", "name": "ipxe.iso"}},
            "debian": {"kind": "appliance", "volume": IMAGE, **appliance}}


async def appliance_harness(make_harness, **appliance: object):
    return await make_harness("host_appliance.xml", templates=templates(**appliance))


def log_of(h, request_id: str) -> list[tuple[str, str]]:
    return [(e.to_state, e.detail or "") for e in h.store.get_log(request_id)]


def moved_to(h, request_id: str, state: str) -> str:
    """The detail of the transition into ``state``."""
    return next(e.detail or "" for e in h.store.get_log(request_id)
                if e.kind == "transition" and e.to_state == state)


async def test_an_appliance_gets_an_overlay_disk_and_a_seed_never_a_free_volume(make_harness):
    h = await appliance_harness(make_harness, cloud_init={"ssh_keys": [KEY]})
    done = await h.run(template="debian", size="small")  # 15 GiB: free-15g.qcow2 would fit
    assert done.state == State.DONE, done.reason
    assert done.volume_name == f"provisiond-{done.id}.qcow2" and done.volume_owned
    pool = done.volume_pool
    assert pool == "pool-dir"  # the image's pool first
    vol = h.conn.storagePoolLookupByName(pool).storageVolLookupByName(done.volume_name)
    xml = ET.fromstring(vol.XMLDesc(0))
    assert xml.findtext("backingStore/path") == "/pools/dir/debian-12-cloud.qcow2"
    assert xml.find("backingStore/format").get("type") == "qcow2"
    assert int(xml.findtext("capacity")) == 20 * 1024**3  # the image's, larger than 15 GiB
    assert h.states(done.id) == ["requested", "authorized", "storage-searching",
                                 "storage-creating", "seeding", "defining", "done"]
    seeding = moved_to(h, done.id, "defining")
    assert "content was NOT stored" in seeding and "cannot upload" in seeding
    assert seed_volume_name(done.id) in h.volume_names(pool)

    dom = ET.fromstring(h.conn.lookupByUUIDString(domain_uuid_for(done.id)).XMLDesc(0))
    assert [b.get("dev") for b in dom.findall("os/boot")] == ["hd"]
    cdrom = dom.find("devices/disk[@device='cdrom']/source")
    assert (cdrom.get("pool"), cdrom.get("volume")) == (pool, seed_volume_name(done.id))
    assert dom.find("devices/channel/target").get("name") == "org.qemu.guest_agent.0"

    from daemon.service.reconcile import find_orphans

    assert await find_orphans(h.service, ["testhost"]) == []  # its seed is no orphan
    await h.service.operate(ALICE, done.id, "delete")
    await h.service.wait_terminal(done.id, timeout=20)
    assert {done.volume_name, seed_volume_name(done.id)}.isdisjoint(h.volume_names(pool))
    assert "debian-12-cloud.qcow2" in h.volume_names("pool-dir")  # the image is never touched


async def test_a_full_copy_when_the_template_asks(make_harness):
    h = await appliance_harness(make_harness, clone="full")
    done = await h.run(template="debian", size="small")
    assert done.state == State.DONE, done.reason
    created = moved_to(h, done.id, "seeding")
    assert "full copy of pool-dir/debian-12-cloud.qcow2 (as the template asks)" in created


async def test_a_failed_define_rolls_back_the_disk_and_the_seed(make_harness):
    h = await make_harness("host_appliance.xml", templates=templates(),
                           faults={"defineXML": RuntimeError})
    failed = await h.run(template="debian", size="small")
    assert failed.state == State.FAILED
    assert {f"provisiond-{failed.id}.qcow2", seed_volume_name(failed.id)}.isdisjoint(
        h.volume_names("pool-dir"))
    rollback = [d for s, d in log_of(h, failed.id) if "rolled back" in d or "deleted" in d]
    assert any("deleted seed volume" in d for d in rollback), rollback


async def test_the_dry_run_says_why_no_free_volume_serves_an_appliance(make_harness):
    from daemon.service import ProvisioningRequest

    h = await appliance_harness(make_harness)
    decision = await h.service.explain(ALICE, ProvisioningRequest("debian", "small", "rp"))
    assert decision.action == "create" and decision.pool == "pool-dir"
    reuse = [v for v in decision.verdicts if v.stage == "reuse"]
    assert reuse and all(not v.accepted and "does not hold its image" in v.reason
                         for v in reuse)


def read_seed(data: bytes) -> dict[str, str]:
    """The files of a seed ISO, by their Rock Ridge names."""
    import io

    import pycdlib

    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    assert iso.pvd.volume_identifier.decode().strip() == "cidata"
    files = {}
    for name in ("meta-data", "user-data", "network-config"):
        out = io.BytesIO()
        try:
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
        except pycdlib.pycdlibexception.PyCdlibInvalidInput:
            continue
        files[name] = out.getvalue().decode()
    iso.close()
    return files


async def test_the_seed_holds_the_request_s_keys_after_the_template_s(make_harness):
    from daemon.workflows.appliance import seed_content

    other = KEY.replace("alice@laptop", "ops@bastion")
    h = await appliance_harness(make_harness, cloud_init={
        "ssh_keys": [other], "user_data": "#cloud-config\npackages: [htop]\n"})
    record = h.submit(template="debian", size="small", ssh_keys=[KEY, other],
                      network_config="version: 2\nethernets: {eth0: {dhcp4: true}}\n")
    seed = read_seed(seed_content(h.store.get_request(record.id),
                                  h.service.config.templates["debian"]))
    assert seed["meta-data"] == (f"instance-id: provisiond-{record.id}\n"
                                 f"local-hostname: {record.name}\n")
    assert seed["user-data"] == ("#cloud-config\npackages:\n- htop\nssh_authorized_keys:\n"
                                 f"- {other}\n- {KEY}\n")  # each key once
    assert "dhcp4: true" in seed["network-config"]
    await h.service.wait_terminal(record.id, timeout=20)


@pytest.mark.parametrize("fields, message", [
    ({"ssh_keys": ["ssh-ed25519 AAAA"]}, "not a ssh-ed25519 public key"),
    ({"ssh_keys": "ssh-ed25519 AAAAC3"}, "ssh_keys must be a list"),
    ({"ssh_keys": [KEY.replace("ssh-ed25519", "ssh-foo")]}, "unknown SSH key type"),
    ({"user_data": "packages: [htop]\n"}, "must start with '#cloud-config'"),
    ({"user_data": "#cloud-config\n" + "x" * 70000}, "larger than 64 KiB"),
    ({"user_data": "#cloud-config\n[unclosed"}, "not valid YAML"),
    ({"network_config": "version: 3\n"}, "'version: 1' or 'version: 2'"),
])
async def test_what_a_request_adds_for_cloud_init_is_checked_before_it_is_stored(
        make_harness, fields: dict[str, object], message: str):
    from daemon.errors import InvalidInput

    h = await appliance_harness(make_harness)
    with pytest.raises(InvalidInput, match=message) as refused:
        h.submit(template="debian", size="small", **fields)
    assert refused.value.field == next(iter(fields))
    assert h.store.list_requests(limit=10) == []


async def test_an_iso_template_takes_no_cloud_init(make_harness):
    from daemon.errors import InvalidInput

    h = await appliance_harness(make_harness)
    with pytest.raises(InvalidInput, match="template ipxe \\(iso\\) takes no cloud-init"):
        h.submit(template="ipxe", size="small", ssh_keys=[KEY])


async def test_an_image_that_is_itself_an_overlay_is_refused(make_harness):
    h = await make_harness("host_appliance.xml", templates={
        "ipxe": {"kind": "iso", "volume": {"pool": "pool-dir", "name": "ipxe.iso"}},
        "layered": {"kind": "appliance",
                    "volume": {"pool": "pool-dir", "name": "layered.qcow2"}}})
    failed = await h.run(template="layered", size="small")
    assert failed.state == State.FAILED
    assert "has a backing file (/pools/dir/debian-12-cloud.qcow2)" in failed.reason
    assert "must stand alone" in failed.reason


def test_check_config_refuses_an_image_with_a_backing_file(tmp_path) -> None:
    import subprocess
    import sys

    from harness.daemon import write_config

    main = write_config(tmp_path, "host_appliance.xml", templates={
        "layered": {"kind": "appliance",
                    "volume": {"pool": "pool-dir", "name": "layered.qcow2"}}})
    out = subprocess.run([sys.executable, "-m", "daemon", "--check-config", "--config",
                          str(main)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert ("templates.yml: layered.volume: image pool-dir/layered.qcow2 on host testhost "
            "has a backing file") in out.stderr


async def test_an_image_in_a_templates_only_pool_serves_and_no_disk_goes_there(
        make_harness):
    h = await make_harness("host_appliance.xml", templates=templates(), storage_pools=[
        "pool-nfs", {"name": "pool-dir", "templates_only": True}])
    done = await h.run(template="debian", size="small")
    assert done.state == State.DONE, done.reason
    assert done.volume_pool == "pool-nfs"
    vol = h.conn.storagePoolLookupByName("pool-nfs").storageVolLookupByName(done.volume_name)
    assert ET.fromstring(vol.XMLDesc(0)).findtext("backingStore/path") == \
        "/pools/dir/debian-12-cloud.qcow2"
    from daemon.service import ProvisioningRequest

    decision = await h.service.explain(ALICE, ProvisioningRequest("debian", "small", "rp"))
    assert [(v.pool, v.accepted, v.reason) for v in decision.verdicts if v.pool == "pool-dir"
            and v.stage == "create"] == [("pool-dir", False,
                                          "holds templates only (templates_only)")]
