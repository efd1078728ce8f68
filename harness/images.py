"""Test guests built from Debian packages: a kernel with a busybox initramfs, a boot disk.

Made of Debian packages only: the kernel of ``linux-image-amd64`` (not ``-cloud-amd64``:
it has no AHCI driver, and provisiond puts CD-ROMs on SATA) and ``busybox-static``, got
with ``apt-get download`` and ``dpkg-deb -x`` (the host's /boot and packages left alone);
the tools (syslinux, mtools, qemu-img, genisoimage) from ``scripts/setup-libvirtd``.

The guest's ``/init`` (``INIT_SCRIPT``) prints on the serial console (``console=ttyS0``)
one line per fact, each starting with ``PREFIX``, in the formats of ``LINES``:

    provisiond-guest: cmdline=<contents of /proc/cmdline>
    provisiond-guest: cidata=<the seed's device, e.g. /dev/sr0; or none>
    provisiond-guest: instance-id=<meta-data instance-id>
    provisiond-guest: hostname=<meta-data local-hostname, else user-data hostname>
    provisiond-guest: user-data=<user-data's first line, e.g. #cloud-config>
    provisiond-guest: ssh-key=<a key>  (user-data ssh_authorized_keys, any depth; meta-data
                                        public-keys; one line each)
    provisiond-guest: installed=<disk>  (kickstart runs only, see below)
    provisiond-guest: done

each ending with CR LF (and, when amiss, ``insmod-failed=<module>``, ``install-failed=<why>``,
after ``cidata=none`` ``block=<block devices seen>``); then it powers off (through ACPI:
give the domain ``<features><acpi/></features>``). With ``SHELL_FLAG`` on the kernel
command line it prints ``provisiond-guest: shell`` and keeps a shell on the console, where
``report`` prints the lines again (what a guest prints while nobody reads its pty console
is lost). The seed is the filesystem labelled ``cidata`` (ISO 9660 or FAT) on a SATA, IDE,
virtio or virtio-scsi device. ``parse_guest_output`` reads a transcript.

``build_guest_kernel_initrd`` gives the files for a direct boot (``<os><kernel>``); run
so with ``inst.ks=`` or ``ks=``, /init plays the installer: writes the appliance disk on
the first hard disk (of ``DISK_MIB`` MiB or more), so that the domain's next boot, from
that disk, shows ``DISK_FLAG`` in its cmdline. ``build_appliance_disk`` makes that disk:
MBR, a FAT partition, syslinux booting the same kernel and initramfs with ``DISK_CMDLINE``.

Built once per machine in ``CACHE`` (``PROVISIOND_TEST_CACHE``), keyed by the package
versions and this recipe; under a file lock, landing by rename: concurrent runs share it.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import json
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

CACHE = Path(os.environ.get("PROVISIOND_TEST_CACHE", "/var/cache/provisiond-tests")) / "guest"
KERNEL_PACKAGE = "linux-image-amd64"
BUSYBOX_PACKAGE = "busybox-static"
TOOL_PACKAGES = ("syslinux", "syslinux-common", "mtools")  # their versions key the cache
MBR_CODE = Path("/usr/lib/syslinux/mbr/mbr.bin")
HOST_TOOLS = ("apt-get", "apt-cache", "dpkg-deb", "syslinux", "mformat", "mcopy", "qemu-img",
              "genisoimage")
RECIPE = 2  # part of the cache key: bump when the build changes what it makes

PREFIX = "provisiond-guest: "
LINES = {key: f"{PREFIX}{key}={{}}" for key in (
    "cmdline", "cidata", "instance-id", "hostname", "user-data", "ssh-key", "installed",
    "install-failed", "insmod-failed", "block")}
LINES |= {"done": PREFIX + "done", "shell": PREFIX + "shell"}
SHELL_FLAG = "provisiond.shell=1"
DISK_FLAG = "provisiond.boot=disk"
DISK_CMDLINE = f"console=ttyS0 {DISK_FLAG}"
# Seconds /init looks for a seed before it says cidata=none; provisiond.seed_wait=N on the
# kernel command line overrides it.
SEED_WAIT = 3
DISK_MIB = 32  # the appliance disk; its FAT partition starts at 1 MiB

# What reads a seed: SATA (AHCI), IDE (PIIX), virtio and SCSI disks and CD-ROMs; ISO 9660
# and FAT. Their dependencies come from each module's modinfo.
MODULES = ("ahci", "ata_piix", "virtio_pci", "virtio_blk", "virtio_scsi", "sr_mod",
           "sd_mod", "isofs", "vfat", "nls_cp437", "nls_utf8")
SIGNATURE_MAGIC = b"~Module signature appended~\n"

INIT_SCRIPT = r"""#!/bin/busybox sh
# /init of provisiond's test guest (harness/images.py): reports the kernel command line
# and the NoCloud seed (filesystem labelled cidata) on the console, then powers off.
P="provisiond-guest:"
@SETTINGS@

