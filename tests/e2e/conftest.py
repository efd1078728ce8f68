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
from pathlib import Path
from typing import Iterator

import pytest

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
