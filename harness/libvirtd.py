"""A real libvirt daemon with QEMU that the end-to-end tests start and own.

Isolation (Debian 12, libvirt 9.0, as root): a libvirtd run by root is always the
privileged "system" daemon, and the paths of its drivers (``/etc/libvirt/qemu.conf``,
``/var/lib/libvirt/qemu``, ``/run/libvirt/qemu``, ``/var/cache/libvirt/qemu``, ...) are
compiled in: ``--config`` only moves ``libvirtd.conf``, ``--pid-file`` the pid file. So
the daemon runs in a private mount namespace (``unshare --mount``) in which a temporary
directory ``base`` is bind-mounted over each of

    /etc/libvirt  /var/lib/libvirt  /run/libvirt  /var/log/libvirt  /var/cache/libvirt

libvirtd, virtlogd and every QEMU they start see only the test's files; the host's libvirt
(its configuration, state, sockets, a daemon it may run) is left alone. From outside the
namespace the same files are ``base/{etc,lib,run,log,cache}`` (``host_path()`` maps): the
socket is ``base/run/libvirt-sock``, reached with ``uri``. Pools made by
``create_dir_pool`` live in ``base/pools``, a path that is the same inside and out.

Processes: a small supervisor (``SUPERVISOR`` below, run by ``unshare``) makes the bind
mounts, becomes a child subreaper and starts virtlogd and libvirtd on request. QEMU
daemonizes, so a guest's process is re-parented: to the supervisor, which reaps it at once
(PID 1 on these machines reaps late, and libvirt's ``destroy`` waits until the process is
gone: about 2 s per destroy otherwise). The supervisor holds the namespace for the
daemon's whole life: ``restart()`` kills libvirtd and starts a new one there, which sees
the same state, reconnects to the guests still running and finds virtlogd. When its
standard input closes (``stop()``, or the test process dying) the supervisor terminates
everything it still has, guests included, and exits.

Root-only tricks: ``unshare --mount`` and ``mount --bind`` need CAP_SYS_ADMIN. Traces left
outside ``base``: the mount point ``/run/libvirt`` when it did not exist (removed again by
``stop()`` if still empty), and a copy of the QEMU capability cache in ``cache_dir``
(``/var/tmp/provisiond-e2e`` unless ``PROVISIOND_E2E_CACHE`` says otherwise). The first
daemon on a machine probes qemu-system-x86_64; with the copy, later starts
take about 0.15 s instead of 1.4 s (8 s the very first time after the install, with cold
disk caches). libvirt itself re-probes when QEMU, libvirt or the kernel changed.

``qemu.conf``: guests run as root (``/dev/kvm`` is mode 0600: as ``libvirt-qemu`` every
define takes 30-60 s), no cgroups (nothing written under ``/sys/fs/cgroup``), no per-guest
/dev namespace, no security driver, no ownership xattrs on images. Guests must be
``<domain type='qemu'>`` (TCG: nested KVM fails on these machines). There is no network:
no default network, no dnsmasq; give guests no ``<interface>``, or ``type='user'``.

Several daemons may run at once (hosts of a fleet): each has its own ``base``, namespace,
virtlogd, sockets and pid files. They share the machine (``virsh nodeinfo``), hostname,
network (two may hand out the same VNC port) and, unless ``host_uuid`` is given, host UUID.
``define_dir_pool`` on a directory outside the bind mounts gives each a pool on the same
files, at the same path (an NFS stand-in; each sees another's new files on pool-refresh).

Only ``virsh -c URI`` subprocesses are used here, never the Python binding: libvirt takes
one event implementation per process, and the test process registers the asyncio one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any, Callable

IPXE_ISO = Path("/usr/lib/ipxe/ipxe.iso")
DEFAULT_CACHE = Path(os.environ.get("PROVISIOND_E2E_CACHE", "/var/tmp/provisiond-e2e"))

# base/<key> is bind-mounted over <value> in the daemon's mount namespace.
BINDS = {
    "etc": "/etc/libvirt",
    "lib": "/var/lib/libvirt",
    "run": "/run/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}

LIBVIRTD_CONF = """\
# Written by harness/libvirtd.py: a libvirtd owned by the test suite.
unix_sock_group = "root"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0770"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"""

QEMU_CONF = """\
# Written by harness/libvirtd.py.
user = "root"
group = "root"
security_driver = "none"
remember_owner = 0
cgroup_controllers = [ ]
namespaces = [ ]
"""

