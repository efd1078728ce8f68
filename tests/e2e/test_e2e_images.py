"""The test guests of harness/images.py, booted with plain virsh on the real libvirtd (TCG).

The appliance disk (qcow2, a volume of a dir pool) boots through syslinux with a NoCloud
seed on a SATA CD-ROM and prints the seed's hostname, instance id and keys; the kernel and
initramfs booted directly with a kickstart command line print it, install the appliance on
the empty disk and power off, and the same domain then boots from that disk; a guest that
keeps a shell prints it all again for a console attached late. The serial console is a
file, or a socket. Build and boot times are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

from harness import images
from harness.images import DISK_FLAG, GuestReport, parse_guest_output
from harness.libvirtd import LibvirtDaemon

KEYS = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPt0SJRXe9lHkpsdWhLdpQuNOqYXVw7HJgv8iYc8UtD7 "
        "alice@example", "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 bob key with spaces"]
KICKSTART = "inst.ks=http://example.invalid/ks.cfg"
BOOT_TIMEOUT = 120  # TCG on a loaded 2-core machine; a boot takes 10-20 s

DOMAIN_XML = """\
<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    {boot}
  </os>
  <features><acpi/></features>
  <devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='{pool}' volume='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    {cdrom}
    <serial type='file'><source path='{serial}'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


@pytest.fixture
def pool(libvirtd: LibvirtDaemon) -> Iterator[tuple[str, Path]]:
    """A fresh dir pool (name, directory); its domains and itself removed afterwards."""
    name = f"img-{uuid.uuid4().hex[:8]}"
    path = libvirtd.create_dir_pool(name)
    try:
        yield name, path
    finally:
        for domain in libvirtd.virsh("list", "--all", "--name").split():
            if domain.startswith(name):
                libvirtd.virsh("destroy", domain, check=False)
                libvirtd.virsh("undefine", domain, check=False)
        libvirtd.virsh("pool-destroy", name, check=False)
        libvirtd.virsh("pool-undefine", name, check=False)


def boot(d: LibvirtDaemon, name: str, xml: str, serial: Path) -> tuple[GuestReport, float]:
    """Define and start the domain; its report once it printed ``done``, the seconds from
    start to there. Then waits until it powered itself off."""
    d.define_xml("define", xml)
    t0 = time.monotonic()
    d.virsh("start", name)
    text = ""
    while images.LINES["done"] not in text:
        assert time.monotonic() - t0 < BOOT_TIMEOUT, f"no 'done' from {name}:\n{text}"
        time.sleep(0.1)
        text = serial.read_text(errors="replace") if serial.exists() else ""
    took = time.monotonic() - t0
    while (state := d.virsh("domstate", name).strip()) != "shut off":
        assert time.monotonic() - t0 < BOOT_TIMEOUT + 30, f"{name} is {state} after done"
        time.sleep(0.1)
    return parse_guest_output(text), took


