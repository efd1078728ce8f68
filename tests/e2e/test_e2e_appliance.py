"""An appliance VM on a real libvirtd with QEMU (TCG): a real guest reads its cloud-init seed.

The image is ``harness.images.build_appliance_disk`` (a Debian kernel and a busybox
initramfs booted by syslinux, built from Debian packages): its init finds the filesystem
labelled ``cidata``, prints what it read on the serial console, then powers off.
"""

from __future__ import annotations

import json
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from daemon.virt.domain_xml import domain_uuid_for, seed_volume_name
from harness.daemon import Daemon
from harness.images import build_appliance_disk, parse_guest_output
from harness.sshkey import public_key
from harness.libvirtd import LibvirtDaemon
from tests.e2e.conftest import GuestPool
from tests.e2e.test_e2e_sessions import PROVCTL, Console

BOOT_TIMEOUT = 180  # a kernel under TCG on a busy 2-CPU machine


@pytest.fixture
def appliance(guest_pool: GuestPool) -> tuple[Daemon, str]:
    """A provisiond whose template ``guest`` is the test appliance in the test's pool."""
    guest_pool.configure(appliance_template(guest_pool))
    return guest_pool.daemon(), guest_pool.name


def appliance_template(pool: GuestPool) -> dict[str, object]:
    """Template ``guest``: the test appliance's disk, put into the pool."""
    build_appliance_disk(pool.path / "guest.qcow2")
    pool.refresh()
    return {"guest": {"kind": "appliance", "volume": {"pool": pool.name,
                                                      "name": "guest.qcow2"}}}


