"""libvirt's event loop integration and the events it delivers, as plain data.

``ensure_event_loop_registered`` binds libvirtaio to the running asyncio loop (once per
process, before any connection opens). The callbacks of ``HostConnection`` turn libvirt's
events into the frozen dataclasses below and only enqueue them.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any, Callable

import libvirt
import libvirtaio

LIFECYCLE_EVENTS = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "DEFINED",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "UNDEFINED",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "STARTED",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "SUSPENDED",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "RESUMED",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "STOPPED",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "SHUTDOWN",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "PMSUSPENDED",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "CRASHED",
}


class ThreadSafeAsyncIOImpl(libvirtaio.virEventAsyncIOImpl):
    """libvirtaio's event implementation, made safe for libvirt calls from worker threads.

    libvirt calls the add/update/remove hooks from whichever thread makes a libvirt call
    (a remote connection re-arms its socket watch on every RPC; a queued event arms a
    timer). Stock libvirtaio then touches the asyncio loop from that thread, which asyncio
    does not allow. Here such calls are queued in order and applied on the loop thread.
    The calling thread never waits for the loop: it may hold a libvirt lock that the loop
    thread needs to dispatch an event, and waiting would deadlock.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop=loop)
        self._loop_thread = threading.get_ident()
        self._lock = threading.Lock()
        self._ops: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._wake_pending = False

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            self._apply_queued()
            fn(*args)
            return
        with self._lock:
            self._ops.append((fn, args))
            wake, self._wake_pending = not self._wake_pending, True
        if wake:  # one wake-up of the loop for all the hooks queued until it runs
            self.loop.call_soon_threadsafe(self._apply_queued)

    def _apply_queued(self) -> None:
        with self._lock:
            ops, self._ops, self._wake_pending = self._ops, [], False
        for fn, args in ops:
            try:
                fn(*args)
            except Exception:  # one bad hook must not stop the others
                self.log.exception("libvirt event hook %s failed", fn.__name__)

    def _add_handle(self, fd: int, event: int, cb: Any, opaque: Any) -> int:
        callback = libvirtaio.FDCallback(self, cb, opaque, descriptor=None, event=event)
        self._on_loop(self._install_handle, fd, callback)
        return callback.iden

    def _install_handle(self, fd: int, callback: Any) -> None:
        callback.descriptor = self.descriptors[fd]
        self.callbacks[callback.iden] = callback
        callback.descriptor.add_handle(callback)
        self._pending_inc()

    def _update_handle(self, watch: int, event: int) -> None:
        self._on_loop(super()._update_handle, watch, event)

    def _remove_handle(self, watch: int) -> int:
        self._on_loop(super()._remove_handle, watch)
        return 0

    def _add_timeout(self, timeout: int, cb: Any, opaque: Any) -> int:
        callback = libvirtaio.TimeoutCallback(self, cb, opaque)
        self._on_loop(self._install_timeout, timeout, callback)
        return callback.iden

    def _install_timeout(self, timeout: int, callback: Any) -> None:
        self.callbacks[callback.iden] = callback
        callback.update(timeout=timeout)
        self._pending_inc()

    def _update_timeout(self, timer: int, timeout: int) -> None:
        self._on_loop(super()._update_timeout, timer, timeout)

    def _remove_timeout(self, timer: int) -> int:
        self._on_loop(super()._remove_timeout, timer)
        return 0


_event_impl: ThreadSafeAsyncIOImpl | None = None


def ensure_event_loop_registered() -> ThreadSafeAsyncIOImpl:
    """Register the libvirtaio event implementation on the running loop, once per process.

    Must run before any connection opens. libvirt accepts one event implementation per
    process, so every libvirt user in the process must run on the loop that registered.
    """
    global _event_impl
    loop = asyncio.get_running_loop()
    if _event_impl is None:
        if libvirtaio.getCurrentImpl() is not None:
            raise RuntimeError("a libvirt event implementation is already registered")
        _event_impl = ThreadSafeAsyncIOImpl(loop).register()
    elif _event_impl.loop is not loop:
        raise RuntimeError("libvirt events are bound to another asyncio loop; "
                           "run every libvirt user of the process on one loop")
    return _event_impl


async def drain_events(timeout: float = 5.0) -> None:
    """Wait (bounded) until libvirt has released every handle and timer; call at exit.

    libvirtaio's drain() waits forever while libvirt objects are still referenced.
    """
    if _event_impl is not None:
        try:
            await asyncio.wait_for(_event_impl.drain(), timeout)
        except asyncio.TimeoutError:
            pass


@dataclass(frozen=True)
class DomainEvent:
    """A domain lifecycle event from a host, as the callback saw it."""

    host: str
    uuid: str
    name: str
    event: str
    detail: int
    at: float


POOL_EVENTS = {
    libvirt.VIR_STORAGE_POOL_EVENT_DEFINED: "DEFINED",
    libvirt.VIR_STORAGE_POOL_EVENT_UNDEFINED: "UNDEFINED",
    libvirt.VIR_STORAGE_POOL_EVENT_STARTED: "STARTED",
    libvirt.VIR_STORAGE_POOL_EVENT_STOPPED: "STOPPED",
    libvirt.VIR_STORAGE_POOL_EVENT_CREATED: "CREATED",
    libvirt.VIR_STORAGE_POOL_EVENT_DELETED: "DELETED",
}


@dataclass(frozen=True)
class PoolEvent:
    """A storage pool lifecycle event from a host."""

    host: str
    pool: str
    event: str
    at: float


@dataclass(frozen=True)
class ConnectionClosed:
    """The connection to a host closed (libvirt's close callback)."""

    host: str
    reason: int
    at: float
