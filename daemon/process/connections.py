"""The API socket's connections: timeouts, a cap per uid, and quiet accept failures.

Every connection is bounded in time unless a request is in:

- ``HEADER_TIMEOUT`` (10 s): from a connection's opening, or from the first byte of a
  next request on a kept-alive connection, until that request's line and headers are all
  in. A client that connects and sends nothing, or half a request line, is closed then.
- ``IDLE_TIMEOUT`` (60 s): a kept-alive connection idle between an answer and its next
  request (aiohttp's ``keepalive_timeout``).
- Once a request is in, neither applies: ``GET /v1/requests/{id}?wait=300`` and the
  console and display WebSockets last as long as they need. A body has
  ``daemon.body_timeout`` (enforced where it is read, ``api.routes.read_json``).

Each uid holds at most ``daemon.max_connections_per_user`` open connections (read at each
accept, so a reload applies to the next one); one past it is closed as soon as it is
accepted, before anything is read from it, with one warning per uid per ``WARN_INTERVAL``.
The listen queue is deep (``LISTEN_BACKLOG``) and accepted in batches (``ACCEPT_BATCH``):
one user's reconnect loop neither fills the queue nor the descriptor table.

``AcceptFailureLog`` turns asyncio's traceback per failed ``accept()`` (EMFILE when the
descriptors run out: one per attempt, many per second) into one line per
``WARN_INTERVAL``; ``check_descriptor_limit`` raises a low descriptor limit at start-up,
or says that it is low.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import pwd
import resource
import socket
import struct
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from daemon.api.routes import ApiRunner

log = logging.getLogger("provisiond")

HEADER_TIMEOUT = 10.0
"""Seconds for a request's line and headers, from the connection's opening or its first
byte; read each time the timer starts (tests lower it)."""
IDLE_TIMEOUT = 60.0
"""Seconds a kept-alive connection may wait for its next request; read at start-up."""
WARN_INTERVAL = 60.0
"""At most one line per uid over its cap, and one about accept failures, per interval."""
LISTEN_BACKLOG = 4096
"""Connections the kernel queues until they are accepted: systemd's default for a socket
unit (SOMAXCONN; the kernel caps it at net.core.somaxconn). With aiohttp's 128, one user's
reconnect loop kept it full, and everyone else's connect(2) failed at once (EAGAIN)."""
ACCEPT_BATCH = 128
"""The most connections accepted in one pass of the loop (asyncio's ``backlog``): each
holds a descriptor until it is admitted or closed, so a burst takes at most this many."""
NOFILE_WANTED = 4096
"""Below this descriptor limit, many connections can exhaust it: raised, or warned of."""
ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ProtocolFactory = Callable[[], asyncio.Protocol]


def peer_uid(transport: asyncio.BaseTransport) -> int | None:
    """The uid of a Unix socket connection's peer (``SO_PEERCRED``), else None."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family != socket.AF_UNIX:
        return None
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    return int(struct.unpack("3i", creds)[1])


def user_name(uid: int | None) -> str:
    """A uid's user name for a log line ('?' when unknown)."""
    if uid is None:
        return "?"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "?"


