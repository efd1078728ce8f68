"""A Debian 12 booted under its own systemd in a container, for tests of the system install.

The root filesystem is made with ``mmdebstrap`` from the mirrors apt already uses (the
host's sources files and ``apt.conf.d`` passed as they are) and cached under
``/var/cache/provisiond-tests`` (``PROVISIOND_TEST_CACHE``), keyed by a hash of what goes in
it: a fresh Debian 12 with Debian's libvirtd and QEMU installed (``HOST_PACKAGES``), the
packages ``scripts/install`` installs on top downloaded into apt's cache but not installed,
and apt's lists kept, so the install really runs apt. Libvirt's ``default`` network is not
set to autostart: the container shares the host's network, which it must leave alone.

``systemd-nspawn --boot --volatile=overlay`` boots it (``--register=no``, and
``--keep-unit`` where the host has no systemd): every write goes to a tmpfs over the cached
tree, which stays as built. Bound into the container, read-only, at the same paths: the
host's ``/etc/apt``, its CA bundle, its pip configuration and the local paths that
configuration names (``find-links``, ``file://`` indexes, a constraint file), so apt and
pip inside work as the host's do; and pip's cache (read-write, ``CACHE/pip``), so a
second run does not rebuild the libvirt binding. Commands run inside through ``nsenter``
into the container's PID 1, with a clean environment (plus the host's ``PIP_*``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PROVISIOND_TEST_CACHE", "/var/cache/provisiond-tests"))
SUITE = "bookworm"
# A Debian 12 host as the issue found it: systemd as PID 1 and Debian's own libvirtd.
HOST_PACKAGES = ("systemd", "systemd-sysv", "dbus", "polkitd", "libvirt-daemon-system",
                 "libvirt-clients", "ca-certificates")
RECIPE = 1  # part of the cache key: bump when build() changes what it makes
PIP_CONFIG_FILES = (Path("/etc/pip.conf"), Path("/etc/xdg/pip"),
                    Path.home() / ".config" / "pip", Path.home() / ".pip")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
SRC = "/src/provisiond"  # where the checkout appears inside, read-only


class BootError(RuntimeError):
    """The container could not be built or booted; the message says what was seen."""


def installer_packages() -> list[str]:
    """What ``scripts/install`` installs with apt on this architecture."""
    out = subprocess.run([str(REPO / "scripts" / "install"), "--list-packages"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return out.split()


def apt_sources() -> list[Path]:
    """The host's enabled apt sources files."""
    sources = [p for p in sorted(Path("/etc/apt/sources.list.d").glob("*"))
               if p.suffix in (".list", ".sources") and p.is_file()]
    main = Path("/etc/apt/sources.list")
    if main.is_file() and any(line.strip() and not line.lstrip().startswith("#")
                              for line in main.read_text().splitlines()):
        sources.insert(0, main)
    return sources


def apt_options() -> list[Path]:
    """The host's apt configuration files, in the order apt reads them."""
    files = sorted(p for p in Path("/etc/apt/apt.conf.d").glob("*") if p.is_file())
    return files + [p for p in [Path("/etc/apt/apt.conf")] if p.is_file()]


def plan() -> tuple[list[str], list[str]]:
    """(installed in the image, only downloaded into apt's cache)."""
    wanted = installer_packages()
    installed = list(HOST_PACKAGES) + [p for p in wanted if p.startswith("qemu-")]
    return installed, [p for p in wanted if p not in installed]


