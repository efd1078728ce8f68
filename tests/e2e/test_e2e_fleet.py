"""provisiond over a fleet of two real libvirt daemons that share one storage directory.

The hosts h1 and h2 are ``libvirtd`` and ``second_libvirtd`` (two daemons on this one
machine); ``shared_pool`` gives both a dir pool ``shared`` on one directory, as an NFS
export mounted on two hosts would. First the set-up itself is checked through virsh.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

from harness.libvirtd import LibvirtDaemon, make_iso
from tests.e2e.conftest import SharedStorage

GUEST_XML = """\
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='cdrom'/></os>
  <devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='shared' volume='{volume}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{iso}'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def host_uuid(d: LibvirtDaemon) -> str:
    """The host UUID a daemon reports in its capabilities."""
    return ET.fromstring(d.virsh("capabilities")).findtext("./host/uuid") or ""


def pools(d: LibvirtDaemon) -> list[str]:
    """The storage pools defined on a daemon."""
    return d.virsh("pool-list", "--all", "--name").split()


def test_two_daemons_see_one_shared_directory(libvirtd: LibvirtDaemon,
                                              second_libvirtd: LibvirtDaemon,
                                              shared_pool: SharedStorage,
                                              daemon_dir: Path) -> None:
    h1, h2 = libvirtd, second_libvirtd
    assert h1.running and h2.running and h1.uri != h2.uri
    assert h1.virsh("uri").strip() == h1.uri and h2.virsh("uri").strip() == h2.uri
    assert host_uuid(h1) != host_uuid(h2)  # two hosts, as a client tells hosts apart
    # Each daemon has its own state: a pool defined on one only is not on the other.
    private = h1.create_dir_pool(f"only-h1-{uuid.uuid4().hex[:6]}")
    try:
        assert private.name in pools(h1) and private.name not in pools(h2)
    finally:
        h1.remove_pool(private.name)
    # Both pools named shared are on the one directory, the test process sees it too.
    for d in (h1, h2):
        target = ET.fromstring(d.virsh("pool-dumpxml", "shared")).findtext("./target/path")
        assert target == str(shared_pool.path)

    made = h1.create_volume("shared", "smoke.qcow2", "64M")
    assert made == shared_pool.path / "smoke.qcow2" and shared_pool.files() == ["smoke.qcow2"]
    assert shared_pool.volumes(h2) == []  # as with NFS: not seen before a refresh
    h2.virsh("pool-refresh", "shared")
    assert shared_pool.volumes(h2) == ["smoke.qcow2"]
    assert h2.virsh("vol-path", "--pool", "shared", "smoke.qcow2").strip() == str(made)

    # QEMU under the second daemon reaches the file: a guest on it starts there.
    iso = make_iso(daemon_dir / "boot.iso")
    name = f"fleet-smoke-{uuid.uuid4().hex[:6]}"
    h2.define_xml("define", GUEST_XML.format(name=name, volume="smoke.qcow2", iso=iso))
    try:
        h2.virsh("start", name)
        assert h2.virsh("domstate", name).strip() == "running"
        assert str(made) in h2.host_path(f"/var/log/libvirt/qemu/{name}.log").read_text()
        assert name not in h1.virsh("list", "--all", "--name").split()
    finally:
        h2.virsh("destroy", name, check=False)
        h2.virsh("undefine", name, check=False)

    # Deleted through the second daemon, the one file is gone for the first one too.
    h2.virsh("vol-delete", "--pool", "shared", "smoke.qcow2")
    assert shared_pool.files() == []
    h1.virsh("pool-refresh", "shared")
    assert shared_pool.volumes(h1) == []
    # A file put there behind both daemons' backs is listed by both after a refresh.
    shared_pool.add_volume("free.qcow2", "1G")
    assert shared_pool.volumes(h1) == shared_pool.volumes(h2) == ["free.qcow2"]


def test_the_shared_pool_survives_a_restart_of_either_daemon(
        libvirtd: LibvirtDaemon, second_libvirtd: LibvirtDaemon,
        shared_pool: SharedStorage) -> None:
    shared_pool.add_volume("kept.qcow2", "64M")
    second_libvirtd.stop_libvirtd()
    assert not second_libvirtd.running
    assert shared_pool.volumes(libvirtd) == ["kept.qcow2"]  # the other host goes on
    second_libvirtd.start()
    assert "shared" in second_libvirtd.virsh("pool-list", "--name").split()  # active
    assert shared_pool.volumes(second_libvirtd) == ["kept.qcow2"]
