"""harness/images.py without booting anything: the guest's files, its /init's seed parsing
(run by the guest's own busybox on this host), the disk's layout, the cache's locking.

The tests on real files build the guest once per machine (root: the cache is under
/var/cache; the packages come with apt); the others run anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path

import pytest
import yaml

from harness import images
from harness.images import (DISK_CMDLINE, DISK_MIB, ImageError, cpio_newc, modinfo,
                            parse_guest_output)

REPO = Path(__file__).resolve().parents[2]


def read_cpio(data: bytes) -> dict[str, tuple[int, bytes, int]]:
    """{path: (mode, content, rdev)} of one or more newc archives, gzip or not, in a row."""
    files: dict[str, tuple[int, bytes, int]] = {}
    while data.strip(b"\0"):
        data = data.lstrip(b"\0")
        if data[:2] == b"\x1f\x8b":
            unzip = zlib.decompressobj(wbits=31)
            archive, data = unzip.decompress(data), unzip.unused_data
        else:
            archive, data = data, b""
        at = 0
        while True:
            assert archive[at:at + 6] == b"070701", f"bad header at {at}"
            fields = [int(archive[at + 6 + 8 * i:at + 14 + 8 * i], 16) for i in range(13)]
            mode, size, rmajor, rminor, namesize = (fields[1], fields[6], fields[9],
                                                   fields[10], fields[11])
            at += 110
            name = archive[at:at + namesize - 1].decode()
            at += namesize + (-(at + namesize) % 4)
            content = archive[at:at + size]
            at += size + (-(at + size) % 4)
            if name == "TRAILER!!!":
                data = archive[at:] + data
                break
            files[name] = (mode, content, os.makedev(rmajor, rminor))
    return files


# ---------------------------------------------------------------------- anywhere


def test_the_report_is_read_from_a_noisy_transcript() -> None:
    text = ("SeaBIOS (version 1.16)\r\n[    2.6] Run /init as init process\r\n"
            "provisiond-guest: cmdline=console=ttyS0 inst.ks=http://x/ks.cfg\r\n"
            "[    3.1] sd 0:0:0:0: noise provisiond-guest: cidata=/dev/sr0\r\n"
            "provisiond-guest: hostname=vm-1\r\nprovisiond-guest: instance-id=i-1\r\n"
            "provisiond-guest: ssh-key=ssh-ed25519 AAAA a=b\r\n"
            "provisiond-guest: ssh-key=ssh-rsa BBBB\r\nprovisiond-guest: what=ever\r\n"
            "provisiond-guest: done\r\n[   14.7] reboot: Power down\r\n")
    report = parse_guest_output(text.encode())
    assert report.cmdline == "console=ttyS0 inst.ks=http://x/ks.cfg"
    assert (report.cidata, report.hostname, report.instance_id) == ("/dev/sr0", "vm-1", "i-1")
    assert report.ssh_keys == ["ssh-ed25519 AAAA a=b", "ssh-rsa BBBB"]
    assert report.done and not report.shell and report.installed is None
    assert parse_guest_output("nothing here") == images.GuestReport()
    assert images.LINES["ssh-key"].format("K") == "provisiond-guest: ssh-key=K"


def test_cpio_newc_is_what_the_kernel_reads() -> None:
    entries = [("dir", 0o40755, b"", 0), ("dir/odd", 0o100644, b"abcde", 0),
               ("dev/console", 0o20600, b"", os.makedev(5, 1))]
    archive = cpio_newc(entries)
    assert len(archive) % 4 == 0 and archive.endswith(b"\0") and b"TRAILER!!!" in archive
    assert read_cpio(archive) == {"dir": (0o40755, b"", 0), "dir/odd": (0o100644, b"abcde", 0),
                                  "dev/console": (0o20600, b"", os.makedev(5, 1))}


def test_a_module_signature_is_cut_off() -> None:
    body, signature = b"\x7fELF module body", b"S" * 7
    signed = body + signature + struct.pack(">BBBBB3xI", 0, 0, 2, 0, 0, len(signature)) + \
        images.SIGNATURE_MAGIC
    assert images._unsigned(signed) == body
    assert images._unsigned(body) == body


def test_one_build_serves_every_thread_and_unused_builds_go(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    builds = []

    def fake_build(target: Path, versions: dict[str, str]) -> None:
        builds.append(target)
        time.sleep(0.2)
        partial = target.with_name(target.name + ".partial")
        partial.mkdir()
        (partial / "manifest.json").write_text("{}")
        partial.rename(target)

    monkeypatch.setattr(images, "check_host_tools", lambda: None)
    monkeypatch.setattr(images, "_known_versions", lambda cache: {"linux-image-x": "1"})
    monkeypatch.setattr(images, "_build_guest", fake_build)
    old, recent = tmp_path / "guest-0000", tmp_path / "guest-1111"
    for build in (old, recent):
        build.mkdir()
        (build / "manifest.json").write_text("{}")
    two_days_ago = time.time() - 2 * 86400
    os.utime(old, (two_days_ago, two_days_ago))
    results: list[tuple[Path, Path]] = []
    threads = [threading.Thread(target=lambda: results.append(
        images.build_guest_kernel_initrd(tmp_path))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and len(set(results)) == 1 and len(results) == 4
    assert results[0][0].parent == builds[0]
    # Another build goes once unused for a day (another checkout's run may still use it).
    assert not old.exists() and recent.exists()

    # Offline (apt cannot say which versions): the last complete build still serves.
    def offline(cache: Path) -> dict[str, str]:
        raise ImageError("no package lists")

    monkeypatch.setattr(images, "_known_versions", offline)
    assert images.build_guest_kernel_initrd(tmp_path, pvh=False)[0] == builds[0] / "vmlinuz"
    with pytest.raises(ImageError, match="no package lists"):
        images.build_guest_kernel_initrd(tmp_path / "empty")


# ---------------------------------------------------------------------- on real files


@pytest.fixture(scope="module")
def guest() -> Path:
    """The cached guest's directory (built now if this machine has none)."""
    if os.geteuid() != 0:
        pytest.skip("the guest is built into /var/cache with apt: root only")
    setup = subprocess.run([str(REPO / "scripts" / "setup-libvirtd")], capture_output=True,
                           text=True, timeout=600)
    assert setup.returncode == 0, setup.stdout + setup.stderr
    t0 = time.monotonic()
    kernel, _initrd = images.build_guest_kernel_initrd()
    print(f"\nguest: {time.monotonic() - t0:.2f} s to get; "
          f"{json.dumps(images.guest_manifest())}")
    return kernel.parent


