"""The libvirt adapter: ``daemon.virt`` is the only package that imports ``libvirt``.

One ``HostConnection`` per libvirt host. Blocking libvirt calls run in a small thread pool
of their own, bounded in time, so the event loop never blocks. libvirt's events arrive
through ``libvirtaio`` on the loop thread; the callbacks only put an event into the
engine's inbox. libvirt errors become ``daemon.errors`` exceptions here and nowhere else.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import time
from contextlib import contextmanager
from typing import Any, Awaitable, Callable, Iterator, Sequence, TypeVar

import libvirt

from daemon.errors import HostUnreachable, NotSupported, VirtError, VirtTimeout
from daemon.virt import domain_xml
from daemon.virt.calls import (
    DomainInfo,
    Handles,
    _domain_power,
    _interface_addresses,
    _open_console,
    _open_graphics,
    _remove_direct_boot,
    _power_states,
    _wipe_volume,
    TaggedDomain,
    _clone_volume,
    _create_volume,
    _upload_volume,
    _define_domain,
    _domain_named,
    _delete_volume,
    _disk_uses,
    _domain_entries,
    _find_domain,
    _find_volume,
    _list_everything,
    _pool_entry,
    _quietly,
    _read_inventory,
    _read_pools,
    _tagged_domains,
    _undefine_domain,
)
from daemon.virt.events import (
    LIFECYCLE_EVENTS,
    POOL_EVENTS,
    ConnectionClosed,
    DomainEvent,
    PoolEvent,
    drain_events,
    ensure_event_loop_registered,
)
from daemon.virt.consoles import ConsoleStream
from daemon.virt.offloop import discard_late, in_own_thread
from daemon.virt.inventory import DiskUse, HostInventory, VolumeInfo
from daemon.virt.live_inventory import LiveInventory

T = TypeVar("T")
log = logging.getLogger("provisiond.virt")
WIPE_TIMEOUT = 24 * 3600.0
"""Seconds a volume's wipe may take (``wipe_volume``)."""
CLOSE_GRACE = 5.0
"""How long closing a connection waits for the libvirt calls still running on it."""
Opener = Callable[[str], "libvirt.virConnect"]


def open_connection(uri: str) -> "libvirt.virConnect":
    """Open a libvirt connection (the default ``Opener``; tests wrap or replace it)."""
    return libvirt.open(uri)

# libvirt prints every error to stderr unless told otherwise; we report them ourselves.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

# Not VIR_ERR_SYSTEM_ERROR by itself: a storage driver reports a failed unlink with it,
# and taking that for an outage would reconnect and retry without end. A dead connection
# shows in the error's domain (RPC, REMOTE) whatever its code.
_UNREACHABLE_CODES = {
    libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_RPC,
    libvirt.VIR_ERR_AUTH_FAILED, libvirt.VIR_ERR_AUTH_UNAVAILABLE,
}
# A call on a connection whose daemon went away fails in the RPC layer.
_UNREACHABLE_DOMAINS = {libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE}
_UNSUPPORTED_CODES = {libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_UNSUPPORTED}

@contextmanager
def map_libvirt_errors(action: str) -> Iterator[None]:
    """Turn ``libvirt.libvirtError`` into our hierarchy, naming the action that failed."""
    try:
        yield
    except libvirt.libvirtError as exc:
        code = exc.get_error_code()
        message = f"{action}: {exc.get_error_message() or exc}"
        if code in _UNREACHABLE_CODES or exc.get_error_domain() in _UNREACHABLE_DOMAINS:
            raise HostUnreachable(message, libvirt_code=code) from None
        if code in _UNSUPPORTED_CODES:
            raise NotSupported(message, libvirt_code=code) from None
        raise VirtError(message, libvirt_code=code) from None


def _close_subscribed(opened: tuple[Any, list[int], list[int]]) -> None:
    """Close a connection that was opened too late to be used."""
    conn, domain_ids, pool_ids = opened
    for cid in domain_ids:
        _quietly(conn.domainEventDeregisterAny, cid)
    for cid in pool_ids:
        _quietly(conn.storagePoolEventDeregisterAny, cid)
    _quietly(conn.unregisterCloseCallback)
    _quietly(conn.close)


