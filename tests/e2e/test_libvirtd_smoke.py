"""Smoke test of the test suite's own libvirt daemon, through ``virsh -c URI`` only.

A ``type='qemu'`` (TCG) guest with a qcow2 volume of a dir pool and an ISO volume as CD-ROM
is defined, started, seen running, destroyed and undefined; the daemon survives restarts
with its state. Timings are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from harness.libvirtd import BINDS, LibvirtDaemon, file_digest

DOMAIN_XML = """\
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='cdrom'/>
    <boot dev='hd'/>
  </os>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='volume' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source pool='{pool}' volume='{iso}'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def timed(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - t0


def wait_state(d: LibvirtDaemon, name: str, state: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while (current := d.virsh("domstate", name).strip()) != state:
        assert time.monotonic() < deadline, f"{name} is {current}, not {state}"
        time.sleep(0.05)


def make_guest(d: LibvirtDaemon, pool: str, name: str) -> tuple[str, Path]:
    disk = d.create_volume(pool, f"{name}.qcow2", "64M", "qcow2")
    return DOMAIN_XML.format(name=name, disk=disk, pool=pool, iso="ipxe.iso"), disk


def test_daemon_is_private(libvirtd: LibvirtDaemon) -> None:
    print(f"\nlibvirtd start: {libvirtd.timings['start']:.3f} s "
          f"(virtlogd {libvirtd.timings['virtlogd']:.3f} s, "
          f"libvirtd {libvirtd.timings['libvirtd']:.3f} s); uri {libvirtd.uri}")
    assert libvirtd.virsh("uri").strip() == libvirtd.uri
    assert "<domain type='qemu'" in libvirtd.virsh("capabilities")
    # Its configuration is ours; the host's paths hold none of its files.
    assert 'user = "root"' in (libvirtd.base / "etc" / "qemu.conf").read_text()
    assert not Path("/run/libvirt/libvirt-sock").exists() or \
        Path("/run/libvirt/libvirt-sock").stat().st_ino != libvirtd.socket.stat().st_ino
    assert libvirtd.host_path("/var/lib/libvirt/qemu") == libvirtd.base / "lib" / "qemu"
    assert set(BINDS.values()) >= {"/etc/libvirt", "/var/lib/libvirt", "/run/libvirt"}


def test_guest_lifecycle(libvirtd: LibvirtDaemon) -> None:
    d = libvirtd
    host_qemu_conf = Path("/etc/libvirt/qemu.conf")
    before = file_digest(host_qemu_conf) if host_qemu_conf.exists() else None
    pool_dir = d.create_dir_pool("smoke")
    iso = d.add_iso_to_pool("smoke", "ipxe.iso")
    assert iso.parent == pool_dir and iso.stat().st_size > 0
    xml, disk = make_guest(d, "smoke", "smoke-vm")
    assert "file format: qcow2" in d.virsh("vol-info", "--pool", "smoke", disk.name,
                                            "--bytes") or disk.exists()

    _, connect_time = timed(d.virsh, "version")
    _, define_time = timed(d.define_xml, "define", xml)
    print(f"\nvirsh define: {define_time * 1000:.1f} ms "
          f"(a bare virsh call, process + connect: {connect_time * 1000:.1f} ms)")
    # defineXML alone: many defines in one virsh session, less the session's own cost.
    count = 20
    files = []
    for i in range(count):
        path = d.base / f"batch-{i}.xml"
        path.write_text(xml.replace("<name>smoke-vm</name>", f"<name>batch-{i}</name>"))
        files.append(path)
    _, batch_time = timed(d.virsh, "; ".join(f"define {p}" for p in files))
    d.virsh("; ".join(f"undefine batch-{i}" for i in range(count)))
    print(f"defineXML: {(batch_time - connect_time) / count * 1000:.2f} ms each "
          f"({count} in one virsh session: {batch_time * 1000:.1f} ms)")
    try:
        dumped = d.virsh("dumpxml", "smoke-vm")
        assert "type='qemu'" in dumped.split("\n", 1)[0]
        assert f"<source file='{disk}'" in dumped
        assert "<source pool='smoke' volume='ipxe.iso'" in dumped
        assert d.virsh("domstate", "smoke-vm").strip() == "shut off"

        _, start_time = timed(d.virsh, "start", "smoke-vm")
        print(f"guest start (TCG): {start_time * 1000:.1f} ms")
        wait_state(d, "smoke-vm", "running")
        assert "smoke-vm" in d.virsh("list", "--name").split()
        log = d.host_path("/var/log/libvirt/qemu/smoke-vm.log")
        assert d.virsh("domblklist", "smoke-vm").split() == ["vda", str(disk), "hdc", iso.name]
        # QEMU's command line (logged through virtlogd) has both files: the volume resolved.
        cmdline = log.read_text()
        assert "qemu-system-x86_64" in cmdline and str(disk) in cmdline and str(iso) in cmdline

        d.virsh("destroy", "smoke-vm")
        assert d.virsh("domstate", "smoke-vm").strip() == "shut off"
    finally:
        d.virsh("destroy", "smoke-vm", check=False)
        d.virsh("undefine", "smoke-vm", check=False)
    assert "smoke-vm" not in d.virsh("list", "--all", "--name").split()
    d.virsh("vol-delete", "--pool", "smoke", disk.name)
    d.virsh("pool-destroy", "smoke")
    d.virsh("pool-undefine", "smoke")
    after = file_digest(host_qemu_conf) if host_qemu_conf.exists() else None
    assert before == after, "the host's /etc/libvirt/qemu.conf changed"


def test_restart_keeps_state(libvirtd: LibvirtDaemon) -> None:
    d = libvirtd
    d.create_dir_pool("restart")
    d.add_iso_to_pool("restart", "ipxe.iso")
    xml, _disk = make_guest(d, "restart", "restart-vm")
    d.define_xml("define", xml)
    try:
        d.virsh("start", "restart-vm")
        wait_state(d, "restart-vm", "running")

        d.restart()  # SIGTERM: an orderly daemon restart
        print(f"\nlibvirtd restart (SIGTERM): {d.timings['restart'] * 1000:.1f} ms")
        assert d.virsh("domstate", "restart-vm").strip() == "running"
        assert "restart" in d.virsh("pool-list", "--name").split()

        d.restart(signal.SIGKILL, down_for=0.2)  # a crash
        print(f"libvirtd restart (SIGKILL, 0.2 s down): {d.timings['restart'] * 1000:.1f} ms")
        assert d.virsh("domstate", "restart-vm").strip() == "running"
        assert "restart-vm.qcow2" in d.virsh("vol-list", "restart").split()

        d.virsh("destroy", "restart-vm")
        d.restart()
        assert d.virsh("domstate", "restart-vm").strip() == "shut off"
    finally:
        d.virsh("destroy", "restart-vm", check=False)
        d.virsh("undefine", "restart-vm", check=False)
    d.virsh("pool-destroy", "restart")
    d.virsh("pool-undefine", "restart")
