"""The WebSocket bridge of consoles and displays: an idle client is let go although it
answers pings, and a client that leaves is noticed even while the guest takes nothing."""

from __future__ import annotations

import asyncio
import select
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from daemon.api import sessions as api
from daemon.cli.websocket import connect


class HeldSession:
    """A console whose guest writes nothing and, with ``hold_writes``, takes nothing."""

    kind = "console"
    ended_by = None

    def __init__(self, hold_writes: bool) -> None:
        self.ending = asyncio.Event()
        self.hold_writes = hold_writes
        self.written: list[bytes] = []

    async def read(self) -> bytes:
        await asyncio.sleep(3600)
        return b""

    async def write(self, data: bytes) -> None:
        self.written.append(data)
        if self.hold_writes:
            await asyncio.sleep(3600)


async def bridged(tmp_path: Path, session: HeldSession, idle: float, client: Any
                  ) -> tuple[float, int, str]:
    """Serve one WebSocket (pings every second) bridged to ``session``; run ``client(path)``
    in a thread; (seconds the bridge ran, close code, why)."""
    ended: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=1.0)
        await ws.prepare(request)
        started = time.monotonic()
        code, why = await api._bridge(request, ws, session, idle)  # noqa: SLF001
        ended["result"] = (time.monotonic() - started, code, why)
        await ws.close(code=code, message=why.encode())
        return ws

    app = web.Application()
    app.router.add_get("/c", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    path = str(tmp_path / "s.sock")
    await web.UnixSite(runner, path).start()
    try:
        thread = threading.Thread(target=client, args=(path,), daemon=True)
        thread.start()
        for _ in range(1500):
            if "result" in ended:
                break
            await asyncio.sleep(0.01)
        assert "result" in ended, "the bridge did not end within 15 s"
        return ended["result"]
    finally:
        await runner.cleanup()


def answer_pings(ws: Any, seconds: float) -> None:
    """Read for ``seconds`` (or until the close), answering pings as provctl does."""
    until = time.monotonic() + seconds
    while ws.close_code is None and time.monotonic() < until:
        if select.select([ws], [], [], 0.02)[0]:
            if not ws.feed():
                return
            ws.messages()


def answers_pings_for(seconds: float) -> Any:
    """A client like provctl console left alone: it sends nothing, answers every ping."""

    def client(path: str) -> None:
        ws = connect(path, "/c", 5)
        answer_pings(ws, seconds)
        ws.close()

    return client


async def test_a_client_that_only_answers_pings_is_idle(tmp_path: Path) -> None:
    took, code, why = await bridged(tmp_path, HeldSession(hold_writes=False), 2.5,
                                    answers_pings_for(9))
    assert (code, why) == (api.CLOSE_IDLE, "idle for 2.5 s")  # though 2 pings answered
    assert took < 6


async def test_typing_keeps_a_session_open(tmp_path: Path) -> None:
    session = HeldSession(hold_writes=False)

    def typist(path: str) -> None:
        ws = connect(path, "/c", 5)
        for _ in range(6):  # a key every 0.6 s for 3.6 s: never 2.5 s apart
            ws.send(b"x")
            answer_pings(ws, 0.6)
        answer_pings(ws, 9)  # then silent
        ws.close()

    took, code, _why = await bridged(tmp_path, session, 2.5, typist)
    assert code == api.CLOSE_IDLE and took > 3.6, (code, _why)  # idle once typing stopped
    assert session.written == [b"x"] * 6


async def test_a_client_that_leaves_while_the_guest_takes_nothing_is_noticed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api, "WATCH_INTERVAL", 0.1)
    session = HeldSession(hold_writes=True)

    def pastes_and_leaves(path: str) -> None:
        ws = connect(path, "/c", 5)
        ws.send(b"a paste the guest never reads")
        time.sleep(0.3)
        ws.sock.shutdown(socket.SHUT_RDWR)  # gone without a close frame (killed, cut)
        ws.sock.close()

    took, code, why = await bridged(tmp_path, session, 60, pastes_and_leaves)
    assert code == api.CLOSE_NORMAL and "the client left" in why, why
    assert took < 5  # not at the idle timeout (60 s)
    assert session.written == [b"a paste the guest never reads"]
