"""Connection timeouts and accept failures, in-process: ``serve()`` with the timeouts
lowered through ``daemon.process.connections``'s constants (issue 12, point 4)."""

from __future__ import annotations

import asyncio
import errno
import gc
import json
import logging
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from daemon.config import load_config
from daemon.process import connections
from daemon.process.server import serve
from harness.daemon import daemon_config

HEADER_TIMEOUT = 0.3
IDLE_TIMEOUT = 1.0
GUARD = 20.0  # how long a test waits for anything at all before it fails


class Client:
    """A raw HTTP/1.1 connection to the daemon's socket."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def request(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        """One request on this connection (kept alive); its status and decoded body."""
        data = json.dumps(body).encode() if body is not None else b""
        head = f"{method} {url} HTTP/1.1\r\nHost: provisiond\r\nContent-Length: {len(data)}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        self.writer.write(head.encode() + b"\r\n" + data)
        async with asyncio.timeout(GUARD):
            status_line = await self.reader.readuntil(b"\r\n")
            headers = (await self.reader.readuntil(b"\r\n\r\n")).decode().lower()
            length = int(headers.split("content-length:")[1].split("\r\n")[0])
            payload = await self.reader.readexactly(length)
        return int(status_line.split()[1]), json.loads(payload)

    async def closed_by_daemon(self) -> bool:
        """Whether the daemon closes this connection (an EOF within the guard's time)."""
        try:
            async with asyncio.timeout(GUARD):
                return await self.reader.read(1) == b""
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.writer.close()


@pytest.fixture
async def served(daemon_dir: Path, late_host: Any, monkeypatch: pytest.MonkeyPatch
                 ) -> AsyncIterator[Path]:
    """``serve()`` in this process, on a host that never comes (requests stay in progress),
    with short header and idle timeouts; yields the socket's path."""
    monkeypatch.setattr(connections, "HEADER_TIMEOUT", HEADER_TIMEOUT)
    monkeypatch.setattr(connections, "IDLE_TIMEOUT", IDLE_TIMEOUT)
    config = load_config(daemon_config(daemon_dir / "d", str(late_host.path)))
    stop = asyncio.Event()
    task = asyncio.create_task(serve(config, stop=stop))
    path = config.daemon.socket
    async with asyncio.timeout(GUARD):
        while not path.exists():
            assert not task.done(), task
            await asyncio.sleep(0.02)
    try:
        yield path
    finally:
        stop.set()
        await task
        gc.unfreeze()  # serve() froze what it found: this test session's objects


async def connect(path: Path) -> Client:
    """A new connection to the daemon."""
    return Client(*await asyncio.open_unix_connection(str(path)))


async def test_a_partial_request_line_is_closed_after_the_header_timeout(served: Path) -> None:
    client = await connect(served)
    client.writer.write(b"GET /v1/hea")  # and nothing more
    assert await client.closed_by_daemon()


async def test_a_connection_that_sends_nothing_is_closed(served: Path) -> None:
    client = await connect(served)
    assert await client.closed_by_daemon()


async def test_headers_that_stop_on_a_kept_alive_connection_are_closed(served: Path) -> None:
    client = await connect(served)
    assert (await client.request("GET", "/v1/health"))[0] == 200
    client.writer.write(b"GET /v1/health HTTP/1.1\r\nHost: provisiond\r\n")  # no end
    assert await client.closed_by_daemon()


async def test_a_request_in_progress_outlives_both_timeouts_and_idle_is_closed(
        served: Path) -> None:
    client = await connect(served)
    status, body = await client.request("POST", "/v1/requests", {
        "template": "ipxe", "size": "small", "resource_pool": "rp"})
    assert status == 202
    # Held 2 s: longer than the header timeout and the idle timeout, answered in full.
    wait = 2 * max(HEADER_TIMEOUT, IDLE_TIMEOUT)
    status, shown = await client.request("GET", f"/v1/requests/{body['id']}?wait={wait}")
    assert status == 200 and shown["state"] == "storage-searching"
    # Kept alive: a next request right away is answered on the same connection.
    assert (await client.request("GET", "/v1/health"))[0] == 200
    assert await client.closed_by_daemon()  # then idle: closed


async def test_an_accept_failure_storm_is_one_log_line(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(connections, "WARN_INTERVAL", 0.2)
    loop = asyncio.get_running_loop()
    passed_on: list[dict[str, Any]] = []

    def previous(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        passed_on.append(context)
    loop.set_exception_handler(previous)
    failures = connections.AcceptFailureLog(loop)
    failures.install()
    try:
        with caplog.at_level(logging.INFO, logger="provisiond"):
            for _ in range(10000):  # what asyncio's accept loop reports under EMFILE
                loop.call_exception_handler({
                    "message": "socket.accept() out of system resource",
                    "exception": OSError(errno.EMFILE, "Too many open files"),
                    "socket": None})
            lines = [r.getMessage() for r in caplog.records]
            assert len(lines) == 1, lines[:3]
            assert lines[0].startswith("cannot accept connections: Too many open files "
                                       "(EMFILE)")
            await asyncio.sleep(0.5)  # the interval passes: one line with the count
            lines = [r.getMessage() for r in caplog.records]
            assert len(lines) == 2 and lines[1].startswith("9999 more failed accept() calls")
            await asyncio.sleep(0.5)  # a quiet interval: nothing more
            assert len(caplog.records) == 2

            other = {"message": "Task exception was never retrieved",
                     "exception": OSError(errno.EMFILE, "Too many open files")}
            loop.call_exception_handler(other)  # not an accept: the previous handler's
            assert passed_on == [other]
    finally:
        failures.uninstall()
        assert loop.get_exception_handler() is previous
        loop.set_exception_handler(None)