def test_a_guest_reads_its_hostname_instance_id_and_ssh_key_from_the_seed(
        appliance: tuple[Daemon, str], libvirtd: LibvirtDaemon, tmp_path: Path) -> None:
    d, pool = appliance
    key = public_key("alice@laptop")
    (tmp_path / "id.pub").write_text(key + "\n")
    created = subprocess.run(
        [PROVCTL, "--socket", d.socket, "create", "-t", "guest", "-s", "one", "-p", "rp",
         "-n", "guest-1", "--ssh-key", str(tmp_path / "id.pub"), "--json", "--wait"],
        capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    rid = json.loads(created.stdout)["id"]

    # The disk is an overlay on the image; the seed a volume beside it, as virsh sees.
    disk = ET.fromstring(libvirtd.virsh("vol-dumpxml", f"provisiond-{rid}.qcow2", "--pool",
                                        pool))
    assert disk.findtext("backingStore/path", "").endswith("/guest.qcow2")
    assert seed_volume_name(rid) in libvirtd.virsh("vol-list", pool)
    log = [e["detail"] for e in d.call("GET", f"/v1/requests/{rid}/log").body["log"]]
    assert any("cloud-init seed" in x and "written" in x for x in log), log

    assert d.call("POST", f"/v1/requests/{rid}/start").status == 202
    assert d.call("GET", f"/v1/requests/{rid}?wait=30").body["vm"]["state"] == "running"
    console = Console(d, rid)  # attached while the kernel boots: nothing is missed
    console.expect(b"provisiond-guest: done", timeout=BOOT_TIMEOUT)
    report = parse_guest_output(console.seen)
    assert report.hostname == "guest-1"
    assert report.instance_id == f"provisiond-{rid}"
    assert report.ssh_keys == [key]
    code, err = console.finish(keep_input=True)  # the guest powers itself off
    assert code == 0 and "The console closed" in err, err
    deadline = time.monotonic() + 30  # libvirt's STOPPED event moves the VM
    while d.call("GET", f"/v1/requests/{rid}").body["vm"]["state"] != "stopped":
        assert time.monotonic() < deadline, "the guest's power-off never reached the VM"
        time.sleep(0.1)

    # Deleting the VM deletes its disk and its seed, and leaves the image.
    assert d.call("POST", f"/v1/requests/{rid}/delete").status == 202
    assert d.call("GET", f"/v1/requests/{rid}?wait=30").body["vm"]["state"] == "deleted"
    names = libvirtd.virsh("vol-list", pool)
    assert "guest.qcow2" in names and rid not in names
    assert libvirtd.virsh("domstate", domain_uuid_for(rid), check=False).strip() == "" or \
        domain_uuid_for(rid) not in libvirtd.virsh("list", "--all", "--uuid")


def test_a_kickstart_vm_runs_its_installer_once_then_boots_from_its_disk(
        guest_pool: GuestPool, libvirtd: LibvirtDaemon) -> None:
    from harness.images import DISK_FLAG, build_guest_kernel_initrd

    kernel, initrd = build_guest_kernel_initrd()  # its initrd "installs" onto the disk
    ks = "http://example.invalid/ks.cfg"
    guest_pool.configure({"ks": {"kind": "kickstart", "kernel": str(kernel),
                                 "initrd": str(initrd),
                                 "cmdline": f"console=ttyS0 inst.ks={ks}"}})
    d = guest_pool.daemon()
    created = d.call("POST", "/v1/requests", {"template": "ks", "size": "one",
                                               "resource_pool": "rp"})
    assert created.status == 202, created.body
    rid = created.body["id"]
    assert d.wait_terminal(rid)["state"] == "done"
    uuid_ = domain_uuid_for(rid)
    assert f"<kernel>{kernel}</kernel>" in libvirtd.virsh("dumpxml", uuid_)

    def boot() -> str:
        assert d.call("POST", f"/v1/requests/{rid}/start").status == 202
        assert d.call("GET", f"/v1/requests/{rid}?wait=30").body["vm"]["state"] == "running"
        console = Console(d, rid)
        console.expect(b"provisiond-guest: done", timeout=BOOT_TIMEOUT)
        console.finish(keep_input=True)  # the guest powers itself off
        deadline = time.monotonic() + 60
        while d.call("GET", f"/v1/requests/{rid}").body["vm"]["state"] != "stopped":
            assert time.monotonic() < deadline, "the power-off never reached the VM"
            time.sleep(0.1)
        return console.seen.decode(errors="replace")

    installer = parse_guest_output(boot())
    assert f"inst.ks={ks}" in (installer.cmdline or "")
    assert installer.installed == "/dev/vda", installer
    xml = libvirtd.virsh("dumpxml", uuid_)
    assert "<kernel>" not in xml and "<cmdline>" not in xml  # redefined: boots its disk
    moves = [(e["from"], e["to"]) for e in d.call("GET", f"/v1/requests/{rid}/log")
             .body["log"] if e["kind"] == "transition"]
    assert moves[-2:] == [("running", "installed"), ("installed", "stopped")]

    installed = parse_guest_output(boot())
    assert DISK_FLAG in (installed.cmdline or "")  # the system the installer wrote
    assert "inst.ks" not in (installed.cmdline or "")


SEED_CRASH_POINTS = ["after:storage-creating", "after:create_volume", "after:seeding",
                     "before:upload_volume", "after:upload_volume"]


@pytest.mark.parametrize("point", SEED_CRASH_POINTS)
def test_sigkill_around_the_disk_and_seed_ends_with_one_of_each(
        guest_pool: GuestPool, libvirtd: LibvirtDaemon, point: str) -> None:
    import signal

    from tests.e2e.test_e2e_provisioning import CrashingDaemon

    main = guest_pool.configure(appliance_template(guest_pool))
    pool = guest_pool.name
    crashing = CrashingDaemon(guest_pool.directory, main, point)
    guest_pool.daemons.append(crashing)
    crashing.start()
    try:
        crashing.call("POST", "/v1/requests", {"template": "guest", "size": "one",
                                                "resource_pool": "rp"})
    except OSError:
        pass  # killed before it answered: the request was stored all the same
    assert crashing.proc.wait(30) == -signal.SIGKILL, crashing.log()
    d = guest_pool.daemon()
    [request] = d.call("GET", "/v1/requests").body["requests"]
    final = d.wait_terminal(request["id"])
    assert final["state"] == "done", final
    rid = request["id"]
    ours = sorted(n for n in libvirtd.virsh("vol-list", pool).split()
                  if n.startswith("provisiond-"))
    assert ours == [f"provisiond-{rid}-seed.iso", f"provisiond-{rid}.qcow2"]  # once each
    seed = Path(libvirtd.virsh("vol-path", seed_volume_name(rid), "--pool", pool).strip())
    assert libvirtd.host_path(seed).read_bytes()[0x8001:0x8006] == b"CD001"  # written
    moves = [e["to"] for e in d.call("GET", f"/v1/requests/{rid}/log").body["log"]
             if e["kind"] == "transition"]
    assert moves.count("seeding") == 1 and moves[-1] == "done", moves
    assert "Traceback" not in d.log()
