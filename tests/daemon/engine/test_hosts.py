"""Hosts open at once: a host that hangs holds up neither the others nor the event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import libvirt

from daemon.engine import Hosts
from daemon.virt.connection import HostConnection
from harness.daemon import DATA

URI = f"test://{DATA / 'host_basic.xml'}"


class HangingOpener:
    """Opens the test driver, but only once ``release`` is set (a host that hangs)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.opened: list[Any] = []

        self.closed: list[Any] = []
        self.proxies: list[Any] = []

    def __call__(self, uri: str) -> Any:
        self.release.wait(30)
        conn = libvirt.open(uri)
        self.opened.append(conn)
        self.proxies.append(_Closing(conn, self.closed))
        return self.proxies[-1]


class _Closing:
    """A real connection that notes when it is closed."""

    def __init__(self, conn: Any, closed: list[Any]) -> None:
        self._conn, self._closed = conn, closed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def close(self) -> int:
        self._closed.append(self._conn)
        self.closed_on = threading.current_thread()
        return self._conn.close()


async def test_a_hanging_host_does_not_hold_up_the_start_or_the_others() -> None:
    hanging = HangingOpener()
    back: list[str] = []
    lost: list[str] = []

    async def on_back(name: str, _gap: float) -> None:
        back.append(name)

    hosts = Hosts({"fast": HostConnection("fast", URI),
                   "slow": HostConnection("slow", URI, opener=hanging)},
                  clock=asyncio.get_running_loop().time,
                  on_lost=lambda name, _why: lost.append(name), on_back=on_back,
                  on_reconnect=lambda _name: None)
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    beating = asyncio.create_task(heartbeat())
    try:
        await hosts.open_all(lambda _e: None, lambda _host: {}, grace=0.3)
        # The start went on while the slow host was still hanging in libvirt.open.
        assert not hanging.release.is_set()
        assert hosts.reachable("fast") and not hosts.reachable("slow")
        assert lost == ["slow"]  # its requests and VMs are told it is down
        assert ticks > 5  # the loop kept running during the hanging open
        assert hosts["fast"].inventory.pool("pool-dir") is not None  # read, and usable

        hanging.release.set()
        assert await hosts.wait_up("slow", 10)
        for _ in range(100):  # its VMs are looked at once it is up, as after a reconnect
            if back:
                break
            await asyncio.sleep(0.01)
        assert back == ["slow"]
    finally:
        beating.cancel()
        hanging.release.set()
        await hosts.close_all()


async def test_a_host_that_refuses_at_start_is_reconnected_in_the_background() -> None:
    def refuse(uri: str) -> Any:
        raise libvirt.libvirtError("connection refused")

    attempts = 0

    def refuse_once(uri: str) -> Any:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            refuse(uri)
        return libvirt.open(uri)

    hosts = Hosts({"down": HostConnection("down", URI, opener=refuse_once),
                   "up": HostConnection("up", URI)},
                  clock=asyncio.get_running_loop().time, on_lost=lambda *_: None,
                  on_back=lambda *_: asyncio.sleep(0), on_reconnect=lambda _name: None)
    try:
        await hosts.open_all(lambda _e: None, lambda _host: {})
        assert hosts.reachable("up") and not hosts.reachable("down")
        assert await hosts.wait_up("down", 10)
        assert attempts == 2
    finally:
        await hosts.close_all()


async def test_an_open_that_answers_after_the_timeout_is_closed() -> None:
    hanging = HangingOpener()
    host = HostConnection("slow", URI, opener=hanging, call_timeout=0.2)
    try:
        try:
            await host.open(lambda _e: None)
        except Exception as exc:  # noqa: BLE001 - checked below
            error = exc
        assert "no answer within 0.2 s" in getattr(error, "message", "")
        # A reconnect while that attempt still hangs does not start another one.
        try:
            await host.open(lambda _e: None)
        except Exception as exc:  # noqa: BLE001 - checked below
            again = exc
        assert "the previous attempt has not answered yet" in getattr(again, "message", "")
        hanging.release.set()
        for _ in range(200):
            if hanging.closed:
                break
            await asyncio.sleep(0.01)
        assert hanging.closed == hanging.opened != []  # closed when it came: not leaked
        # ... and not on the event loop's thread (closing talks to the slow host too).
        assert hanging.proxies[0].closed_on is not threading.main_thread()
    finally:
        hanging.release.set()
        await host.close()


class _SlowLister:
    """A real connection whose domain listing, once ``armed``, hangs until ``release``."""

    def __init__(self, conn: Any, armed: threading.Event, release: threading.Event) -> None:
        self._conn, self._armed, self._release = conn, armed, release

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def listAllDomains(self, flags: int = 0) -> Any:  # noqa: N802 - libvirt's name
        if self._armed.is_set():
            self._release.wait(30)
        return self._conn.listAllDomains(flags)


async def test_a_libvirt_call_that_does_not_answer_fails_after_the_call_timeout() -> None:
    armed, release = threading.Event(), threading.Event()
    host = HostConnection("slow", URI, call_timeout=0.3,
                          opener=lambda uri: _SlowLister(libvirt.open(uri), armed, release))
    try:
        await host.open(lambda _e: None)
        armed.set()
        started = asyncio.get_running_loop().time()
        try:
            await host.power_states()
        except Exception as exc:  # noqa: BLE001 - checked below
            error = exc
        waited = asyncio.get_running_loop().time() - started
        assert "libvirt did not answer within 0.3 s" in getattr(error, "message", ""), error
        assert type(error).__name__ == "VirtTimeout"
        assert 0.25 < waited < 5  # told when the timeout ran out, not when libvirt answered
        armed.clear()
        release.set()
        assert isinstance(await host.power_states(), dict)  # the host is usable after it
    finally:
        release.set()
        await host.close()


async def test_what_a_call_answers_after_its_timeout_is_not_left_open() -> None:
    # A display's descriptor (or a console's stream) that libvirt hands over after the
    # caller gave up would stay open, and a console held, with nobody to close it.
    import os

    host = HostConnection("slow", URI, call_timeout=0.2)
    release = threading.Event()
    reading, writing = os.pipe()

    def late_descriptor() -> int:
        release.wait(10)
        return reading

    try:
        await host.open(lambda _e: None)
        try:
            await host._call("cannot open the display", late_descriptor,  # noqa: SLF001
                             discard=os.close)
        except Exception as exc:  # noqa: BLE001 - checked below
            error = exc
        assert type(error).__name__ == "VirtTimeout"
        release.set()
        for _ in range(500):
            try:
                os.write(writing, b"x")
            except BrokenPipeError:
                break  # its reading end was closed
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the descriptor answered late was left open")
    finally:
        release.set()
        os.close(writing)
        await host.close()


async def test_a_wipe_may_take_longer_than_a_libvirt_call() -> None:
    # A large volume's wipe takes minutes; given up at call_timeout it would go on in
    # libvirtd, and the delete tried again would find the volume busy.
    import time

    from tests.conftest import Faulty

    # The real connection, whose volumes' wipe takes 0.6 s (the test driver's cannot).
    host = HostConnection("h", URI, call_timeout=0.2, opener=lambda uri: Faulty(
        libvirt.open(uri), {"wipe": lambda *_a: time.sleep(0.6) or 0}))
    try:
        await host.open(lambda _e: None)
        assert await host.wipe_volume("pool-dir", "free-15g.qcow2") == "wiped"
    finally:
        await host.close()