VIRTLOGD_CONF = """\
log_outputs = "3:file:/var/log/libvirt/virtlogd.log"
"""

# Run as `unshare --mount --propagation private -- python -c SUPERVISOR BINDS_JSON`.
# Reads one JSON line [argv, logfile] per process to start, answers with its pid.
SUPERVISOR = r"""
import ctypes, json, os, signal, subprocess, sys, time
for source, target in json.loads(sys.argv[1]):
    subprocess.run(["mount", "-n", "--bind", source, target], check=True)
if ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    sys.exit("prctl(PR_SET_CHILD_SUBREAPER) failed")
children = set()
def reap(*_):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        os.write(2, f"supervisor: {pid} exited, wait status {status}\n".encode())
signal.signal(signal.SIGCHLD, reap)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
def mine():
    found = set()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z":
            found.add(int(entry))
    return found
for line in sys.stdin:
    argv, log = json.loads(line)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ, setsid=True, setsigdef=(
            signal.SIGTERM, signal.SIGINT, signal.SIGCHLD), file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, out, 2)])
    except OSError as exc:
        print(f"error {exc}", flush=True)
        continue
    finally:
        os.close(out)
    children.add(pid)
    print(pid, flush=True)
# Standard input closed: terminate whatever is left (guests re-parented here included).
for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
    deadline = time.monotonic() + wait
    pids = mine()
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass
    while pids and time.monotonic() < deadline:
        time.sleep(0.02)
        reap()
        pids = mine()
    if not pids:
        break
"""


class LibvirtError(RuntimeError):
    """A virsh command failed, or the daemon did not come up."""