def timed_build(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    """What ``fn`` returns, and the seconds it took."""
    t0 = time.monotonic()
    result = fn(*args, **kwargs)
    return result, time.monotonic() - t0


def test_the_appliance_disk_boots_and_reports_its_seed(
        libvirtd: LibvirtDaemon, pool: tuple[str, Path]) -> None:
    name, path = pool
    disk, built = timed_build(images.build_appliance_disk, path / "appliance.qcow2")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2" and "backing-filename" not in info
    # Unpadded: under the 68 KiB busybox's findfs reads at once, as provisiond's seeds were.
    seed = images.make_seed_iso(path / "seed.iso", instance_id="iid-e2e-1",
                                hostname="appliance-one", ssh_keys=KEYS, pad=False)
    assert seed.stat().st_size < 68 << 10
    libvirtd.virsh("pool-refresh", name)
    serial = libvirtd.base / f"{name}-vm.serial"
    cdrom = (f"<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
             f"<source file='{seed}'/><target dev='sda' bus='sata'/><readonly/></disk>")
    xml = DOMAIN_XML.format(name=f"{name}-vm", uuid=uuid.uuid4(), pool=name, disk=disk.name,
                            serial=serial, boot="<boot dev='hd'/>", cdrom=cdrom)

    report, took = boot(libvirtd, f"{name}-vm", xml, serial)

    print(f"\nappliance disk: {built:.2f} s to get (cached after the first build), "
          f"{disk.stat().st_size / 2**20:.1f} MiB qcow2 ({info['virtual-size'] // 2**20} MiB "
          f"virtual); boot to done under TCG: {took:.1f} s")
    assert report.cmdline is not None and DISK_FLAG in report.cmdline.split()
    assert report.cidata is not None and report.cidata.startswith("/dev/sr")
    assert report.hostname == "appliance-one"
    assert report.instance_id == "iid-e2e-1"
    assert report.user_data == "#cloud-config"
    assert report.ssh_keys == KEYS
    assert report.insmod_failed == [] and report.installed is None


def test_a_kickstart_boot_prints_its_command_line_then_the_disk_boots(
        libvirtd: LibvirtDaemon, pool: tuple[str, Path]) -> None:
    name, _path = pool
    (kernel, initrd), built = timed_build(images.build_guest_kernel_initrd)
    blank = libvirtd.create_volume(name, "target.qcow2", "64M", "qcow2")
    serial = libvirtd.base / f"{name}-ks.serial"
    vm_uuid = uuid.uuid4()  # the same domain, redefined below
    direct = (f"<kernel>{kernel}</kernel><initrd>{initrd}</initrd>"
              f"<cmdline>console=ttyS0 {KICKSTART}</cmdline>")
    xml = DOMAIN_XML.format(name=f"{name}-ks", uuid=vm_uuid, pool=name, disk=blank.name,
                            serial=serial, boot=direct, cdrom="")

    report, took = boot(libvirtd, f"{name}-ks", xml, serial)

    print(f"\nkernel + initrd: {built:.2f} s to get; kickstart boot to done: {took:.1f} s")
    assert report.cmdline == f"console=ttyS0 {KICKSTART}"
    assert report.cidata == "none"
    assert report.installed == "/dev/vda", report

    # What provisiond does after the installer's first power-off: the same domain, its
    # kernel boot gone, boots from its disk.
    serial2 = libvirtd.base / f"{name}-ks2.serial"
    xml = DOMAIN_XML.format(name=f"{name}-ks", uuid=vm_uuid, pool=name, disk=blank.name,
                            serial=serial2, boot="<boot dev='hd'/>", cdrom="")
    report, took = boot(libvirtd, f"{name}-ks", xml, serial2)
    print(f"then from the installed disk, boot to done: {took:.1f} s")
    assert report.cmdline is not None and DISK_FLAG in report.cmdline.split()
    assert KICKSTART not in report.cmdline and report.installed is None


def read_until(sock: socket.socket, wanted: bytes, timeout: float = BOOT_TIMEOUT) -> bytes:
    """What came from the socket up to and including ``wanted`` (or fail, showing it)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            chunk = sock.recv(4096)
        except socket.timeout:
            chunk = b""
        assert chunk and time.monotonic() < deadline, f"no {wanted!r}; got {seen!r}"
        seen += chunk
    return seen


def test_a_guest_with_a_shell_reports_again_to_a_late_console(
        libvirtd: LibvirtDaemon, pool: tuple[str, Path]) -> None:
    name, path = pool
    disk = images.build_appliance_disk(path / "shell.qcow2",
                                       cmdline=f"{images.DISK_CMDLINE} {images.SHELL_FLAG}")
    seed = images.make_seed_iso(path / "seed.iso", instance_id="iid-e2e-3",
                                hostname="appliance-three", ssh_keys=KEYS[:1])
    libvirtd.virsh("pool-refresh", name)
    console = libvirtd.base / f"{name}-sh.sock"
    cdrom = (f"<disk type='file' device='cdrom'><driver name='qemu' type='raw'/>"
             f"<source file='{seed}'/><target dev='sda' bus='sata'/><readonly/></disk>")
    xml = DOMAIN_XML.format(name=f"{name}-sh", uuid=uuid.uuid4(), pool=name, disk=disk.name,
                            serial="", boot="<boot dev='hd'/>", cdrom=cdrom).replace(
        "<serial type='file'><source path=''/>",
        f"<serial type='unix'><source mode='bind' path='{console}'/>")
    libvirtd.define_xml("define", xml)
    libvirtd.virsh("start", f"{name}-sh")
    with socket.socket(socket.AF_UNIX) as first:
        first.connect(str(console))
        read_until(first, images.LINES["shell"].encode())
    # A console attached after the guest printed everything: it asks again.
    with socket.socket(socket.AF_UNIX) as late:
        late.connect(str(console))
        late.sendall(b"\r")
        read_until(late, b"# ", timeout=30)
        late.sendall(b"report\r")
        report = parse_guest_output(read_until(late, images.LINES["done"].encode(), 60))
    assert report.hostname == "appliance-three" and report.ssh_keys == KEYS[:1]
    assert report.cmdline is not None and images.SHELL_FLAG in report.cmdline.split()
    assert libvirtd.virsh("domstate", f"{name}-sh").strip() == "running"
