"""A running VM's serial console and display through provctl, on a real libvirtd + QEMU.

The guest is ``harness.libvirtd.make_serial_echo_iso``: a boot program that echoes its
serial port in capitals, so what a test types comes back changed by the guest itself.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from daemon.virt.domain_xml import domain_uuid_for
from harness.daemon import Daemon, REPO
from harness.libvirtd import LibvirtDaemon, make_serial_echo_iso
from tests.e2e.conftest import GuestPool

PROVCTL = str(Path(sys.executable).parent / "provctl")
IDLE = 6.0
CTRL_RBRACKET = b"\x1d"


class Console:
    """A ``provctl console`` process, typed into and read from through pipes."""

    def __init__(self, d: Daemon, request_id: str, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [PROVCTL, "--socket", d.socket, "console", request_id, *extra],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
        self.seen = b""

    def type(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def expect(self, wanted: bytes, timeout: float = 15) -> None:
        """Read the console until ``wanted`` came (or fail, showing what did)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while wanted not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{wanted!r} never came; got {self.seen!r}"
            if select.select([fd], [], [], left)[0]:
                chunk = os.read(fd, 4096)
                assert chunk, f"console ended before {wanted!r}; got {self.seen!r} " \
                              f"{self.finish()}"
                self.seen += chunk

    def finish(self, timeout: float = 15, *, keep_input: bool = False) -> tuple[int, str]:
        """Exit code and stderr, once it has ended (its input closed first, which leaves
        the console, unless ``keep_input``)."""
        if keep_input:
            self.proc.wait(timeout)
        _out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err.decode()


@pytest.fixture
def running(guest_pool: GuestPool) -> tuple[Daemon, str]:
    """A provisiond on the real libvirtd, and the id of a request whose VM runs."""
    make_serial_echo_iso(guest_pool.path / "echo.iso")
    guest_pool.refresh()
    guest_pool.configure({"echo": {"kind": "iso", "volume": {"pool": guest_pool.name,
                                                             "name": "echo.iso"}}},
                         memory_kib=131072, session_idle_timeout=IDLE)
    d = guest_pool.daemon()
    created = d.call("POST", "/v1/requests", {"template": "echo", "size": "one",
                                               "resource_pool": "rp"})
    assert created.status == 202, created.body
    rid = created.body["id"]
    assert d.wait_terminal(rid)["state"] == "done"
    assert d.call("POST", f"/v1/requests/{rid}/start").status == 202
    assert d.call("GET", f"/v1/requests/{rid}?wait=30").body["vm"]["state"] == "running"
    return d, rid


def notes(d: Daemon, rid: str) -> list[str]:
    return [e["detail"] for e in d.call("GET", f"/v1/requests/{rid}/log").body["log"]
            if e["kind"] == "note" and e["trigger"] == "session"]


def test_the_console_is_the_guests_and_one_session_holds_it(
        running: tuple[Daemon, str]) -> None:
    d, rid = running
    first = Console(d, rid)
    first.type(b"hello\r")
    first.expect(b"HELLO\r")  # the guest answered: our bytes went in, its bytes came out

    refused = Console(d, rid)
    code, err = refused.finish()
    assert code == 1 and "in use by" in err and "force" in err, err

    taker = Console(d, rid, "--force")
    taker.type(b"mine\r")
    taker.expect(b"MINE\r")
    code, err = first.finish()
    assert code == 1 and "taken over by" in err, err

    taker.type(b"bye\r")
    taker.expect(b"BYE\r")
    taker.type(CTRL_RBRACKET)  # Ctrl-] leaves
    code, err = taker.finish()
    assert code == 0, err
    # A console left is free: a plain open succeeds again.
    again = Console(d, rid)
    again.type(b"x\r")
    again.expect(b"X\r")
    again.proc.kill()  # dropped without a goodbye: the daemon frees it all the same
    again.finish()
    time.sleep(0.5)
    after_drop = Console(d, rid)
    after_drop.type(b"y\r")
    after_drop.expect(b"Y\r")
    code, err = after_drop.finish(IDLE + 15, keep_input=True)  # idle: the daemon ends it
    assert code == 1 and f"idle for {IDLE:g} s" in err, err

    log = notes(d, rid)
    assert any(n.startswith("console opened by") and "(forced)" in n for n in log), log
    assert any("closed: taken over by" in n for n in log), log
    assert any(n.endswith(f"closed: idle for {IDLE:g} s") for n in log), log


def test_a_console_closes_when_the_vm_stops(running: tuple[Daemon, str]) -> None:
    d, rid = running
    console = Console(d, rid)
    console.type(b"up\r")
    console.expect(b"UP\r")
    assert d.call("POST", f"/v1/requests/{rid}/stop", {"force": True}).status == 202
    code, err = console.finish(keep_input=True)
    assert code == 0 and "The console closed" in err, err
    assert d.call("GET", f"/v1/requests/{rid}?wait=30").body["vm"]["state"] == "stopped"
    refused = Console(d, rid)
    code, err = refused.finish()
    assert code == 1 and "is stopped" in err, err


def test_the_display_listens_nowhere_and_reaches_its_owner_only(
        running: tuple[Daemon, str], libvirtd: LibvirtDaemon, tmp_path: Path) -> None:
    d, rid = running
    xml = libvirtd.virsh("dumpxml", domain_uuid_for(rid))
    graphics = xml[xml.index("<graphics"):xml.index("</graphics>")]
    assert "<listen type='none'/>" in graphics and "port=" not in graphics, graphics

    path = tmp_path / "vm.sock"
    relay = subprocess.Popen([PROVCTL, "--socket", d.socket, "display", rid, "--listen",
                              str(path), "--once"], stderr=subprocess.PIPE, cwd=REPO)
    try:
        deadline = time.monotonic() + 15
        while not path.exists():
            assert time.monotonic() < deadline and relay.poll() is None, relay.stderr
            time.sleep(0.05)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the caller's alone
        viewer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        viewer.settimeout(15)
        viewer.connect(str(path))
        greeting = b""
        while len(greeting) < 12:
            greeting += viewer.recv(12 - len(greeting))
        assert greeting == b"RFB 003.008\n"  # QEMU's VNC server, through provisiond
        try:
            viewer.sendall(b"RFB 003.008\n")
            assert viewer.recv(1)  # the security types come back: it is a live session
        except OSError as exc:
            relay.terminate()
            _, err = relay.communicate(timeout=10)
            raise AssertionError(f"{exc}; provctl: {err.decode()}; daemon: {d.log()}") from None
        viewer.close()
        assert relay.wait(15) == 0
    finally:
        if relay.poll() is None:
            relay.send_signal(signal.SIGTERM)
            relay.wait(10)
    assert not path.exists()  # the relay cleans up after itself
    assert any(n == f"display opened by {d.call('GET', f'/v1/requests/{rid}').body['owner']}"
               for n in notes(d, rid))