# The first `KEY: value` of a YAML file, unquoted.
yaml_value() {
    sed -n "s/^[[:space:]]*[\"']\{0,1\}$1[\"']\{0,1\}[[:space:]]*:[[:space:]]*//p" "$2" |
        head -n 1 | sed "s/[[:space:],]*\$//; s/^[\"']//; s/[\"']\$//; s/\r\$//"
}

# The items of every list under KEY, at any depth: block (- item) or flow ([a, b]) style.
yaml_list() {
    awk -v key="$1" '
    function unquote(s) {
        sub(/^[ \t]+/, "", s); sub(/[ \t]+$/, "", s)
        if (s ~ /^".*"$/ || s ~ /^'\''.*'\''$/) s = substr(s, 2, length(s) - 2)
        return s
    }
    {
        sub(/\r$/, "")
        if (inlist) {
            if ($0 ~ /^[ \t]*(#.*)?$/) next
            match($0, /^[ \t]*/)
            if (RLENGTH >= base && $0 ~ /^[ \t]*- /) {
                s = $0; sub(/^[ \t]*- /, "", s); print unquote(s); next
            }
            inlist = 0
        }
        if ($0 ~ "^[ \t]*(- )?" key ":[ \t]*\\[") {
            s = $0; sub(/^[^[]*\[/, "", s); sub(/\][ \t]*$/, "", s)
            n = split(s, items, ",")
            for (i = 1; i <= n; i++) if (unquote(items[i]) != "") print unquote(items[i])
        } else if ($0 ~ "^[ \t]*(- )?" key ":[ \t]*$") {
            match($0, /^[ \t]*(- )?/); base = RLENGTH; inlist = 1
        }
    }' "$2"
}

# The lines for a mounted seed directory.
report_seed() {
    md="$1/meta-data"; ud="$1/user-data"
    [ -f "$md" ] || md=/dev/null; [ -f "$ud" ] || ud=/dev/null
    echo "$P instance-id=$(yaml_value instance-id "$md")"
    host=$(yaml_value local-hostname "$md")
    [ -n "$host" ] || host=$(yaml_value hostname "$ud")
    echo "$P hostname=$host"
    echo "$P user-data=$(head -n 1 "$ud" | tr -d '\r')"
    { yaml_list ssh_authorized_keys "$ud"; yaml_list public-keys "$md"; } |
        while IFS= read -r key; do echo "$P ssh-key=$key"; done
}

# findfs reads a device's first 68 KiB at once and misses a smaller ISO (as pycdlib makes
# them): the ISO 9660 volume id (at byte 32808) is looked at too.
find_seed() {
    findfs LABEL=cidata 2>/dev/null || findfs LABEL=CIDATA 2>/dev/null && return
    for d in /dev/sr* /dev/vd* /dev/sd*; do
        [ -b "$d" ] && dd if="$d" bs=1 skip=32808 count=7 2>/dev/null |
            grep -qix "cidata " && echo "$d" && return
    done
    return 1
}

# As an installer would: the appliance disk onto the first hard disk that is not $1.
install_disk() {
    [ -f /install/disk.img ] || { echo "$P install-failed=no image in this initramfs"; return; }
    for b in /sys/class/block/vd* /sys/class/block/sd*; do
        [ -e "$b" ] && [ ! -e "$b/partition" ] && [ "/dev/${b##*/}" != "$1" ] || continue
        if [ "$(cat "$b/size")" -lt $((DISK_MIB * 2048)) ]; then
            echo "$P install-failed=/dev/${b##*/} is smaller than $DISK_MIB MiB"
        elif dd if=/install/disk.img of="/dev/${b##*/}" bs=1M conv=fsync 2>/dev/null; then
            echo "$P installed=/dev/${b##*/}"
        else
            echo "$P install-failed=could not write /dev/${b##*/}"
        fi
        return
    done
    echo "$P install-failed=no disk"
}

# Every line from cmdline to done; with "install", a kickstart run installs the disk.
report() {
    cmdline=$(cat /proc/cmdline)
    echo "$P cmdline=$cmdline"
    wait=$SEED_WAIT
    for word in $cmdline; do
        case "$word" in provisiond.seed_wait=*) wait="${word#*=}" ;; esac
    done
    tries=$((wait * 5))  # slack only: insmod returns once its driver's disks are probed
    until dev=$(find_seed) || [ "$tries" -le 0 ]; do
        tries=$((tries - 1)); sleep 0.2
    done
    if [ -n "$dev" ] && mount -o ro "$dev" /mnt; then
        echo "$P cidata=$dev"
        report_seed /mnt
        umount /mnt
    else
        echo "$P cidata=none"
        echo "$P block=$(ls /sys/class/block | tr '\n' ' ')"
    fi
    case "$1 $cmdline " in install*" inst.ks="* | install*" ks="*) install_disk "$dev" ;; esac
    echo "$P done"
}

main() {
    /bin/busybox --install -s /bin
    export PATH=/bin
    mount -t proc proc /proc && mount -t sysfs sys /sys && mount -t devtmpfs dev /dev
    exec </dev/console >/dev/console 2>&1
    dmesg -n 1  # kernel messages would cut into the lines below
    for m in $MODULES; do
        insmod "/lib/modules/$m.ko" 2>/dev/null || echo "$P insmod-failed=$m"
    done
    report install
    case " $cmdline " in
        *" $SHELL_FLAG "*)
            echo "$P shell"
            # ENV: the shell has these functions too; typing "report" prints it all again.
            export ENV=/init
            while :; do setsid cttyhack sh; done ;;
    esac
    sync
    poweroff -f
}

