"""End-to-end fixtures: a real libvirt daemon with QEMU, owned by the test session.

``libvirtd`` (session scope) installs what is missing (scripts/setup-libvirtd), starts a
privileged libvirtd + virtlogd in a private mount namespace on a temporary directory
(harness/libvirtd.py says how), yields the ``LibvirtDaemon`` and stops it at the end:
guests destroyed, processes reaped, files removed. Connect with ``libvirtd.uri``.

It opens no libvirt connection itself (set-up checks go through ``virsh -c URI``): the test
process has one asyncio loop and libvirt takes one event implementation per process, so
Python-binding connections belong to the tests, after they registered libvirtaio.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness.daemon import Daemon, daemon_config
from harness.libvirtd import LibvirtDaemon, LibvirtError

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
