"""WebSockets for a VM's serial console and graphical display, on the Unix socket.

``GET /v1/requests/{id}/console[?force=true]`` and ``GET /v1/requests/{id}/display``
upgrade to a WebSocket (RFC 6455) that carries raw bytes both ways in binary messages
(a text message from the client is sent as its UTF-8 bytes): the console's characters,
or the RFB (VNC) protocol as noVNC or ``provctl display`` speak it. Every refusal (404,
409 not running or in use, 501 the host cannot) comes before the upgrade, as the API's
JSON error. The daemon pings every ``HEARTBEAT`` seconds: a client that stops answering
is dropped and its console freed.

The daemon closes the WebSocket with one of ``CLOSE_CODES`` and a reason in words.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable

from aiohttp import WSMsgType, web

from daemon.api.caller import SERVICE, peer_identity, refuse_unknown_query
from daemon.errors import InvalidInput, ProvisiondError
from daemon.service.sessions import Session

log = logging.getLogger("provisiond.api")

HEARTBEAT = 30.0
"""Seconds between the daemon's pings; a client silent for half of it after one is gone."""
WATCH_INTERVAL = 1.0
"""Seconds between two looks at whether the client is idle or gone."""
MAX_MESSAGE = 1024 * 1024
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_ERROR = 1011
CLOSE_TAKEN_OVER = 4001
CLOSE_IDLE = 4002
CLOSE_CODES = {
    CLOSE_NORMAL: "the console or display closed (the VM stopped), or the client left",
    CLOSE_GOING_AWAY: "provisiond is stopping",
    CLOSE_ERROR: "libvirt failed while relaying",
    CLOSE_TAKEN_OVER: "another session took the console over (force)",
    CLOSE_IDLE: "the client sent nothing for daemon.session_idle_timeout seconds",
}
"""The WebSocket close codes the daemon sends, and what each means."""

Ending = tuple[int, str]


def _websocket(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT, max_msg_size=MAX_MESSAGE)
    if not ws.can_prepare(request).ok:
        raise InvalidInput("this endpoint speaks WebSocket: send Connection: Upgrade and "
                           "Upgrade: websocket (e.g. provctl console, provctl display)")
    return ws


def _force(request: web.Request) -> bool:
    refuse_unknown_query(request, "force")
    values = request.query.getall("force", [])
    if values not in ([], ["true"], ["false"]):
        raise InvalidInput("force must be given once, as true or false", field="force")
    return values == ["true"]


async def console(request: web.Request) -> web.StreamResponse:
    """GET /v1/requests/{id}/console[?force=true]: the VM's serial console."""
    force = _force(request)
    ws = _websocket(request)
    service = request.app[SERVICE]
    session = await service.sessions.open_console(peer_identity(request),
                                                  request.match_info["id"], force)
    return await _serve(request, ws, session)


async def display(request: web.Request) -> web.StreamResponse:
    """GET /v1/requests/{id}/display: the VM's graphical display (RFB)."""
    refuse_unknown_query(request)
    ws = _websocket(request)
    service = request.app[SERVICE]
    session = await service.sessions.open_display(peer_identity(request),
                                                  request.match_info["id"])
    return await _serve(request, ws, session)


async def _serve(request: web.Request, ws: web.WebSocketResponse,
                 session: Session) -> web.WebSocketResponse:
    service = request.app[SERVICE]
    code, why = CLOSE_ERROR, "internal error"
    try:
        await ws.prepare(request)
        code, why = await _bridge(request, ws, session,
                                  service.config.daemon.session_idle_timeout)
    except Exception:
        log.exception("%s of %s failed", session.kind, session.record.id)
    finally:
        # Let go of the console (and note why) before telling the client: whoever sees
        # the close may open it again, or read the log, at once.
        try:
            await service.sessions.close(session, why)
        finally:
            try:
                await ws.close(code=code, message=why.encode()[:120])
            except Exception:  # the client is gone: nothing to tell it
                pass
    return ws


async def _bridge(request: web.Request, ws: web.WebSocketResponse, session: Session,
                  idle: float) -> Ending:
    """Relay bytes both ways until one side ends; how the WebSocket should close."""
    loop = asyncio.get_running_loop()
    last_sent = loop.time()
    """When the client last sent data (its pongs do not count: they come by themselves)."""

    async def from_guest() -> Ending:
        while True:
            data = await session.read()
            if not data:
                return CLOSE_NORMAL, f"the {session.kind} closed (the VM stopped?)"
            try:
                await ws.send_bytes(data)
            except ConnectionError as exc:
                return CLOSE_NORMAL, f"the client left ({type(exc).__name__} on sending)"

    async def from_client() -> Ending:
        nonlocal last_sent
        while True:
            message = await ws.receive()
            if message.type == WSMsgType.BINARY:
                data = message.data
            elif message.type == WSMsgType.TEXT:
                data = message.data.encode()
            elif message.type == WSMsgType.CLOSE:
                return CLOSE_NORMAL, "the client left"
            else:  # CLOSING, CLOSED, ERROR: the connection broke or stopped answering
                return CLOSE_NORMAL, f"the client left ({message.type.name.lower()}" + (
                    f": {message.data}" if message.data else "") + ")"
            last_sent = loop.time()
            try:
                await session.write(data)
            except ProvisiondError as exc:
                return CLOSE_ERROR, exc.message
            except OSError as exc:  # the display's server closed its end
                return CLOSE_NORMAL, f"the {session.kind} closed ({exc.strerror or exc})"

    async def watch() -> Ending:
        # ws.receive's own timeout starts again at every pong, and a write the guest does
        # not take (a paste into a console nobody reads) holds from_client: the client's
        # silence and its going away are watched here, apart from both.
        while True:
            left = last_sent + idle - loop.time()
            if left <= 0:
                return CLOSE_IDLE, f"idle for {idle:g} s"
            await asyncio.sleep(min(left, WATCH_INTERVAL))
            transport = request.transport
            if ws.closed or transport is None or transport.is_closing():
                return CLOSE_NORMAL, "the client left (its connection closed)"

    async def ended_by_daemon() -> Ending:
        await session.ending.wait()
        why = session.ended_by or "ended"
        return (CLOSE_TAKEN_OVER if why.startswith("taken over") else CLOSE_GOING_AWAY), why

    sides: list[Callable[[], Awaitable[Ending]]] = [from_guest, from_client, watch,
                                                    ended_by_daemon]
    tasks = [asyncio.ensure_future(side()) for side in sides]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        return next(iter(done)).result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