# As PID 1 it runs; sourced elsewhere (the harness's tests) it only defines the functions.
[ "$$" = 1 ] && main
"""


class ImageError(RuntimeError):
    """A test guest could not be built; the message says what is missing or failed."""


class _DownloadFailed(ImageError):
    pass


@dataclass
class GuestReport:
    """What a test guest printed: its ``provisiond-guest:`` lines, parsed."""

    cmdline: str | None = None
    cidata: str | None = None
    instance_id: str | None = None
    hostname: str | None = None
    user_data: str | None = None
    ssh_keys: list[str] = field(default_factory=list)
    installed: str | None = None
    install_failed: str | None = None
    insmod_failed: list[str] = field(default_factory=list)
    block: str | None = None
    done: bool = False
    shell: bool = False


def parse_guest_output(text: str | bytes) -> GuestReport:
    """The facts a guest printed on its console (kernel messages and the rest ignored);
    a fact printed twice (two boots in one transcript) keeps its last value."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    report = GuestReport()
    for line in text.replace("\r", "").split("\n"):
        at = line.find(PREFIX)
        if at < 0:
            continue
        key, _, value = line[at + len(PREFIX):].partition("=")
        if key in ("done", "shell"):
            setattr(report, key, True)
        elif key in ("ssh-key", "insmod-failed"):
            (report.ssh_keys if key == "ssh-key" else report.insmod_failed).append(value)
        elif key in LINES:
            setattr(report, key.replace("-", "_"), value)
    return report