@pytest.fixture(scope="module")
def busybox_sh(guest: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The guest's own /init and busybox, on this host: argv to run shell code with the
    init's functions defined, busybox's applets first on PATH."""
    files = read_cpio((guest / "initrd.img").read_bytes())
    bindir = tmp_path_factory.mktemp("busybox")
    (bindir / "busybox").write_bytes(files["bin/busybox"][1])
    (bindir / "busybox").chmod(0o755)
    (bindir / "init").write_bytes(files["init"][1])
    subprocess.run([str(bindir / "busybox"), "--install", "-s", str(bindir)], check=True)
    return ["env", "-i", f"PATH={bindir}", str(bindir / "busybox"), "sh", "-c",
            f'. {bindir / "init"}; "$@"', "sh"]


def test_the_initramfs_holds_busybox_init_and_modules_in_order(guest: Path) -> None:
    files = read_cpio((guest / "initrd.img").read_bytes())
    assert stat.S_ISCHR(files["dev/console"][0]) and files["dev/console"][2] == \
        os.makedev(5, 1)
    assert files["init"][0] == 0o100755 and files["init"][1].startswith(b"#!/bin/busybox sh")
    assert files["bin/busybox"][1].startswith(b"\x7fELF")
    manifest = images.guest_manifest()
    order = manifest["modules"]
    assert f'MODULES="{" ".join(order)}"'.encode() in files["init"][1]
    assert set(images.MODULES) <= set(order)
    for i, name in enumerate(order):
        content = files[f"lib/modules/{name}.ko"][1]
        assert not content.endswith(images.SIGNATURE_MAGIC), name
        ko = guest / f"{name}.ko.tmp"
        try:
            ko.write_bytes(content)
            info = modinfo(ko)
        finally:
            ko.unlink()
        assert info["name"] == name
        needs = [dep.replace("-", "_") for dep in info.get("depends", "").split(",") if dep]
        assert all(dep in order[:i] for dep in needs), f"{name} needs {needs}"
    assert (guest / "vmlinux").read_bytes()[:4] == b"\x7fELF"
    assert (guest / "vmlinuz").read_bytes()[0x202:0x206] == b"HdrS"  # a bzImage


def seed_dir(tmp_path: Path, meta: str, user: str | None) -> Path:
    """A directory as a mounted seed looks: meta-data, and user-data unless None."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "meta-data").write_text(meta)
    if user is not None:
        (tmp_path / "user-data").write_text(user)
    return tmp_path


@pytest.mark.parametrize("meta, user, host, keys", [
    # As provisiond writes them (daemon/cloudinit.py: yaml.safe_dump).
    (yaml.safe_dump({"instance-id": "provisiond-r1", "local-hostname": "vm-1"}),
     "#cloud-config\n" + yaml.safe_dump({"ssh_authorized_keys": ["ssh-ed25519 AAA a@b",
                                                                 "ssh-rsa BBB c d"]}),
     "vm-1", ["ssh-ed25519 AAA a@b", "ssh-rsa BBB c d"]),
    # Keys under users:, block and flow lists, quoted; CRLF; meta-data public-keys.
    ("instance-id: 'provisiond-r1'\r\nlocal-hostname: \"vm-1\"\r\npublic-keys:\r\n"
     "  - ssh-rsa META k\r\n",
     "#cloud-config\r\nusers:\r\n  - name: alice\r\n    ssh_authorized_keys:\r\n"
     "      - \"ssh-ed25519 AAA alice\"\r\n      # a comment\r\n\r\n"
     "      - 'ssh-rsa BBB alice2'\r\n    shell: /bin/sh\r\n  - name: bob\r\n"
     "    ssh_authorized_keys: [ssh-rsa CCC bob, \"ssh-rsa DDD x\"]\r\nruncmd: [ls]\r\n",
     "vm-1", ["ssh-ed25519 AAA alice", "ssh-rsa BBB alice2", "ssh-rsa CCC bob",
              "ssh-rsa DDD x", "ssh-rsa META k"]),
    # No local-hostname: user-data's hostname; no keys at all.
    ("instance-id: provisiond-r1\n", "#cloud-config\nhostname: from-user-data\n",
     "from-user-data", []),
])
def test_init_reads_seeds_as_written(busybox_sh: list[str], tmp_path: Path, meta: str,
                                     user: str, host: str, keys: list[str]) -> None:
    out = subprocess.run([*busybox_sh, "report_seed", str(seed_dir(tmp_path, meta, user))],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    report = parse_guest_output(out)
    assert (report.instance_id, report.hostname) == ("provisiond-r1", host), out
    assert report.user_data == "#cloud-config" and report.ssh_keys == keys, out


def test_init_without_user_data(busybox_sh: list[str], tmp_path: Path) -> None:
    out = subprocess.run([*busybox_sh, "report_seed", str(seed_dir(tmp_path, "", None))],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    report = parse_guest_output(out)
    assert (report.instance_id, report.hostname, report.user_data) == ("", "", "")
    assert report.ssh_keys == []


def test_the_seed_iso_is_labelled_cidata(guest: Path, tmp_path: Path) -> None:
    iso = images.make_seed_iso(tmp_path / "seed.iso", instance_id="i-1", hostname="h",
                               ssh_keys=["ssh-rsa AAA x"])
    info = subprocess.run(["isoinfo", "-d", "-i", str(iso)], capture_output=True, text=True,
                          check=True).stdout
    assert "Volume id: cidata" in info
    user = subprocess.run(["isoinfo", "-J", "-i", str(iso), "-x", "/user-data"],
                          capture_output=True, text=True, check=True).stdout
    assert yaml.safe_load(user) == {"ssh_authorized_keys": ["ssh-rsa AAA x"]}
    assert user.startswith("#cloud-config\n")


def test_the_appliance_disk_is_an_mbr_disk_with_syslinux(guest: Path, tmp_path: Path) -> None:
    raw = images.build_appliance_disk(tmp_path / "disk.raw", "raw")
    data = raw.read_bytes()
    assert len(data) == DISK_MIB << 20 and data[510:512] == b"\x55\xaa"
    assert data[:440] == images.MBR_CODE.read_bytes()[:440]
    active, kind, start, size = struct.unpack_from("<B3xB3xII", data, 446)
    assert (active, kind, start, size) == (0x80, 0x0E, 2048, (DISK_MIB - 1) * 2048)
    fat = f"{raw}@@1M"
    listing = subprocess.run(["mdir", "-a", "-b", "-i", fat, "::"], capture_output=True,
                             text=True, check=True).stdout.lower()
    for name in ("vmlinuz", "initrd.img", "syslinux.cfg", "ldlinux.sys", "ldlinux.c32"):
        assert f"::/{name}" in listing, listing
    cfg = subprocess.run(["mtype", "-i", fat, "::/syslinux.cfg"], capture_output=True,
                         text=True, check=True).stdout
    assert f"APPEND {DISK_CMDLINE}" in cfg and "SERIAL 0" in cfg
    # The installer's copy is this disk, less its zeros at the end.
    payload = read_cpio((guest / "initrd-install.img").read_bytes())["install/disk.img"][1]
    assert payload and data.startswith(payload) and not data[len(payload):].strip(b"\0")

    qcow2 = images.build_appliance_disk(tmp_path / "disk.qcow2")
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(qcow2)],
                                     capture_output=True, text=True, check=True).stdout)
    assert info["format"] == "qcow2" and info["virtual-size"] == DISK_MIB << 20
    assert "backing-filename" not in info and qcow2.stat().st_size < 16 << 20

    shell = images.build_appliance_disk(tmp_path / "shell.raw", "raw",
                                        cmdline=f"console=ttyS0 {images.SHELL_FLAG}")
    cfg = subprocess.run(["mtype", "-i", f"{shell}@@1M", "::/syslinux.cfg"],
                         capture_output=True, text=True, check=True).stdout
    assert f"APPEND console=ttyS0 {images.SHELL_FLAG}" in cfg
    with pytest.raises(ValueError):
        images.build_appliance_disk(tmp_path / "disk.vmdk", "vmdk")
    assert shutil.which("syslinux")  # from scripts/setup-libvirtd
