"""Host supervision: one connection per libvirt host, each with its own reconnect loop.

A host that cannot be opened at start, or whose connection drops, is marked down and
reopened with capped exponential backoff and jitter; its events are registered again
and its inventory read afresh. Whoever waits for a host (a step, a rollback) waits on its
own host only; the others carry on.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Awaitable, Callable, Iterator

from daemon.errors import ProvisiondError, VirtError
from daemon.virt.connection import HostConnection

log = logging.getLogger("provisiond.hosts")

RECONNECT_FIRST_DELAY = 0.2
RECONNECT_MAX_DELAY = 30.0
STARTUP_GRACE = 10.0
"""How long the start waits for the hosts to open before it serves without the slow ones."""


class Hosts:
    """The libvirt hosts of the configuration, their state and their reconnects."""

    def __init__(self, connections: dict[str, HostConnection], *,
                 clock: Callable[[], float],
                 on_lost: Callable[[str, str], None],
                 on_back: Callable[[str, float], Awaitable[None]],
                 on_reconnect: Callable[[str], None]) -> None:
        self._connections = connections
        self._clock = clock
        self._on_lost = on_lost
        self._on_back = on_back
        self._on_reconnect = on_reconnect
        self._up: dict[str, asyncio.Event] = {}
        self._down_since: dict[str, float] = {}
        self._reconnects: dict[str, asyncio.Task[None]] = {}
        self._resyncs: set[asyncio.Task[None]] = set()

    def __getitem__(self, name: str) -> HostConnection:
        return self._connections[name]

    def __contains__(self, name: object) -> bool:
        return name in self._connections

    def __iter__(self) -> Iterator[str]:
        return iter(self._connections)

    def connection(self, name: str | None) -> HostConnection:
        """The connection of a configured host; VirtError for any other name."""
        if name is None or name not in self._connections:
            raise VirtError(f"host {name!r} is not configured")
        return self._connections[name]

    async def open_all(self, on_event: Callable[[object], None],
                       claims: Callable[[str], dict[tuple[str, str], str]],
                       grace: float = STARTUP_GRACE) -> None:
        """Open every host at once; wait at most ``grace`` seconds for them all.

        A host that cannot be opened is reconnected in the background. One still opening
        after ``grace`` is down until it opens: the daemon starts serving with the
        others, and the late host's VMs are looked at (as after a reconnect) once it is
        up.
        """
        opening: dict[str, asyncio.Task[None]] = {}
        for name, host in self._connections.items():
            self._up[name] = asyncio.Event()
            for (pool, volume), holder in claims(name).items():
                host.inventory.hold(pool, volume, holder)
            opening[name] = asyncio.create_task(host.open(on_event), name=f"open-{name}")
        await asyncio.wait(opening.values(), timeout=grace)
        for name, task in opening.items():
            if task.done():
                self._opened(name, task, late=False)
                continue
            log.warning("host %s has not answered within %g s of the start; serving "
                        "without it until it does", name, grace)
            self._down_since[name] = self._clock()
            self._reconnects[name] = task  # a loss reported meanwhile waits for this one
            self._on_lost(name, f"still connecting to {self._connections[name].uri}")
            task.add_done_callback(lambda t, name=name: self._opened(name, t, late=True))

    def _opened(self, name: str, task: asyncio.Task[None], *, late: bool) -> None:
        """A first open finished: the host is up, or it is reconnected in the background."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self._up[name].set()
            if late:
                gap = self._clock() - self._down_since.get(name, self._clock())
                log.info("host %s answered %.1f s after the start", name, gap)
                self._resync_later(name, gap)
            return
        if not isinstance(exc, ProvisiondError):
            log.error("opening host %s failed", name, exc_info=exc)
        # Not fatal: libvirtd may start after us. Requests wait for it (bounded).
        why = exc.message if isinstance(exc, ProvisiondError) else repr(exc)
        log.warning("host %s unreachable at start: %s", name, why)
        self._reconnects.pop(name, None)
        self.lost(name, why)

    def reachable(self, name: str) -> bool:
        """Whether there is a working connection to the host."""
        up = self._up.get(name)
        return up is not None and up.is_set()

    def reachable_connections(self, names: list[str]) -> dict[str, HostConnection]:
        """The connections of those of these hosts that are reachable now."""
        up = self._up
        return {name: self._connections[name] for name in names
                if name in up and up[name].is_set()}

    def lost(self, name: str, why: str) -> None:
        """Mark a host down and start reconnecting (once)."""
        task = self._reconnects.get(name)
        if task is not None and not task.done():
            return
        self._up[name].clear()
        self._down_since[name] = self._clock()
        self._on_lost(name, why)
        self._reconnects[name] = asyncio.create_task(self._reconnect(name),
                                                     name=f"reconnect-{name}")

    async def wait_up(self, name: str, timeout: float | None) -> bool:
        """Wait until the host is reachable; False after ``timeout`` seconds."""
        if name not in self._up:
            return False
        try:
            await asyncio.wait_for(self._up[name].wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    async def _reconnect(self, name: str) -> None:
        host = self._connections[name]
        attempt = 0
        while True:
            delay = min(RECONNECT_MAX_DELAY, RECONNECT_FIRST_DELAY * 2 ** attempt)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            try:
                await host.reopen()
                break
            except ProvisiondError as exc:
                attempt += 1
                log.warning("reconnect to %s failed (attempt %d): %s", name, attempt,
                            exc.message)
        gap = self._clock() - self._down_since.get(name, self._clock())
        log.info("reconnected to %s after %.1f s", name, gap)
        self._on_reconnect(name)
        self._up[name].set()
        self._resync_later(name, gap)

    def _resync_later(self, name: str, gap: float) -> None:
        # Its own task: the reconnect is over, so a loss during the resync starts another.
        task = asyncio.create_task(self._on_back(name, gap), name=f"resync-{name}")
        self._resyncs.add(task)
        task.add_done_callback(self._resyncs.discard)

    async def close_all(self) -> None:
        """Stop reconnecting and close every connection."""
        for task in [*self._reconnects.values(), *self._resyncs]:
            task.cancel()
        # At once: each may wait a little for calls still running on it.
        await asyncio.gather(*(host.close() for host in self._connections.values()))