def make_seed_iso(dest: Path | str, *, instance_id: str, hostname: str,
                  ssh_keys: Sequence[str] = (), user_data: str | None = None,
                  pad: bool = True) -> Path:
    """A NoCloud seed ISO (volume label ``cidata``) at ``dest``: meta-data and user-data
    (``#cloud-config`` with ``ssh_authorized_keys``, unless ``user_data`` is given);
    ``pad=False``: without genisoimage's 300 KiB of zeros at the end, as pycdlib's."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if user_data is None:
        user_data = "#cloud-config\n" + ("ssh_authorized_keys:\n" if ssh_keys else "") + \
            "".join(f"  - {json.dumps(key)}\n" for key in ssh_keys)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "meta-data").write_text(
            f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n")
        (Path(tmp) / "user-data").write_text(user_data)
        _run(["genisoimage", "-quiet", "-V", "cidata", "-J", "-r", "-pad" if pad else "-no-pad",
              "-o", str(dest), tmp])
    return dest


def build_guest_kernel_initrd(cache_dir: Path | str = CACHE, *,
                              pvh: bool = True) -> tuple[Path, Path]:
    """(kernel, initrd) for a direct kernel boot, built once per machine in ``cache_dir``.

    ``pvh``: the kernel is the uncompressed ELF ``vmlinux``, which QEMU boots through its
    PVH entry, skipping the xz decompression (under TCG about 8 s of a 20 s boot); else the
    ``vmlinuz`` bzImage. The initrd holds the appliance disk for kickstart runs. Shared
    files: boot them, never change them.
    """
    target = _guest_dir(Path(cache_dir))
    return target / ("vmlinux" if pvh else "vmlinuz"), target / "initrd-install.img"


def build_appliance_disk(dest: Path | str, fmt: str = "qcow2", cache_dir: Path | str = CACHE,
                         cmdline: str = DISK_CMDLINE) -> Path:
    """A BIOS-bootable copy of the appliance disk at ``dest`` (``qcow2`` or ``raw``,
    ``DISK_MIB`` MiB, no backing file) whose syslinux boots the guest with ``cmdline``."""
    if fmt not in ("qcow2", "raw"):
        raise ValueError(f"disk format {fmt!r}: qcow2 or raw")
    target = _guest_dir(Path(cache_dir))
    cached = target / f"appliance.{fmt}"
    if cmdline != DISK_CMDLINE:
        cached = target / f"appliance-{hashlib.sha256(cmdline.encode()).hexdigest()[:12]}.{fmt}"
        if not cached.exists():
            with _locked(Path(cache_dir)), tempfile.TemporaryDirectory(dir=target) as tmp:
                if not cached.exists():
                    _make_disk(Path(tmp), target, cmdline)
                    os.replace(Path(tmp) / f"disk.{fmt}", cached)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(cached, dest)
    return dest


def guest_manifest(cache_dir: Path | str = CACHE) -> dict[str, object]:
    """What the cached guest is made of: versions, modules in load order, sizes, build time."""
    return json.loads((_guest_dir(Path(cache_dir)) / "manifest.json").read_text())


def check_host_tools() -> None:
    """Raise ImageError naming what is missing to build the guest and its disk."""
    missing = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if not MBR_CODE.exists():
        missing.append(str(MBR_CODE))
    if missing:
        raise ImageError(f"missing {', '.join(missing)}: run scripts/setup-libvirtd (Debian "
                         f"packages {' '.join(TOOL_PACKAGES)} qemu-utils genisoimage)")


def package_versions() -> dict[str, str]:
    """{package: version} apt would fetch: the kernel image ``KERNEL_PACKAGE`` names, and
    ``BUSYBOX_PACKAGE`` (after one ``apt-get update`` if apt knows neither)."""
    for attempt in (1, 2):
        show = subprocess.run(["apt-cache", "show", "--no-all-versions", KERNEL_PACKAGE,
                               BUSYBOX_PACKAGE], capture_output=True, text=True, timeout=60)
        stanzas = {fields.get("Package"): fields for fields in (
            dict(re.findall(r"^([\w-]+): (.*)$", s, re.M)) for s in show.stdout.split("\n\n"))}
        kernel = re.match(r"\s*(linux-image-\S+) \(= (\S+)\)",
                          stanzas.get(KERNEL_PACKAGE, {}).get("Depends", ""))
        busybox = stanzas.get(BUSYBOX_PACKAGE, {}).get("Version")
        if kernel and busybox:
            return {kernel[1]: kernel[2], BUSYBOX_PACKAGE: busybox}
        if attempt == 1:
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300)
    raise ImageError(f"apt knows no {KERNEL_PACKAGE} or {BUSYBOX_PACKAGE}: "
                     f"{show.stderr.strip()}")


def _guest_dir(cache_dir: Path) -> Path:
    """The complete build for the current versions, built first if missing."""
    check_host_tools()
    try:
        versions = _known_versions(cache_dir)
    except ImageError:
        # No usable package lists (offline?): a guest built earlier still does.
        built = sorted((p for p in cache_dir.glob("guest-*") if _complete(p)),
                       key=lambda p: p.stat().st_mtime)
        if built:
            return built[-1]
        raise
    target = cache_dir / f"guest-{_guest_key(versions)}"
    if _complete(target):
        with contextlib.suppress(OSError):
            os.utime(target)  # in use: see below
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(cache_dir):
        if not _complete(target):
            try:
                _build_guest(target, versions)
            except _DownloadFailed:
                # Package lists older than the mirror (a version gone): refresh, once.
                _run(["apt-get", "update", "-qq"], timeout=300)
                (cache_dir / "versions.json").unlink(missing_ok=True)
                versions = _known_versions(cache_dir)
                target = cache_dir / f"guest-{_guest_key(versions)}"
                if not _complete(target):
                    _build_guest(target, versions)
        # Other builds go once unused for a day: a run of another checkout may use one.
        for old in cache_dir.glob("guest-*"):
            if old != target and time.time() - old.stat().st_mtime > 86400:
                shutil.rmtree(old, ignore_errors=True)
    return target


def _known_versions(cache_dir: Path) -> dict[str, str]:
    """``package_versions()`` and the tools', remembered in ``cache_dir`` while apt's lists
    and dpkg's status are unchanged: apt-cache parses every list on each run (1.4 s)."""
    files = [*Path("/var/lib/apt/lists").glob("*"), Path("/var/lib/dpkg/status")]
    stamp = sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in files if p.is_file())
    key = hashlib.sha256(json.dumps([RECIPE, KERNEL_PACKAGE, stamp]).encode()).hexdigest()
    memo = cache_dir / "versions.json"
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        known = json.loads(memo.read_text())
        if known["key"] == key:
            return dict(known["versions"])
    versions = package_versions()
    tools = _run(["dpkg-query", "-W", "-f", "${Package}=${Version}\n", *TOOL_PACKAGES])
    versions.update(line.split("=", 1) for line in tools.split())
    with contextlib.suppress(OSError):
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_name(f".versions.{os.urandom(6).hex()}.tmp")
        tmp.write_text(json.dumps({"key": key, "versions": versions}))
        os.replace(tmp, memo)
    return versions