class GuardedConnection(asyncio.Protocol):
    """One accepted connection: admitted under its uid's cap, its headers timed.

    It stands between the transport and aiohttp's protocol, which is only made once the
    connection is admitted: a refused connection costs aiohttp nothing.
    """

    def __init__(self, guard: ConnectionGuard, make_inner: ProtocolFactory) -> None:
        self._guard = guard
        self._make_inner = make_inner
        self._inner: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._answered = False  # a request was handled: the next byte starts the next one
        self._admitted = False
        self.uid: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Admit the connection under its uid's cap, or close it at once."""
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.uid = peer_uid(transport)
        self._admitted = self._guard.admit(self)
        if not self._admitted:
            transport.abort()  # nothing to flush; the descriptor is freed at once
            return
        self._inner = self._make_inner()
        self._start_header_timer()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        """Pass the bytes on; the first byte after an answer starts the header timer."""
        if self._inner is None:
            return
        if self._answered:
            self._answered = False
            self._start_header_timer()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        """Pass the end of the client's stream on."""
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        """Release the connection's place under its uid's cap."""
        self._stop_header_timer()
        if self._admitted:
            self._guard.release(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        """Pass flow control on."""
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        """Pass flow control on."""
        if self._inner is not None:
            self._inner.resume_writing()

    def request_started(self) -> None:
        """A request's headers are in: no header timeout until it is answered."""
        self._answered = False
        self._stop_header_timer()

    def request_finished(self) -> None:
        """The request was handled: idle now, until the next one's first byte."""
        self._answered = True

    def _start_header_timer(self) -> None:
        if self._timer is None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(HEADER_TIMEOUT, self._headers_late)

    def _stop_header_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _headers_late(self) -> None:
        self._timer = None
        if self.transport is not None and not self.transport.is_closing():
            log.debug("uid %s: no complete request in %g s: connection closed", self.uid,
                      HEADER_TIMEOUT)
            self.transport.abort()


class ConnectionGuard:
    """The open connections per uid, the cap on them, and the header timeout."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self._open: dict[int | None, int] = {}
        self._by_transport: dict[asyncio.BaseTransport, GuardedConnection] = {}
        self._warned: dict[int | None, tuple[float, int]] = {}  # uid -> (at, closed since)

    def wrap(self, inner: ProtocolFactory) -> ProtocolFactory:
        """A protocol factory for the listening socket, around aiohttp's."""
        return lambda: GuardedConnection(self, inner)

    def admit(self, conn: GuardedConnection) -> bool:
        """Count ``conn`` under its uid, or refuse it (False) when the uid is at its cap."""
        held = self._open.get(conn.uid, 0)
        if held >= self._limit():
            self._refused(conn.uid, held)
            return False
        self._open[conn.uid] = held + 1
        if conn.transport is not None:
            self._by_transport[conn.transport] = conn
        return True

    def release(self, conn: GuardedConnection) -> None:
        """``conn`` closed: one connection fewer for its uid."""
        if conn.transport is not None:
            self._by_transport.pop(conn.transport, None)
        left = self._open.get(conn.uid, 0) - 1
        if left > 0:
            self._open[conn.uid] = left
        else:
            self._open.pop(conn.uid, None)

    def middleware(self) -> Any:
        """An aiohttp middleware telling each connection when its request is in and done."""

        @web.middleware
        async def connection_state(request: web.Request, handler: Handler
                                   ) -> web.StreamResponse:
            conn = self._by_transport.get(request.transport)  # type: ignore[arg-type]
            if conn is not None:
                conn.request_started()
            try:
                return await handler(request)
            finally:
                if conn is not None:
                    conn.request_finished()

        return connection_state

    def _refused(self, uid: int | None, held: int) -> None:
        now = time.monotonic()
        at, closed = self._warned.get(uid, (None, 0))
        if at is not None and now - at < WARN_INTERVAL:
            self._warned[uid] = (at, closed + 1)
            return
        self._warned = {u: w for u, w in self._warned.items() if now - w[0] < WARN_INTERVAL}
        self._warned[uid] = (now, 0)
        log.warning("uid %s (%s) holds %d connections: closing new ones "
                    "(daemon.max_connections_per_user)%s", uid, user_name(uid), held,
                    f"; {closed} more closed since the last warning" if closed else "")


class GuardedRunner(ApiRunner):
    """The API's runner (aiohttp's own errors in JSON), its sites accepting through a
    ``ConnectionGuard``.

    ``UnixSite`` and ``SockSite`` use ``runner.server`` as the listening socket's protocol
    factory; here it is the guard's, around the API's server.
    """

    def __init__(self, app: web.Application, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.guard = guard

    @property
    def server(self) -> Any:
        """The protocol factory for a site: aiohttp's server behind the guard."""
        inner = super().server
        return None if inner is None else self.guard.wrap(inner)


async def serve_socket(runner: web.BaseRunner, sock: socket.socket) -> web.SockSite:
    """Serve ``sock`` (bound, listening or not) through ``runner``: a deep listen queue,
    accepted in small batches."""
    site = web.SockSite(runner, sock, backlog=ACCEPT_BATCH)
    await site.start()
    # asyncio uses one number for listen() and for the accepts per pass: the queue's depth
    # is set again after it (for an inherited socket, in place of the unit's Backlog=).
    sock.listen(LISTEN_BACKLOG)
    return site


class AcceptFailureLog:
    """The loop's exception handler: a failed ``accept()`` (out of descriptors or memory)
    as one line per ``WARN_INTERVAL``, with the count of the others; anything else goes to
    the handler that was there before (asyncio's default)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._previous = loop.get_exception_handler()
        self._summary: asyncio.TimerHandle | None = None
        self._since = 0  # failures since the last line

    def install(self) -> None:
        """Become the loop's exception handler."""
        self._loop.set_exception_handler(self)

    def uninstall(self) -> None:
        """Give the loop its previous exception handler back."""
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        self._loop.set_exception_handler(self._previous)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Count an accept failure (one line now and then); pass anything else on."""
        exc = context.get("exception")
        if not (isinstance(exc, OSError) and exc.errno in ACCEPT_ERRNOS
                and "accept" in str(context.get("message", ""))):
            if self._previous is not None:
                self._previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        if self._summary is not None:
            self._since += 1
            return
        log.error("cannot accept connections: %s (%s); asyncio retries every second, and "
                  "this is logged once per %g s at most. Descriptor limit: %s",
                  exc.strerror, errno.errorcode.get(exc.errno or 0, exc.errno),
                  WARN_INTERVAL, descriptor_limit_text())
        self._summary = loop.call_later(WARN_INTERVAL, self._summarize)

    def _summarize(self) -> None:
        if not self._since:
            self._summary = None  # quiet for a whole interval: the next failure is news
            return
        log.error("%d more failed accept() calls in the last %g s (descriptor limit: %s)",
                  self._since, WARN_INTERVAL, descriptor_limit_text())
        self._since = 0
        self._summary = self._loop.call_later(WARN_INTERVAL, self._summarize)


def descriptor_limit_text() -> str:
    """The soft and hard ``RLIMIT_NOFILE``, in words."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)

    def word(n: int) -> str:
        return "unlimited" if n == resource.RLIM_INFINITY else str(n)
    return f"{word(soft)} (hard {word(hard)})"


def check_descriptor_limit(wanted: int = NOFILE_WANTED) -> int:
    """At start-up: raise a soft descriptor limit below ``wanted`` to the hard limit, and
    warn if it stays below; return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return soft
    # What servers commonly do, and systemd advises: its default soft limit (1024) is for
    # programs that use select(); provisiond's loop uses epoll, and the hard limit is
    # the administrator's bound.
    target = hard if hard != resource.RLIM_INFINITY else max(wanted, 65536)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:  # a seccomp filter, or above fs.nr_open
            log.info("cannot raise the descriptor limit from %d to %d: %s", soft, target, exc)
        else:
            log.info("descriptor limit raised from %d to %d (the hard limit)", soft, target)
            soft = target
    if soft < wanted:
        log.warning("the descriptor limit is low: %s. Each connection takes one, so a few "
                    "users' connections can exhaust it and stop all service; raise it to "
                    "%d or more (LimitNOFILE= in the unit, ulimit -n)",
                    descriptor_limit_text(), wanted)
    return soft
