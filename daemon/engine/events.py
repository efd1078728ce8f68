"""libvirt's events, routed: callbacks enqueue, one consumer task hands each event on.

A callback only puts the event in the inbox (it runs on the loop's thread and must not
block). The consumer then, per event: counts it; marks the host down on a closed
connection; keeps the host's inventory current; wakes the step waiting for it (a domain's
DEFINED, say); and tells every workflow's listener, which records it in the logs of the
records it concerns.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from daemon.errors import HostUnreachable, InvalidState, ProvisiondError
from daemon.process.metrics import Metrics
from daemon.virt.connection import ConnectionClosed, DomainEvent, PoolEvent

from daemon.engine.hosts import Hosts

log = logging.getLogger("provisiond.events")

WaiterKey = tuple[str, str, str]
"""(host, domain UUID, event name)."""


class EventRouter:
    """The inbox of libvirt events and the steps waiting for one."""

    def __init__(self, hosts: Hosts, metrics: Metrics, clock: Callable[[], float]) -> None:
        self._hosts = hosts
        self._metrics = metrics
        self._clock = clock
        self._inbox: asyncio.Queue[object] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._waiters: dict[WaiterKey, tuple[str, asyncio.Future[DomainEvent]]] = {}
        self._listeners: list[Callable[[object, str | None], None]] = []
        self._inventory_updates: set[asyncio.Task[None]] = set()

    def listen(self, listener: Callable[[object, str | None], None]) -> None:
        """Call ``listener(event, awaited_by)`` for every event: ``awaited_by`` is the
        record whose step this event was awaited by (its own event), else None."""
        self._listeners.append(listener)

    def start(self) -> None:
        """Start consuming (before any host opens: its first events must have a home)."""
        self._inbox = asyncio.Queue()
        self._consumer = asyncio.create_task(self._consume(), name="libvirt-events")

    async def stop(self, timeout: float) -> None:
        """Stop consuming."""
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.wait([self._consumer], timeout=timeout)

    def enqueue(self, event: object) -> None:
        """libvirt's callbacks land here: enqueue and return at once."""
        if self._inbox is not None:
            self._inbox.put_nowait(event)

    # -- waiting for a domain's event

    def expect(self, host: str, uuid: str, event: str,
               record_id: str) -> asyncio.Future[DomainEvent]:
        """A future resolved by the domain's next ``event`` (register before acting)."""
        held = self._waiters.get((host, uuid, event))
        if held is not None and not held[1].done():
            raise InvalidState(f"{held[0]} already waits for {event} of domain {uuid}")
        waiter: asyncio.Future[DomainEvent] = asyncio.get_running_loop().create_future()
        self._waiters[(host, uuid, event)] = (record_id, waiter)
        return waiter

    def forget(self, host: str, uuid: str, event: str) -> None:
        """Drop a waiter (the step is done with it, however it ended)."""
        self._waiters.pop((host, uuid, event), None)

    def interrupt(self, record_id: str, error: BaseException) -> None:
        """Raise ``error`` into every wait of this record (a cancel)."""
        for held_by, waiter in list(self._waiters.values()):
            if held_by == record_id and not waiter.done():
                waiter.set_exception(error)

    async def resync(self, host_name: str) -> None:
        """After a reconnect: events of the gap are lost, so look instead.

        A domain that is there now was defined while we were away; one that is not
        fails its waiter as if the host were still unreachable (the step waits again).
        """
        host = self._hosts[host_name]
        for (name, uuid, event), (_record, waiter) in list(self._waiters.items()):
            if name != host_name or waiter.done() or event != "DEFINED":
                continue
            try:
                found = await host.find_domain(uuid)
            except ProvisiondError as exc:
                waiter.set_exception(HostUnreachable(exc.message))
                continue
            if waiter.done():
                continue
            if found is not None:
                waiter.set_result(DomainEvent(name, uuid, found.name, "DEFINED", -1,
                                              self._clock()))
            else:
                waiter.set_exception(HostUnreachable(
                    f"connection to {name} lost while defining; the domain is not there"))

    # -- consuming

    async def _consume(self) -> None:
        assert self._inbox is not None
        while True:
            event = await self._inbox.get()
            try:
                self._handle(event)
            except Exception:
                log.exception("cannot handle libvirt event %r", event)

    def _handle(self, event: object) -> None:
        host = getattr(event, "host", "?")
        self._metrics.events.labels(host, type(event).__name__,
                                    getattr(event, "event", "CLOSED")).inc()
        if isinstance(event, ConnectionClosed):
            log.warning("libvirt connection to %s closed (reason %d)", host, event.reason)
            if event.host in self._hosts:
                self._hosts.lost(event.host,
                                 f"libvirt closed the connection (reason {event.reason})")
            return
        if not isinstance(event, (PoolEvent, DomainEvent)) or event.host not in self._hosts:
            return
        self._update_inventory(event)
        waiting = None
        if isinstance(event, DomainEvent):
            # Only the event a step awaits is that step's: another one of the same
            # domain meanwhile (the guest dying right after its start) is a listener's.
            held = self._waiters.get((event.host, event.uuid, event.event))
            if held is not None and not held[1].done():
                held[1].set_result(event)
                waiting = held[0]
        for listener in self._listeners:
            listener(event, waiting)

    def _update_inventory(self, event: PoolEvent | DomainEvent) -> None:
        host = self._hosts[event.host]
        update = (host.note_pool_event(event.pool, event.event) if isinstance(event, PoolEvent)
                  else host.note_domain_event(event.uuid, event.event, event.detail))

        async def run() -> None:
            try:
                await update
            except ProvisiondError as exc:  # a reconnect reloads the inventory anyway
                log.warning("inventory of %s not updated after %s: %s", event.host,
                            event.event, exc.message)

        task = asyncio.create_task(run())
        self._inventory_updates.add(task)
        task.add_done_callback(self._inventory_updates.discard)