def _guest_key(versions: dict[str, str]) -> str:
    facts = {"recipe": RECIPE, "versions": versions, "init": INIT_SCRIPT, "modules": MODULES,
             "seed_wait": SEED_WAIT, "disk": [DISK_MIB, DISK_CMDLINE], "shell": SHELL_FLAG}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def _complete(target: Path) -> bool:
    return (target / "manifest.json").is_file()


@contextlib.contextmanager
def _locked(cache_dir: Path) -> Iterator[None]:
    # flock excludes other processes and other threads alike (each opens its own file).
    with open(cache_dir / ".guest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------------- the build


def _build_guest(target: Path, versions: dict[str, str]) -> None:
    started = time.monotonic()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    work = partial / "work"
    work.mkdir(parents=True)
    try:
        debs = [f"{name}={versions[name]}" for name in versions
                if name.startswith("linux-image-") or name == BUSYBOX_PACKAGE]
        try:
            _run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *debs],
                 cwd=work, timeout=600)
        except ImageError as exc:
            raise _DownloadFailed(str(exc)) from None
        root = work / "root"
        for deb in work.glob("*.deb"):
            _run(["dpkg-deb", "-x", str(deb), str(root)])
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        trees = sorted((root / "lib" / "modules").glob("*/kernel"))
        if len(kernels) != 1 or len(trees) != 1 or not (root / "bin/busybox").is_file():
            raise ImageError(f"unexpected package contents: {kernels}, {trees}")
        bzimage = kernels[0].read_bytes()
        (partial / "vmlinuz").write_bytes(bzimage)
        (partial / "vmlinux").write_bytes(_vmlinux(bzimage))
        modules = module_order(trees[0], MODULES)
        init = INIT_SCRIPT.replace("@SETTINGS@", f"SEED_WAIT={SEED_WAIT} DISK_MIB={DISK_MIB} "
                                   f'SHELL_FLAG={SHELL_FLAG} MODULES="{" ".join(dict(modules))}"')
        entries = [(d, 0o40755, b"", 0) for d in ("bin", "dev", "proc", "sys", "mnt", "tmp",
                                                   "lib", "lib/modules")]
        # The kernel opens /dev/console for /init before anything is mounted.
        entries += [("dev/console", 0o20600, b"", os.makedev(5, 1)),
                    ("bin/busybox", 0o100755, (root / "bin/busybox").read_bytes(), 0),
                    ("init", 0o100755, init.encode(), 0)]
        # Unsigned: verifying each signature costs about 0.1 s under TCG (not enforced).
        entries += [(f"lib/modules/{name}.ko", 0o100644, _unsigned(path.read_bytes()), 0)
                    for name, path in modules]
        initrd = gzip.compress(cpio_newc(entries), 6, mtime=0)
        (partial / "initrd.img").write_bytes(initrd)
        _make_disk(work, partial, DISK_CMDLINE)
        for fmt in ("raw", "qcow2"):
            os.replace(work / f"disk.{fmt}", partial / f"appliance.{fmt}")
        # The installer's copy: up to the last MiB in use (the rest is zeros); a second,
        # uncompressed cpio archive after the first, which the kernel unpacks on top.
        disk = (partial / "appliance.raw").read_bytes().rstrip(b"\0")
        disk += b"\0" * (-len(disk) % (1 << 20))
        padding = b"\0" * (-len(initrd) % 4)  # each archive starts 4-byte aligned
        (partial / "initrd-install.img").write_bytes(initrd + padding + cpio_newc(
            [("install", 0o40755, b"", 0), ("install/disk.img", 0o100644, disk, 0)]))
        shutil.rmtree(work)
        manifest = {"versions": versions, "kernel": kernels[0].name,
                    "modules": [name for name, _ in modules],
                    "sizes": {p.name: p.stat().st_size for p in sorted(partial.iterdir())},
                    "build_seconds": round(time.monotonic() - started, 1)}
        (partial / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        partial.rename(target)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _vmlinux(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage whose payload is xz (Debian's)."""
    at = bzimage.find(b"\xfd7zXZ\0")
    vmlinux = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(bzimage[at:]) if at > 0 else b""
    if not vmlinux.startswith(b"\x7fELF"):
        raise ImageError("no xz-compressed ELF kernel in the bzImage")
    return vmlinux


def _unsigned(ko: bytes) -> bytes:
    """A module without its appended signature (and its 12-byte struct module_signature)."""
    if not ko.endswith(SIGNATURE_MAGIC):
        return ko
    end = len(ko) - len(SIGNATURE_MAGIC)
    (length,) = struct.unpack_from(">I", ko, end - 4)
    return ko[:end - 12 - length]


def module_order(tree: Path, wanted: Sequence[str]) -> list[tuple[str, Path]]:
    """(name, .ko) of ``wanted`` and their dependencies, each after what it depends on."""
    files = {p.name[:-3].replace("-", "_"): p for p in tree.rglob("*.ko")}
    order: list[tuple[str, Path]] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        name = name.replace("-", "_")
        if name in seen:
            return
        if name not in files:
            raise ImageError(f"module {name} (for {' <- '.join(chain) or 'the guest'}) "
                             f"is not in {tree}")
        seen.add(name)
        for dep in modinfo(files[name]).get("depends", "").split(","):
            if dep:
                visit(dep, (name, *chain))
        order.append((name, files[name]))

    for name in wanted:
        visit(name, ())
    return order


def modinfo(ko: Path) -> dict[str, str]:
    """The ``.modinfo`` section of a kernel module (ELF64, little-endian) as a dict."""
    data = ko.read_bytes()
    if data[:6] != b"\x7fELF\x02\x01":
        raise ImageError(f"{ko}: not a little-endian ELF64 module")
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def section(i: int) -> tuple[int, int, int]:
        (name,) = struct.unpack_from("<I", data, shoff + i * shentsize)
        offset, size = struct.unpack_from("<QQ", data, shoff + i * shentsize + 24)
        return name, offset, size

    names = section(shstrndx)[1]
    for i in range(shnum):
        name, offset, size = section(i)
        if data[names + name:data.index(b"\0", names + name)] == b".modinfo":
            pairs = (item.partition(b"=") for item in data[offset:offset + size].split(b"\0"))
            return {k.decode(): v.decode(errors="replace") for k, _, v in pairs if k}
    return {}


def cpio_newc(entries: Sequence[tuple[str, int, bytes, int]]) -> bytes:
    """A cpio archive (newc, as the kernel reads an initramfs) of (path, mode, content,
    rdev) entries, owned by root, dated 0, ending with its trailer."""
    out = bytearray()
    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0)], 1):
        fields = (ino, mode, 0, 0, 2 if mode & 0o170000 == 0o40000 else 1, 0, len(data), 0, 0,
                  os.major(rdev), os.minor(rdev), len(name) + 1, 0)
        out += b"070701" + b"".join(b"%08X" % value for value in fields) + name.encode() + b"\0"
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def _make_disk(work: Path, guest: Path, cmdline: str) -> None:
    """``work``/disk.raw and disk.qcow2: the appliance disk booting ``guest``'s vmlinuz and
    initrd.img with ``cmdline``."""
    fat, raw = work / "fat.img", work / "disk.raw"
    sectors = (DISK_MIB - 1) * 2048
    # -H: the sectors before the partition, which its boot sector needs to find itself.
    _run(["mformat", "-C", "-i", str(fat), "-T", str(sectors), "-h", "64", "-s", "32",
          "-H", "2048", "-v", "PROVGUEST", "::"])
    _run(["syslinux", "--install", str(fat)])
    cfg = work / "syslinux.cfg"
    cfg.write_text(f"SERIAL 0 115200\nDEFAULT guest\nPROMPT 0\nTIMEOUT 0\nLABEL guest\n"
                   f"  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND {cmdline}\n")
    _run(["mcopy", "-i", str(fat), str(guest / "vmlinuz"), str(guest / "initrd.img"),
          str(cfg), "::"])
    mbr = bytearray(MBR_CODE.read_bytes()[:440].ljust(512, b"\0"))
    # One active FAT16 (LBA) partition from 1 MiB on; its CHS fields say "use LBA".
    mbr[446:462] = struct.pack("<B3sB3sII", 0x80, b"\xfe\xff\xff", 0x0E, b"\xfe\xff\xff",
                               2048, sectors)
    mbr[510:512] = b"\x55\xaa"
    with open(raw, "wb") as out, open(fat, "rb") as src:
        out.write(bytes(mbr).ljust(2048 * 512, b"\0"))
        shutil.copyfileobj(src, out)
    fat.unlink()
    _run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(work / "disk.qcow2")])


def _run(argv: list[str], *, cwd: Path | None = None, timeout: float = 120) -> str:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise ImageError(f"{' '.join(argv)}: exit {proc.returncode}: "
                         f"{proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout
