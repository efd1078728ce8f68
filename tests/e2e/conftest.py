"""End-to-end fixtures: a real libvirt daemon with QEMU, owned by the test session.

``libvirtd`` (session scope) installs what is missing (scripts/setup-libvirtd), starts a
privileged libvirtd + virtlogd in a private mount namespace on a temporary directory
(harness/libvirtd.py says how), yields the ``LibvirtDaemon`` and stops it at the end:
guests destroyed, processes reaped, files removed. Connect with ``libvirtd.uri``.

It opens no libvirt connection itself (set-up checks go through ``virsh -c URI``): the test
process has one asyncio loop and libvirt takes one event implementation per process, so
Python-binding connections belong to the tests, after they registered libvirtaio.

``second_libvirtd`` (session scope, started only for the tests that ask for it) is a second
such daemon beside ``libvirtd``: two hosts on one machine. ``shared_pool`` gives a test a
``dir`` pool named ``shared`` on both, on one directory (``SharedStorage``, an NFS
stand-in), removed with its files at the end.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator

import pytest

from harness.daemon import Daemon, daemon_config
from harness.libvirtd import BINDS, LibvirtDaemon, LibvirtError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[LibvirtDaemon]:
    """A started libvirt daemon with the QEMU driver; ``.uri``, ``.restart()``, helpers."""
    if os.geteuid() != 0:
        pytest.skip("the end-to-end tests run a privileged libvirtd: root only")
    setup = subprocess.run([str(REPO / "scripts" / "setup-libvirtd")], capture_output=True,
                           text=True, timeout=600)
    if setup.returncode != 0:
        pytest.fail(f"scripts/setup-libvirtd failed:\n{setup.stdout}{setup.stderr}",
                    pytrace=False)
    for tool in ("unshare", "nsenter", "libvirtd", "virtlogd", "virsh"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found after scripts/setup-libvirtd", pytrace=False)
    daemon = LibvirtDaemon()
    try:
        daemon.start()
    except (LibvirtError, OSError) as exc:
        daemon.stop()
        pytest.fail(f"could not start libvirtd: {exc}", pytrace=False)
    try:
        yield daemon
    finally:
        daemon.stop()


class GuestPool:
    """A test's own dir pool on the shared libvirtd, and provisiond processes on it.

    ``configure(templates, ...)`` writes the daemon configuration (this pool its only
    storage pool, the host the shared libvirtd under TCG); ``daemon()`` starts one.
    At the end every daemon is stopped (its log printed, shown when the test fails) and
    the domains and the pool are removed.
    """

    def __init__(self, libvirtd: LibvirtDaemon, directory: Path) -> None:
        self.libvirtd = libvirtd
        self.directory = directory
        self.name = f"e2e-{uuid.uuid4().hex[:8]}"
        self.path = libvirtd.create_dir_pool(self.name)
        self.main: Path | None = None
        self.daemons: list[Daemon] = []

    def refresh(self) -> None:
        """Let libvirt see files put into the pool's directory."""
        self.libvirtd.virsh("pool-refresh", self.name)

    def configure(self, templates: dict[str, Any], *, memory_kib: int = 262144,
                  **daemon: Any) -> Path:
        """Write the configuration (size ``one``: 1 cpu, ``memory_kib``, 1 GiB)."""
        self.main = daemon_config(
            self.directory, storage_pools=[self.name],
            sizes={"one": {"cpus": 1, "memory": memory_kib, "storage_size_in_gb": 1}},
            templates=templates, daemon={"stop_timeout": 3, **daemon},
            hosts=[{"name": "e2e", "uri": self.libvirtd.uri, "domain_type": "qemu"}])
        return self.main

    def daemon(self, start: bool = True) -> Daemon:
        """A provisiond on the configuration (started unless told)."""
        assert self.main is not None, "configure() first"
        d = Daemon(self.directory, self.main)
        self.daemons.append(d)
        if start:
            d.start()
        return d

    def cleanup(self) -> None:
        """Stop the daemons, remove every domain and the pool."""
        for d in self.daemons:
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
            print(d.log())
        for name in self.libvirtd.virsh("list", "--all", "--name").split():
            self.libvirtd.virsh("destroy", name, check=False)
            self.libvirtd.virsh("undefine", name, check=False)
        self.libvirtd.virsh("pool-destroy", self.name, check=False)
        self.libvirtd.virsh("pool-undefine", self.name, check=False)


@pytest.fixture
def guest_pool(libvirtd: LibvirtDaemon, daemon_dir: Path) -> Iterator[GuestPool]:
    """A dir pool of the test's own on the shared libvirtd (see ``GuestPool``)."""
    pool = GuestPool(libvirtd, daemon_dir)
    try:
        yield pool
    finally:
        pool.cleanup()


class SharedStorage:
    """A directory that several daemons, their QEMUs and the test process reach at one
    path, and a ``dir`` pool ``name`` on it on each daemon: one NFS export mounted on
    several hosts. ``create()`` / ``remove()``; made in the system's temporary directory
    unless ``path`` is given (it must be outside the daemons' bind mounts)."""

    def __init__(self, daemons: Iterable[LibvirtDaemon], name: str = "shared",
                 path: Path | str | None = None) -> None:
        self.daemons = list(daemons)
        self.name = name
        self._made_here = path is None
        self.path = Path(path) if path else Path(tempfile.mkdtemp(prefix="provisiond-shared-"))
        for d in self.daemons:
            if d.host_path(self.path) != self.path:
                raise ValueError(f"{self.path} is under one of {', '.join(BINDS.values())}: "
                                 f"each daemon would see a directory of its own there")

    def create(self, autostart: bool = True) -> Path:
        """Define and start the pool on every daemon (a leftover pool of that name is
        replaced); the directory. Undone if it fails on one."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.path.chmod(0o755)
        try:
            for d in self.daemons:
                d.remove_pool(self.name)
                d.define_dir_pool(self.name, self.path, autostart=autostart)
        except BaseException:
            self.remove()
            raise
        return self.path

    def refresh(self) -> None:
        """``pool-refresh`` on every running daemon: each sees what the others made."""
        for d in self.daemons:
            if d.running:
                d.virsh("pool-refresh", self.name)

    def add_volume(self, name: str, capacity: str = "1G", fmt: str = "qcow2") -> Path:
        """A volume made behind every daemon's back (``qemu-img create``, as an admin
        would on the export), then seen by all (``refresh``); its path."""
        path = self.path / name
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), capacity],
                       check=True, capture_output=True, text=True, timeout=60)
        self.refresh()
        return path

    def volumes(self, daemon: LibvirtDaemon) -> list[str]:
        """The pool's volume names as ``daemon`` lists them now (no refresh), sorted."""
        out = daemon.virsh("vol-list", "--pool", self.name)
        return sorted(line.split()[0] for line in out.splitlines() if line.strip())

    def files(self) -> list[str]:
        """The names of the files in the directory, sorted: what is really there."""
        return sorted(p.name for p in self.path.iterdir()) if self.path.is_dir() else []

    def remove(self) -> None:
        """Undefine the pool on every running daemon (one that is down keeps it: the next
        ``create()`` replaces it) and remove the files."""
        for d in self.daemons:
            if d.running:
                d.remove_pool(self.name)
        if self._made_here:
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.path.is_dir():
            for f in self.path.iterdir():
                if f.is_file() or f.is_symlink():
                    f.unlink()


@pytest.fixture(scope="session")
def second_libvirtd(libvirtd: LibvirtDaemon) -> Iterator[LibvirtDaemon]:
    """A second libvirt daemon (its own host UUID) running beside ``libvirtd``."""
    daemon = LibvirtDaemon(host_uuid=str(uuid.uuid4()))
    try:
        daemon.start()
    except (LibvirtError, OSError) as exc:
        daemon.stop()
        pytest.fail(f"could not start a second libvirtd: {exc}", pytrace=False)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def shared_pool(libvirtd: LibvirtDaemon,
                second_libvirtd: LibvirtDaemon) -> Iterator[SharedStorage]:
    """A dir pool ``shared`` on both daemons on one directory; removed, files and all."""
    for d in (libvirtd, second_libvirtd):
        if not d.running:  # a test before this one left it down
            d.start()
    storage = SharedStorage([libvirtd, second_libvirtd], "shared")
    storage.create()
    try:
        yield storage
    finally:
        storage.remove()