def cache_key() -> str:
    installed, downloaded = plan()
    facts = {"recipe": RECIPE, "suite": SUITE, "installed": installed,
             "downloaded": downloaded,
             "sources": [p.read_text() for p in apt_sources()]}
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def rootfs(log: Path) -> Path:
    """The cached root filesystem for the current key, built when missing (about 1-2 min).

    Other keys' trees are removed: one tree is about 1 GB.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / f"rootfs-{cache_key()}"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "etc" / "os-release").exists():
            build(target, log)
        for old in CACHE.glob("rootfs-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
    return target


def build(target: Path, log: Path) -> None:
    installed, downloaded = plan()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    argv = ["mmdebstrap", "--variant=apt", "--mode=root", f"--include={','.join(installed)}",
            "--skip=cleanup/apt",  # keep lists and cache: the install inside runs apt
            *(f"--aptopt={p}" for p in apt_options()),
            "--customize-hook=APT_CONFIG=\"$MMDEBSTRAP_APT_CONFIG\" apt-get install "
            "--download-only --yes --no-install-recommends " + " ".join(downloaded),
            "--customize-hook=rm -f \"$1/etc/libvirt/qemu/networks/autostart/default.xml\"",
            SUITE, str(partial), *map(str, apt_sources())]
    with open(log, "a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, timeout=900)
    if result.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise BootError(f"mmdebstrap failed (exit {result.returncode}); see {log}")
    partial.rename(target)


def pip_binds() -> list[Path]:
    """The host's pip configuration, and the local paths it names, that exist."""
    paths = [p for p in PIP_CONFIG_FILES if p.exists()]
    values = [v for k, v in os.environ.items() if k.startswith("PIP_")]
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                            capture_output=True, text=True, timeout=60).stdout
    values += listed.splitlines()
    if os.environ.get("PIP_CONFIG_FILE"):
        paths.append(Path(os.environ["PIP_CONFIG_FILE"]))
    for value in values:
        for url, found in re.findall(r"(file://)?(/[^\s'\"]+)", value):
            path = Path(found)
            # A file:// index's pages link to files beside it (simple/x/ -> ../../files/).
            if url and path.is_dir():
                path = path.parent
            if path.exists() and path != CA_BUNDLE:
                paths.append(path)
    unique: list[Path] = []
    for path in sorted(set(paths), key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(outer) for outer in unique):
            unique.append(path)
    return unique


class BootedDebian:
    """One booted container; ``run()`` a command in it, ``stop()`` powers it off."""

    def __init__(self, tree: Path, log: Path, *, machine: str = "provisiond-test",
                 binds: Sequence[tuple[Path, str]] = ()) -> None:
        self.tree = tree
        self.log = log
        self.machine = machine
        self.binds = binds  # (host directory, path inside), read-write
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0

    def boot(self, timeout: float = 60) -> None:
        pip_cache = CACHE / "pip"
        pip_cache.mkdir(parents=True, exist_ok=True)
        argv = ["systemd-nspawn", "--quiet", "--boot", "--register=no",
                "--volatile=overlay", f"--machine={self.machine}", "--console=passive",
                f"--directory={self.tree}", "--bind-ro=/etc/apt",
                f"--bind-ro={REPO}:{SRC}", f"--bind={pip_cache}:/root/.cache/pip"]
        argv += [f"--bind={outside}:{inside}" for outside, inside in self.binds]
        if not Path("/run/systemd/system").is_dir():
            argv.append("--keep-unit")  # no systemd here to ask for a scope
        if CA_BUNDLE.exists():
            argv.append(f"--bind-ro={CA_BUNDLE}")
        for path in pip_binds():
            inside = Path("/root") / path.relative_to(Path.home()) \
                if path.is_relative_to(Path.home()) else path
            argv.append(f"--bind-ro={path}:{inside}")
        with open(self.log, "a") as out:
            out.write(f"$ {' '.join(argv)}\n")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                     stdout=open(self.log, "a"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.leader:
            if self.proc.poll() is not None:
                raise BootError(f"systemd-nspawn exited {self.proc.returncode}; see {self.log}")
            if time.monotonic() > deadline:
                raise BootError(f"no container init after {timeout} s; see {self.log}")
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
            for pid in children.read_text().split():
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    self.leader = int(pid)
            time.sleep(0.1)
        while True:  # until the system bus and its manager answer
            state = self.run("systemctl", "is-system-running", "--wait", check=False,
                             timeout=max(1, deadline - time.monotonic())).stdout.strip()
            if state in ("running", "degraded"):
                return
            if time.monotonic() > deadline:
                raise BootError(f"systemd inside is {state!r} after {timeout} s")
            time.sleep(0.2)

    def run(self, *argv: str, user: str | None = None, env: dict[str, str] | None = None,
            check: bool = True, timeout: float = 120,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside (as ``user`` via runuser); raise on failure if ``check``."""
        environment = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                       "HOME": "/root", "LANG": "C.UTF-8", "TERM": "dumb",
                       "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0", **(env or {})}
        command = ["nsenter", f"--target={self.leader}", "--all", "--root", "--wd",
                   "env", "-i", *(f"{k}={v}" for k, v in environment.items())]
        if user is not None:
            command += ["runuser", "-u", user, "--"]
        result = subprocess.run([*command, *argv], capture_output=True, text=True,
                                timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {result.returncode} inside:\n"
                                 f"{result.stdout}{result.stderr}")
        return result

    def stop(self, timeout: float = 30) -> None:
        """Power off (nspawn turns SIGTERM into an orderly shutdown); kill if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def missing_tools(names: Sequence[str] = ("mmdebstrap", "systemd-nspawn", "nsenter")) -> list[str]:
    return [name for name in names if shutil.which(name) is None]