class HostConnection:
    """A libvirt host: its connection, its events, and the calls provisiond makes on it."""

    def __init__(self, name: str, uri: str, *, opener: Opener = open_connection,
                 call_timeout: float = 120.0, workers: int = 4,
                 observe: Callable[[str, str, float, bool], None] | None = None) -> None:
        self.name = name
        self.observe = observe
        """Told (host, call, seconds, succeeded) after every libvirt call (for metrics)."""
        self.uri = uri
        self.opener = opener
        self.call_timeout = call_timeout
        self.workers = workers
        self._running: set[concurrent.futures.Future[Any]] = set()
        """The calls submitted to the worker threads and not finished (even if their
        caller gave up waiting)."""
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=f"libvirt-{name}")
        self._conn: Any = None
        self._opening = False
        """Whether an attempt to open is running on its thread (it may hang)."""
        self.inventory = LiveInventory(name)
        """The host's pools, volumes and disks in use, kept current (see live_inventory)."""
        self._callback_ids: list[int] = []
        self._pool_callback_ids: list[int] = []
        self._on_event: Callable[[object], None] | None = None
        self._caps: asyncio.Future[tuple[str, str]] | None = None
        self._capacity: asyncio.Future[tuple[int, int]] | None = None
        self._capacity_read: tuple[int, int] | None = None
        self._handles = Handles()
        """The open connection's pools, domains and volumes, each looked up once."""
        self.on_volume_change: Callable[[str, str, str, VolumeInfo | None], None] | None = None
        """Told (host, pool, name, the volume or None) after this host created or deleted a
        volume (so that hosts sharing the storage see it too)."""

    # -- connection

    @property
    def connected(self) -> bool:
        """Whether the connection is open and alive."""
        return self._conn is not None and bool(self._conn.isAlive())

    async def open(self, on_event: Callable[[object], None]) -> None:
        """Open the connection and subscribe to domain lifecycle events and closure.

        Opening and subscribing run on a thread of their own, bounded by ``call_timeout``:
        a host that is slow to answer (an SSH or TLS connection that hangs) holds up
        neither the event loop nor the other hosts. A connection that arrives after the
        timeout is closed.
        """
        ensure_event_loop_registered()
        self._on_event = on_event
        if self._opening:  # one attempt hanging at a time, not one more per reconnect
            raise HostUnreachable(f"cannot connect to {self.uri}: the previous attempt has "
                                  "not answered yet")
        self._opening = True

        def attempt() -> tuple[Any, list[int], list[int]]:
            try:
                return self._open_and_subscribe()
            finally:
                self._opening = False

        try:
            conn, domain_ids, pool_ids = await asyncio.wait_for(
                in_own_thread(attempt, _close_subscribed), self.call_timeout)
        except asyncio.TimeoutError:
            raise HostUnreachable(f"cannot connect to {self.uri}: no answer within "
                                  f"{self.call_timeout:g} s") from None
        except VirtError as exc:  # whatever the reason, a host we cannot open is unreachable
            raise HostUnreachable(exc.message, libvirt_code=exc.libvirt_code) from None
        self._conn = conn
        self._callback_ids.extend(domain_ids)
        self._pool_callback_ids.extend(pool_ids)
        try:
            # Events first, then the full read: a change racing the read is not lost.
            await self.load_inventory()
        except BaseException:
            await self.disconnect()
            raise

    def _open_and_subscribe(self) -> tuple[Any, list[int], list[int]]:
        """Open the connection and register the callbacks (blocking: runs off the loop)."""
        with map_libvirt_errors(f"cannot connect to {self.uri}"):
            conn = self.opener(self.uri)
        if conn is None:
            raise HostUnreachable(f"cannot connect to {self.uri}")
        try:
            with map_libvirt_errors(f"cannot subscribe to events of {self.uri}"):
                domain_ids = [conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle_callback, None)]
                pool_ids = [conn.storagePoolEventRegisterAny(
                    None, libvirt.VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE, self._pool_callback,
                    None), conn.storagePoolEventRegisterAny(
                    None, libvirt.VIR_STORAGE_POOL_EVENT_ID_REFRESH, self._refresh_callback,
                    None)]
                conn.registerCloseCallback(self._close_callback, None)
        except BaseException:
            _quietly(conn.close)
            raise
        return conn, domain_ids, pool_ids

    async def load_inventory(self) -> None:
        """Read every pool, volume and domain of the host into ``inventory``."""
        action = f"cannot read the inventory of {self.name}"
        journal = self.inventory.begin_read()
        try:
            pool_objects, domain_objects = await self._call(action, _list_everything,
                                                            self._conn)
            # Spread over the worker threads: libvirtd answers them in parallel.
            shares = [domain_objects[i::self.workers] for i in range(self.workers)]
            parts = await asyncio.gather(
                *(self._call(action, _pool_entry, pool) for pool in pool_objects),
                *(self._call(action, _domain_entries, share) for share in shares if share))
        except BaseException:
            self.inventory.apply_pools(journal, {})
            raise
        pools = dict(part for part in parts[:len(pool_objects)] if part is not None)
        domains: dict[str, str] = {}
        uses: list[DiskUse] = []
        for names, disks in parts[len(pool_objects):]:
            domains.update(names)
            uses.extend(disks)
        self.inventory.load(journal, HostInventory(self.name, pools, tuple(uses), time.time()),
                            domains)

    async def note_domain_event(self, uuid: str, event: str, detail: int) -> None:
        """Keep the inventory current after a domain event (someone else's, too)."""
        if event == "UNDEFINED":
            self._handles.domains.pop(uuid, None)
            self.inventory.remove_domain(uuid)
        elif event == "DEFINED" and (detail != libvirt.VIR_DOMAIN_EVENT_DEFINED_ADDED
                                     or not self.inventory.knows_domain(uuid)):
            found = await self.find_domain(uuid)
            if found is None:
                self.inventory.remove_domain(uuid)
            else:
                self.inventory.set_domain(uuid, _disk_uses(found.name, found.xml))

    async def note_pool_event(self, pool: str, event: str) -> None:
        """Keep the inventory current after a pool event (re-read that pool)."""
        self._handles.pools.pop(pool, None)  # the name may now stand for another pool
        if event in ("UNDEFINED", "DELETED"):
            volumes = self._handles.volumes
            for key in [key for key in volumes if key[0] == pool]:
                volumes.pop(key, None)
            self.inventory.apply_pools(self.inventory.begin_read(), {pool: None})
            return
        await self.refresh_pools([pool])

    async def refresh_pools(self, names: list[str]) -> None:
        """Re-read these pools (and their volumes) from libvirt into the inventory."""
        journal = self.inventory.begin_read()
        try:
            pools = await self._call(f"cannot read the pools of {self.name}", _read_pools,
                                     self._conn, names)
        except BaseException:
            pools = {}
            raise
        finally:
            # Own changes made while reading are replayed onto the (older) read.
            self.inventory.apply_pools(journal, pools)

    def _refresh_callback(self, _conn: Any, pool: Any, _opaque: Any) -> None:
        if self._on_event is not None:
            self._on_event(PoolEvent(self.name, pool.name(), "REFRESH", time.time()))

    async def reopen(self) -> None:
        """Drop the old connection (quietly) and open a new one, events registered again."""
        await self.disconnect()
        assert self._on_event is not None
        await self.open(self._on_event)

    def _pool_callback(self, _conn: Any, pool: Any, event: int, _detail: int,
                       _opaque: Any) -> None:
        # Runs on the loop thread: enqueue only.
        if self._on_event is not None:
            self._on_event(PoolEvent(self.name, pool.name(), POOL_EVENTS.get(event, str(event)),
                                     time.time()))

    def _lifecycle_callback(self, _conn: Any, dom: Any, event: int, detail: int,
                            _opaque: Any) -> None:
        # Runs on the loop thread: enqueue only.
        if self._on_event is not None:
            self._on_event(DomainEvent(self.name, dom.UUIDString(), dom.name(),
                                       LIFECYCLE_EVENTS.get(event, str(event)), detail,
                                       time.time()))

    def _close_callback(self, _conn: Any, reason: int, _opaque: Any) -> None:
        if self._on_event is not None:
            self._on_event(ConnectionClosed(self.name, reason, time.time()))

    async def disconnect(self) -> None:
        """Unsubscribe and close the connection, ignoring errors of a dead one."""
        conn, self._conn = self._conn, None
        self._handles = Handles()  # new ones: calls still running keep the old ones
        # The host may come back upgraded or resized.
        self._caps = self._capacity = self._capacity_read = None
        if conn is None:
            return
        for cid in self._callback_ids:
            _quietly(conn.domainEventDeregisterAny, cid)
        for cid in self._pool_callback_ids:
            _quietly(conn.storagePoolEventDeregisterAny, cid)
        self._callback_ids.clear()
        self._pool_callback_ids.clear()
        _quietly(conn.unregisterCloseCallback)
        # A call still running on a worker thread uses the connection: closing it under
        # that call frees what the call is using (a crash, seen once at SIGTERM). Wait a
        # little for those calls; a connection they still hold is left to them.
        running = [asyncio.wrap_future(call) for call in list(self._running)]
        if running:
            _done, pending = await asyncio.wait(running, timeout=CLOSE_GRACE)
            if pending:
                log.warning("host %s: %d libvirt calls still running after %g s; its old "
                            "connection is left open for them", self.name, len(pending),
                            CLOSE_GRACE)
                return
        _quietly(conn.close)

    async def close(self) -> None:
        """Close the connection and stop the host's worker threads."""
        self._on_event = None
        await self.disconnect()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _call(self, action: str, fn: Callable[..., T], *args: Any,
                    discard: Callable[[T], None] | None = None,
                    timeout: float | None = None) -> T:
        """Run a blocking libvirt call off the loop, bounded by ``timeout`` (default
        ``call_timeout``). A result that comes after the caller gave up (timed out,
        cancelled) goes to ``discard``."""
        limit = self.call_timeout if timeout is None else timeout
        if self._conn is None:
            raise HostUnreachable(f"{action}: not connected to {self.uri}")

        def run() -> T:
            with map_libvirt_errors(action):
                return fn(*args)

        started = time.perf_counter()
        ok = False
        call = self._executor.submit(run)
        self._running.add(call)
        call.add_done_callback(self._running.discard)
        try:
            # asyncio.timeout, not wait_for: wait_for's inner callback costs the answer
            # one more pass of the loop, on every libvirt call.
            async with asyncio.timeout(limit):
                result = await asyncio.wrap_future(call)
            ok = True
            return result
        except TimeoutError:
            if discard is not None:
                discard_late(call, discard)
            raise VirtTimeout(f"{action}: libvirt did not answer within {limit:g} s"
                              ) from None
        except asyncio.CancelledError:
            if discard is not None:
                discard_late(call, discard)
            raise
        finally:
            if self.observe is not None:
                self.observe(self.name, fn.__name__.lstrip("_"), time.perf_counter() - started,
                             ok)

    # -- queries

    async def capabilities(self) -> tuple[str, str]:
        """(domain type, arch) for new domains on this host; read once per connection."""
        if self._caps is None:
            self._caps = self._once(self._read_capabilities())
        return await asyncio.shield(self._caps)

    async def _read_capabilities(self) -> tuple[str, str]:
        caps_xml = await self._call("cannot read host capabilities",
                                    self._conn.getCapabilities)
        return domain_xml.capabilities_summary(caps_xml)

    async def node_capacity(self) -> tuple[int, int]:
        """(cpus, memory in KiB) of the host, from libvirt's node info; read once per
        connection (requests asking at once share the one call)."""
        if self._capacity is None:
            self._capacity = self._once(self._read_capacity())
        return await asyncio.shield(self._capacity)

    def known_capacity(self) -> tuple[int, int] | None:
        """``node_capacity`` if it has been read on this connection, without waiting."""
        return self._capacity_read

    async def _read_capacity(self) -> tuple[int, int]:
        info = await self._call(f"cannot read the node info of {self.name}",
                                self._conn.getInfo)
        capacity = int(info[2]), int(info[1]) * 1024  # memory is in MiB
        self._capacity_read = capacity
        return capacity

    def _once(self, read: Awaitable[T]) -> asyncio.Future[T]:
        """A read shared by every caller until the connection changes; a failed one is
        forgotten, so the next caller asks again."""
        task = asyncio.ensure_future(read)

        def forget_failure(done: asyncio.Future[T]) -> None:
            if done.cancelled() or done.exception() is not None:
                if self._caps is done:
                    self._caps = None
                if self._capacity is done:
                    self._capacity = None

        task.add_done_callback(forget_failure)
        return task

    async def read_inventory(self, pool_names: list[str]) -> HostInventory:
        """A fresh read of the named pools (and their volumes) and of all domains' disks."""
        conn = self._conn
        return await self._call(f"cannot read the inventory of {self.name}",
                                _read_inventory, conn, self.name, pool_names)

    async def find_volume(self, pool: str, name: str) -> VolumeInfo | None:
        """The volume ``name`` in ``pool``, or None if it does not exist."""
        return await self._call(f"cannot look up volume {pool}/{name}", _find_volume,
                                self._conn, pool, name)

    async def tagged_domains(self) -> list[TaggedDomain]:
        """Every domain on the host that carries provisiond's metadata."""
        return await self._call(f"cannot list the domains of {self.name}", _tagged_domains,
                                self._conn)

    async def remove_direct_boot(self, uuid: str) -> bool | None:
        """Redefine a domain to boot from its disk, not its direct kernel boot; False if
        it had none, None if it does not exist."""
        return await self._call(f"cannot redefine domain {uuid}", _remove_direct_boot,
                                self._conn, uuid)

    async def domain_named(self, name: str) -> bool:
        """Whether a domain of this name is defined on the host (whoever made it)."""
        return await self._call(f"cannot look up domain {name}", _domain_named, self._conn,
                                name)

    async def find_domain(self, uuid: str) -> DomainInfo | None:
        """The domain with this UUID, or None."""
        return await self._call(f"cannot look up domain {uuid}", _find_domain, self._conn, uuid)

    # -- actions

    async def create_volume(self, pool: str, xml: str) -> VolumeInfo:
        """Create a volume from XML in ``pool``."""
        vol = await self._call(f"cannot create a volume in pool {pool}", _create_volume,
                               self._conn, self._handles, pool, xml)
        self._volume_added(vol)
        return vol

    async def clone_volume(self, pool: str, xml: str, source_pool: str,
                           source_name: str) -> VolumeInfo:
        """Create a volume from XML in ``pool`` as a full copy of another volume."""
        vol = await self._call(f"cannot copy {source_pool}/{source_name} into pool {pool}",
                               _clone_volume, self._conn, self._handles, pool, xml,
                               source_pool, source_name)
        self._volume_added(vol)
        return vol

    async def upload_volume(self, pool: str, name: str, data: bytes) -> bool:
        """Write ``data`` into a volume; False if this host's driver cannot upload."""
        return await self._call(f"cannot upload into volume {pool}/{name}", _upload_volume,
                                self._conn, pool, name, data)

    async def delete_volume(self, pool: str, name: str) -> bool:
        """Delete a volume; False if it did not exist."""
        deleted = await self._call(f"cannot delete volume {pool}/{name}", _delete_volume,
                                   self._conn, self._handles, pool, name)
        self.inventory.remove_volume(pool, name)
        if self.on_volume_change is not None:
            self.on_volume_change(self.name, pool, name, None)
        return deleted

    def _volume_added(self, vol: VolumeInfo) -> None:
        self.inventory.add_volume(vol)
        if self.on_volume_change is not None:
            self.on_volume_change(self.name, vol.pool, vol.name, vol)

    async def define_domain(self, uuid: str, name: str, xml: str,
                            disks: Sequence[tuple[str | None, str | None, str | None]] |
                            None = None) -> None:
        """Define (not start) a domain from XML; ``uuid``, ``name`` and ``disks`` (as
        ``domain_xml.disks_of`` reads them; read from the XML when not given) are the XML's."""
        # In the inventory before its DEFINED event can arrive, so that the event needs
        # no look-up; taken out again if the define fails.
        self.inventory.set_domain(uuid, _disk_uses(name, xml) if disks is None else tuple(
            DiskUse(name, path, pool, volume) for path, pool, volume in disks))
        try:
            await self._call("cannot define the domain", _define_domain, self._conn,
                             self._handles, uuid, xml)
        except BaseException:
            self.inventory.remove_domain(uuid)
            raise

    async def undefine_domain(self, uuid: str, *, of_request: str | None = None) -> str | None:
        """Stop (if running) and undefine a domain, in one look-up; its name, or None if
        it did not exist (or, with ``of_request``, is not that request's: left alone)."""
        name = await self._call(f"cannot undefine domain {uuid}", _undefine_domain,
                                self._conn, self._handles, uuid, of_request)
        if name is not None or of_request is None:
            self.inventory.remove_domain(uuid)
        return name

    async def power(self, uuid: str, action: str) -> str | None:
        """Start, shutdown, destroy or reboot a domain; its power state before the call
        (running, paused, shutoff, crashed), or None if it does not exist."""
        return await self._call(f"cannot {action} domain {uuid}", _domain_power, self._conn,
                                self._handles, uuid, action)

    async def power_states(self) -> dict[str, str]:
        """Every domain's power state by UUID (running, paused, shutoff, crashed)."""
        return await self._call(f"cannot list the domains of {self.name}", _power_states,
                                self._conn)

    async def addresses(self, uuid: str) -> list[dict[str, Any]]:
        """The domain's IP addresses (DHCP lease, else guest agent, else ARP)."""
        return await self._call(f"cannot read the addresses of domain {uuid}",
                                _interface_addresses, self._conn, uuid)

    async def open_console(self, uuid: str, force: bool) -> ConsoleStream:
        """The domain's serial console as a byte stream; ``force`` takes it from whoever
        holds it (another client of libvirt included)."""
        stream = await self._call(f"cannot open the console of domain {uuid}", _open_console,
                                  self._conn, uuid, force,
                                  discard=lambda late: _quietly(late.abort))
        return ConsoleStream(stream, lambda fn: self._call(
            f"cannot close the console of domain {uuid}", fn))

    async def open_display(self, uuid: str) -> socket.socket:
        """A new connection to the domain's VNC display, authenticated by libvirt (the
        display listens nowhere; libvirt hands QEMU one end of a socket pair)."""
        fd = await self._call(f"cannot open the display of domain {uuid}", _open_graphics,
                              self._conn, uuid, discard=os.close)
        return socket.socket(fileno=fd)

    async def wipe_volume(self, pool: str, name: str) -> str:
        """Wipe a volume's content; what was found (``calls.WIPED``, ``CANNOT_WIPE``,
        ``GONE``, ``POOL_MISSING``, ``POOL_INACTIVE``)."""
        # A wipe writes the whole volume (minutes for a large one) and cannot be called
        # off: given up at call_timeout it would go on, and the delete, tried again, would
        # find the volume busy. Bounded only against a libvirtd that never answers.
        return await self._call(f"cannot wipe volume {pool}/{name}", _wipe_volume, self._conn,
                                pool, name, timeout=max(self.call_timeout, WIPE_TIMEOUT))


__all__ = ["ConnectionClosed", "DomainEvent", "DomainInfo", "HostConnection", "Opener",
           "PoolEvent", "TaggedDomain", "drain_events", "ensure_event_loop_registered",
           "map_libvirt_errors", "open_connection"]