class LibvirtDaemon:
    """A privileged libvirtd + virtlogd on their own files, in a private mount namespace.

    ``start()`` / ``stop()`` / ``restart()``; ``uri`` for clients (``virsh -c``,
    ``libvirt.open``, provisiond's configuration). ``timings`` keeps the last measured
    durations in seconds: ``start`` (of which ``virtlogd``: namespace, mounts and
    virtlogd; ``libvirtd``: until it answers) and ``restart``.
    """

    # Mount points this process created on the host, and the instances using them: a
    # directory is removed when the last one stops (rmdir would detach their mounts).
    _created_mountpoints: list[Path] = []
    _users: set[int] = set()

    def __init__(self, base: Path | str | None = None, *,
                 cache_dir: Path | str | None = DEFAULT_CACHE, keep: bool = False,
                 host_uuid: str | None = None) -> None:
        self.base = Path(base) if base else Path(tempfile.mkdtemp(prefix="provisiond-libvirtd-"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.keep = keep
        self.host_uuid = host_uuid  # reported by libvirt; None: the machine's (SMBIOS)
        self.socket = self.base / "run" / "libvirt-sock"
        self.uri = f"qemu+unix:///system?socket={self.socket}"
        self.pools_dir = self.base / "pools"
        self.supervisor: subprocess.Popen[str] | None = None
        self.virtlogd: int | None = None  # pids
        self.libvirtd: int | None = None
        self.timings: dict[str, float] = {}
        self._namespace: str | None = None
        self._logs: list[IO[bytes]] = []

    # ------------------------------------------------------------------ paths and logs

    def host_path(self, path: str | Path) -> Path:
        """Where a path the daemon sees (e.g. /var/log/libvirt/qemu/x.log) is, from here."""
        path = Path(path)
        for key, target in BINDS.items():
            try:
                return self.base / key / path.relative_to(target)
            except ValueError:
                continue
        return path

    def log(self, which: str = "libvirtd") -> str:
        """A log: ``libvirtd``, ``virtlogd`` (theirs and their output), ``supervisor``, or
        ``qemu/NAME`` (a guest's: QEMU's command line and messages)."""
        texts = []
        for candidate in (self.base / "log" / f"{which}.log", self.base / f"{which}.out"):
            if candidate.exists():
                texts.append(candidate.read_text(errors="replace"))
        return "\n".join(texts)

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 60) -> None:
        """Write the configuration, start virtlogd then libvirtd; wait until it answers."""
        t0 = time.monotonic()
        for key in BINDS:
            (self.base / key).mkdir(exist_ok=True)
        self.pools_dir.mkdir(exist_ok=True)
        self._write_config()
        self._seed_cache()
        if not self._alive(self.virtlogd):
            self._start_virtlogd(timeout)
        self._start_libvirtd(timeout)
        self.timings["start"] = time.monotonic() - t0

    def restart(self, sig: int = signal.SIGTERM, down_for: float = 0.0,
                timeout: float = 60) -> None:
        """Stop libvirtd (``sig``: SIGTERM, or SIGKILL for a crash) and start it again.

        Its persistent state (defined domains and pools) and running guests survive, as on
        a real host; virtlogd keeps running. ``down_for``: seconds between the two.
        """
        t0 = time.monotonic()
        self.stop_libvirtd(sig)
        if down_for:
            time.sleep(down_for)
        self._start_libvirtd(timeout)
        self.timings["restart"] = time.monotonic() - t0

    def stop_libvirtd(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        """Stop only libvirtd (guests and virtlogd go on); ``start()`` brings it back."""
        self._stop_pid(self.libvirtd, sig, timeout)
        self.libvirtd = None

    def stop(self) -> None:
        """Destroy the guests, stop libvirtd, virtlogd and the supervisor; remove ``base``
        unless ``keep``. Safe to call more than once, and after a failed start."""
        try:
            if self._alive(self.libvirtd):
                for name in self._active_domains():
                    self.virsh("destroy", name, check=False, timeout=30)
                self.stop_libvirtd()
            self._stop_pid(self.virtlogd, signal.SIGTERM)
            self.virtlogd = None
            if self.supervisor is not None:
                if self.supervisor.stdin is not None:
                    self.supervisor.stdin.close()
                try:
                    self.supervisor.wait(30)
                except subprocess.TimeoutExpired:
                    self.supervisor.kill()
                    self.supervisor.wait()
                if self.supervisor.stdout is not None:
                    self.supervisor.stdout.close()
                self.supervisor = None
            self._kill_namespace_leftovers()
        finally:
            for f in self._logs:
                f.close()
            self._logs.clear()
            self._save_cache()
            LibvirtDaemon._users.discard(id(self))
            if not LibvirtDaemon._users:
                for mountpoint in LibvirtDaemon._created_mountpoints:
                    try:
                        mountpoint.rmdir()  # only if still empty
                    except OSError:
                        pass
                LibvirtDaemon._created_mountpoints.clear()
            if not self.keep:
                shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> LibvirtDaemon:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """libvirtd is up (it may still be starting)."""
        return self._alive(self.libvirtd)

    # ------------------------------------------------------------------ virsh and helpers

    def virsh(self, *args: str, check: bool = True, timeout: float = 60,
              input: str | None = None) -> str:
        """``virsh -q -c URI ARGS``; its standard output. Raises LibvirtError if it fails."""
        proc = subprocess.run(["virsh", "-q", "-c", self.uri, *args], input=input,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise LibvirtError(f"virsh {' '.join(args)}: exit {proc.returncode}: "
                               f"{proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def define_xml(self, command: str, xml: str, *args: str) -> str:
        """``virsh COMMAND FILE ARGS`` with ``xml`` in FILE (define, pool-define, create,
        vol-create POOL, ...: a command taking an XML file first)."""
        with tempfile.NamedTemporaryFile("w", suffix=".xml", dir=self.base,
                                         delete=False) as f:
            f.write(xml)
        try:
            if command == "vol-create" and args:
                return self.virsh(command, args[0], f.name, *args[1:])
            return self.virsh(command, f.name, *args)
        finally:
            os.unlink(f.name)

    def create_dir_pool(self, name: str = "e2e-pool", *, autostart: bool = False) -> Path:
        """Define and start a ``dir`` storage pool in ``base/pools/NAME``; its directory."""
        path = self.pools_dir / name
        path.mkdir(parents=True, exist_ok=True)
        xml = (f"<pool type='dir'><name>{name}</name>"
               f"<target><path>{path}</path></target></pool>")
        self.define_xml("pool-define", xml)
        self.virsh("pool-start", name)
        if autostart:
            self.virsh("pool-autostart", name)
        return path

    def create_volume(self, pool: str, name: str, capacity: str = "64M",
                      fmt: str = "qcow2") -> Path:
        """``vol-create-as``; the new volume's path."""
        self.virsh("vol-create-as", pool, name, capacity, "--format", fmt)
        return Path(self.virsh("vol-path", name, "--pool", pool).strip())

    def add_iso_to_pool(self, pool: str, name: str = "ipxe.iso") -> Path:
        """Put a small bootable ISO (``make_iso``) into a dir pool as a volume; its path."""
        xml = self.virsh("pool-dumpxml", pool)
        target = Path(xml.split("<path>", 1)[1].split("</path>", 1)[0])
        make_iso(target / name)
        self.virsh("pool-refresh", pool)
        return target / name

    def define_dir_pool(self, name: str, path: Path | str, *,
                        autostart: bool = False) -> Path:
        """Define and start a ``dir`` pool on ``path`` as the daemon sees it (made if
        missing); where the test process finds that directory (``host_path``)."""
        here = self.host_path(path)
        here.mkdir(parents=True, exist_ok=True)
        self.define_xml("pool-define", f"<pool type='dir'><name>{name}</name>"
                                       f"<target><path>{path}</path></target></pool>")
        try:
            self.virsh("pool-start", name)
            if autostart:
                self.virsh("pool-autostart", name)
        except LibvirtError:
            self.remove_pool(name)
            raise
        return here

    def remove_pool(self, name: str) -> None:
        """Stop and undefine a storage pool (if defined), leaving its files."""
        self.virsh("pool-destroy", name, check=False)
        self.virsh("pool-undefine", name, check=False)

    # ------------------------------------------------------------------ internals

    def _write_config(self) -> None:
        etc = self.base / "etc"
        conf = LIBVIRTD_CONF + (f'host_uuid = "{self.host_uuid}"\n' if self.host_uuid else "")
        for name, text in (("libvirtd.conf", conf), ("qemu.conf", QEMU_CONF),
                           ("virtlogd.conf", VIRTLOGD_CONF)):
            if not (etc / name).exists():
                (etc / name).write_text(text)

    def _start_supervisor(self) -> None:
        LibvirtDaemon._users.add(id(self))
        for target in BINDS.values():
            if not os.path.isdir(target):
                os.makedirs(target, exist_ok=True)
                LibvirtDaemon._created_mountpoints.append(Path(target))
        binds = [[str(self.base / key), target] for key, target in BINDS.items()]
        err = open(self.base / "supervisor.out", "ab")
        self._logs.append(err)
        self.supervisor = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "--",
             sys.executable, "-c", SUPERVISOR, json.dumps(binds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
            start_new_session=True, text=True, bufsize=1)

    def _spawn(self, what: str, argv: list[str]) -> int:
        """Have the supervisor start a process in the namespace; its pid."""
        assert self.supervisor is not None
        assert self.supervisor.stdin is not None and self.supervisor.stdout is not None
        try:
            self.supervisor.stdin.write(json.dumps([argv, str(self.base / f"{what}.out")])
                                        + "\n")
            self.supervisor.stdin.flush()
            reply = self.supervisor.stdout.readline()
        except OSError:
            reply = ""
        if not reply.strip().isdigit():
            raise LibvirtError(f"could not start {what} ({reply.strip()!r}):\n"
                               f"{self.log('supervisor')}")
        return int(reply)

    def _start_virtlogd(self, timeout: float) -> None:
        t0 = time.monotonic()
        self._start_supervisor()
        self.virtlogd = self._spawn("virtlogd",
                                    ["virtlogd", "-p", str(self.base / "virtlogd.pid")])
        assert self.supervisor is not None
        self._namespace = os.readlink(f"/proc/{self.supervisor.pid}/ns/mnt")
        if self._namespace == os.readlink("/proc/self/ns/mnt"):
            raise LibvirtError("the supervisor is not in a private mount namespace")
        self._wait(lambda: self._connectable(self.base / "run" / "virtlogd-sock"),
                   self.virtlogd, "virtlogd", timeout)
        self.timings["virtlogd"] = time.monotonic() - t0

    def _start_libvirtd(self, timeout: float) -> None:
        t0 = time.monotonic()
        self.libvirtd = self._spawn("libvirtd",
                                    ["libvirtd", "-p", str(self.base / "libvirtd.pid")])
        self._wait(lambda: self._connectable(self.socket), self.libvirtd, "libvirtd", timeout)
        # The first call waits until the drivers are up.
        version = subprocess.run(["virsh", "-c", self.uri, "version"], capture_output=True,
                                 text=True, timeout=timeout)
        if version.returncode != 0:
            raise LibvirtError(f"libvirtd does not answer: {version.stderr}\n{self.log()}")
        self.timings["libvirtd"] = time.monotonic() - t0

    def _wait(self, ready: Callable[[], bool], pid: int, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if not self._alive(pid):
                raise LibvirtError(f"{what} exited:\n{self.log(what)}\n"
                                   f"{self.log('supervisor')}")
            if time.monotonic() > deadline:
                raise LibvirtError(f"{what} did not come up in {timeout} s:\n{self.log(what)}")
            time.sleep(0.01)

    @staticmethod
    def _connectable(path: Path) -> bool:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False
        finally:
            s.close()

    @staticmethod
    def _alive(pid: int | None) -> bool:
        """The process exists and is not a zombie (the supervisor reaps at once)."""
        if pid is None:
            return False
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    def _stop_pid(self, pid: int | None, sig: int, timeout: float = 20) -> None:
        if not self._alive(pid):
            return
        assert pid is not None
        for s, wait in ((sig, timeout), (signal.SIGKILL, 5.0)):
            try:
                os.kill(pid, s)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while self._alive(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if not self._alive(pid):
                return

    def _active_domains(self) -> list[str]:
        out = self.virsh("list", "--name", check=False, timeout=30)
        return [line.strip() for line in out.splitlines() if line.strip()]

    def _kill_namespace_leftovers(self) -> None:
        """Last resort after the supervisor exited: SIGKILL, by pid, whatever still runs
        in our mount namespace."""
        if self._namespace is None:
            return
        for _ in range(3):
            found = []
            for entry in os.listdir("/proc"):
                if not entry.isdigit():
                    continue
                try:
                    if os.readlink(f"/proc/{entry}/ns/mnt") == self._namespace:
                        found.append(int(entry))
                except OSError:
                    continue
            if not found:
                return
            for pid in found:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.2)

    def _cache_files(self) -> Path:
        return self.base / "cache" / "qemu" / "capabilities"

    def _seed_cache(self) -> None:
        if self.cache_dir is None or not self.cache_dir.is_dir():
            return
        target = self._cache_files()
        target.mkdir(parents=True, exist_ok=True)
        for f in self.cache_dir.glob("*.xml"):
            if not (target / f.name).exists():
                shutil.copy2(f, target / f.name)

    def _save_cache(self) -> None:
        if self.cache_dir is None or not self._cache_files().is_dir():
            return
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            for f in self._cache_files().glob("*.xml"):
                tmp = self.cache_dir / f".{f.name}.{os.getpid()}-{id(self)}.tmp"  # own
                shutil.copy2(f, tmp)
                os.replace(tmp, self.cache_dir / f.name)
        except OSError:
            pass


def make_iso(dest: Path | str) -> Path:
    """A small ISO at ``dest``: iPXE's bootable one (Debian package ``ipxe``) when present,
    else a data-only ISO made with genisoimage (a guest with it as CD-ROM still starts)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if IPXE_ISO.exists():
        shutil.copyfile(IPXE_ISO, dest)
        return dest
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "README.TXT").write_text("provisiond end-to-end test image\n")
        subprocess.run(["genisoimage", "-quiet", "-V", "PROVISIOND", "-o", str(dest), tmp],
                       check=True, capture_output=True)
    return dest


# A guest that needs no kernel: a 16-bit boot program (El Torito, no emulation) that
# writes a banner to COM1, then echoes every byte it reads there, letters in capitals,
# so a test sees its own typing come back through the guest. Assembled from:
#     push cs; pop ds; call next; next: pop si; add si, msg-next; mov dx, 0x3f8
#     print: lodsb; test al, al; jz wait; out dx, al; jmp print
#     wait: mov dx, 0x3fd; poll: in al, dx; test al, 1; jz poll
#     mov dx, 0x3f8; in al, dx; cmp al, 'a'; jb echo; cmp al, 'z'; ja echo; sub al, 0x20
#     echo: out dx, al; jmp wait; msg: db "...", 13, 10, 0
# (`as --32` with .code16, then `objcopy -O binary`).
SERIAL_ECHO_CODE = bytes.fromhex(
    "0e1fe800005e81c62900baf803ac84c07403eeebf8bafd03eca80174fbbaf803"
    "ec3c6172063c7a77022c20eeebe7")
SERIAL_ECHO_BANNER = b"provisiond test guest: type, it answers in capitals\r\n"


def make_serial_echo_iso(dest: Path | str) -> Path:
    """A bootable ISO whose guest echoes its serial console in capitals (see above)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    program = SERIAL_ECHO_CODE + SERIAL_ECHO_BANNER + b"\0"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "boot.bin").write_bytes(program.ljust(2048, b"\0"))
        subprocess.run(["genisoimage", "-quiet", "-V", "SERIALECHO", "-o", str(dest),
                        "-b", "boot.bin", "-no-emul-boot", "-boot-load-size", "4",
                        "-c", "boot.cat", tmp], check=True, capture_output=True)
    return dest


def file_digest(path: Path | str) -> str:
    """sha256 of a file (tests check that the host's configuration is left alone)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
