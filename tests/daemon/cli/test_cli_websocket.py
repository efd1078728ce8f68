"""provctl's hand-written WebSocket client against aiohttp's server (the daemon's own).

An echo server on a Unix socket, in a thread: what the client sends must come back
whole, in every frame size, with pings answered and the server's close code read.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Iterator

import pytest
from aiohttp import WSMsgType, web

from daemon.cli.client import ApiError, Client
from daemon.cli.websocket import WebSocket, accept_key


def receive(ws: WebSocket, count: int = 1) -> list[bytes]:
    got: list[bytes] = []
    while len(got) < count and ws.close_code is None:
        got += ws.messages()
        if len(got) < count and ws.close_code is None:
            assert ws.feed(), "the server hung up"
    return got


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    path = str(tmp_path / "ws.sock")
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    async def echo(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                if message.data == b"ping me":
                    await ws.ping(b"are you there")
                    continue
                if message.data == b"close":
                    await ws.close(code=4001, message=b"taken over by alice")
                    break
                await ws.send_bytes(message.data[::-1])
            elif message.type == WSMsgType.TEXT:
                await ws.send_bytes(message.data.encode())
        return ws

    async def refuse(_request: web.Request) -> web.Response:
        return web.json_response({"error": {"code": "in_use", "message": "in use by bob"}},
                                 status=409)

    async def serve() -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/echo", echo)
        app.router.add_get("/refuse", refuse)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.UnixSite(runner, path).start()
        return runner

    def run() -> None:
        asyncio.set_event_loop(loop)
        runner = loop.run_until_complete(serve())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(10)
    yield path
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def test_the_accept_key_is_rfc_6455s() -> None:
    # The example of RFC 6455, section 1.3.
    assert accept_key(b"dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 300_000])
def test_messages_of_every_length_form_come_back_whole(server: str, size: int) -> None:
    ws = Client(server).websocket("/echo")
    data = bytes(i % 251 for i in range(size))
    ws.send(data)
    assert receive(ws) == [data[::-1]]
    ws.close()


def test_pings_are_answered_and_the_close_code_is_read(server: str) -> None:
    ws = Client(server).websocket("/echo")
    ws.send(b"ping me")  # the server pings; the client must pong and carry on
    ws.send(b"abc")
    assert receive(ws) == [b"cba"]
    ws.send(b"close")
    assert receive(ws) == []
    assert (ws.close_code, ws.close_reason) == (4001, "taken over by alice")


def test_a_refusal_is_the_apis_error(server: str) -> None:
    with pytest.raises(ApiError) as refused:
        Client(server).websocket("/refuse")
    assert refused.value.status == 409 and refused.value.exit_code == 1
    assert "in use by bob" in refused.value.message


class _OneSocket:
    """A client whose ``websocket`` hands out one ready WebSocket."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    def websocket(self, _target: str) -> WebSocket:
        return self.ws


def test_a_greeting_that_came_with_the_handshake_reaches_the_viewer_at_once() -> None:
    import socket

    from daemon.cli.sessions import _relay

    # The daemon's side: the 101 answer and the VNC server's first frame arrived in one
    # read, so the frame is in the buffer and nothing more comes on the socket.
    daemon_end, client_end = socket.socketpair()
    greeting = b"RFB 003.008\n"
    ws = WebSocket(client_end, pending=bytes([0x82, len(greeting)]) + greeting)
    viewer, relay_end = socket.socketpair()
    viewer.settimeout(5)
    relay = threading.Thread(target=_relay, args=(_OneSocket(ws), "/display", relay_end),
                             daemon=True)
    relay.start()
    try:
        assert viewer.recv(len(greeting)) == greeting  # not only once the daemon speaks again
    finally:
        daemon_end.close()
        relay.join(5)
        viewer.close()


CONSOLE_ON_A_PTY = """
import socket, sys
sys.path.insert(0, sys.argv[1])
from daemon.cli.sessions import cmd_console
from daemon.cli.websocket import WebSocket

daemon_end, client_end = socket.socketpair()

class Client:
    def get(self, request_id):
        return {"id": request_id, "name": "vm-1"}

    def websocket(self, _target):
        return WebSocket(client_end)

class Args:
    id, force = "r1", False

sys.exit(cmd_console(Client(), Args()))
"""


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGHUP"])
def test_a_console_killed_gives_the_terminal_back(tmp_path: Path, signum: str) -> None:
    import os
    import signal
    import subprocess
    import sys
    import termios
    import time

    from harness.daemon import REPO

    master, slave = os.openpty()
    try:
        cooked = termios.tcgetattr(slave)
        proc = subprocess.Popen([sys.executable, "-c", CONSOLE_ON_A_PTY, str(REPO)],
                                stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while termios.tcgetattr(slave)[3] & termios.ICANON:  # until provctl made it raw
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.02)
        proc.send_signal(getattr(signal, signum))
        _out, err = proc.communicate(timeout=10)
        assert proc.returncode == 128 + getattr(signal, signum), err
        assert f"left the console ({signum})" in err.decode()
        assert termios.tcgetattr(slave) == cooked  # as it was before
    finally:
        os.close(master)
        os.close(slave)
