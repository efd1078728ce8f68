"""The libvirt adapter: the only module that imports ``libvirt``.

One ``HostConnection`` per libvirt host. Blocking libvirt calls run in a small thread pool
of their own, bounded in time, so the event loop never blocks. libvirt's events arrive
through ``libvirtaio`` on the loop thread; the callbacks only put an event into the
engine's inbox. libvirt errors become ``daemon.errors`` exceptions here and nowhere else.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import xml.etree.ElementTree as ET
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

import libvirt
import libvirtaio

from daemon.virt import domain_xml
from daemon.errors import HostUnreachable, VirtError, VirtTimeout
from daemon.virt.inventory import DiskUse, HostInventory, PoolInfo, VolumeInfo
from daemon.virt.live_inventory import LiveInventory

T = TypeVar("T")
Opener = Callable[[str], "libvirt.virConnect"]

# libvirt prints every error to stderr unless told otherwise; we report them ourselves.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

_UNREACHABLE_CODES = {
    libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN, libvirt.VIR_ERR_SYSTEM_ERROR,
    libvirt.VIR_ERR_RPC, libvirt.VIR_ERR_AUTH_FAILED, libvirt.VIR_ERR_AUTH_UNAVAILABLE,
}
# A call on a connection whose daemon went away fails in the RPC layer.
_UNREACHABLE_DOMAINS = {libvirt.VIR_FROM_RPC, libvirt.VIR_FROM_REMOTE}
_NOT_FOUND_CODES = {
    libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL,
}

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


@dataclass(frozen=True)
class TaggedDomain:
    """A domain carrying provisiond's metadata (the request id it was made for)."""

    uuid: str
    name: str
    request_id: str


@dataclass(frozen=True)
class DomainInfo:
    """A domain found on a host, with provisiond's metadata if it carries any."""

    uuid: str
    name: str
    metadata: dict[str, str]
    xml: str


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
        raise VirtError(message, libvirt_code=code) from None


def _is_not_found(exc: libvirt.libvirtError) -> bool:
    return exc.get_error_code() in _NOT_FOUND_CODES


class HostConnection:
    """A libvirt host: its connection, its events, and the calls provisiond makes on it."""

    def __init__(self, name: str, uri: str, *, opener: Opener = libvirt.open,
                 call_timeout: float = 120.0, workers: int = 4,
                 observe: Callable[[str, str, float, bool], None] | None = None) -> None:
        self.name = name
        self.observe = observe
        """Told (host, call, seconds, succeeded) after every libvirt call (for metrics)."""
        self.uri = uri
        self.opener = opener
        self.call_timeout = call_timeout
        self.workers = workers
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix=f"libvirt-{name}")
        self._conn: Any = None
        self.inventory = LiveInventory(name)
        """The host's pools, volumes and disks in use, kept current (see live_inventory)."""
        self._callback_ids: list[int] = []
        self._pool_callback_ids: list[int] = []
        self._on_event: Callable[[object], None] | None = None
        self._caps: tuple[str, str] | None = None
        self._pool_handles: dict[str, Any] = {}
        """Storage pool objects by name, of the open connection (one look-up each)."""

    # -- connection

    @property
    def connected(self) -> bool:
        """Whether the connection is open and alive."""
        return self._conn is not None and bool(self._conn.isAlive())

    async def open(self, on_event: Callable[[object], None]) -> None:
        """Open the connection and subscribe to domain lifecycle events and closure."""
        ensure_event_loop_registered()
        self._on_event = on_event
        with map_libvirt_errors(f"cannot connect to {self.uri}"):
            # Opening runs on the loop thread: libvirt binds the connection's event
            # plumbing to the registered implementation as it opens.
            conn = self.opener(self.uri)
        if conn is None:
            raise HostUnreachable(f"cannot connect to {self.uri}")
        self._conn = conn
        try:
            with map_libvirt_errors(f"cannot subscribe to events of {self.uri}"):
                self._callback_ids.append(conn.domainEventRegisterAny(
                    None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle_callback, None))
                self._pool_callback_ids.append(conn.storagePoolEventRegisterAny(
                    None, libvirt.VIR_STORAGE_POOL_EVENT_ID_LIFECYCLE, self._pool_callback,
                    None))
                self._pool_callback_ids.append(conn.storagePoolEventRegisterAny(
                    None, libvirt.VIR_STORAGE_POOL_EVENT_ID_REFRESH, self._refresh_callback,
                    None))
                conn.registerCloseCallback(self._close_callback, None)
            # Events first, then the full read: a change racing the read is not lost.
            await self.load_inventory()
        except BaseException:
            await self.disconnect()
            raise

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
        self._pool_handles.pop(pool, None)  # the name may now stand for another pool
        if event in ("UNDEFINED", "DELETED"):
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
        self._pool_handles = {}  # a new dict: calls still running keep the old one
        if conn is None:
            return
        for cid in self._callback_ids:
            _quietly(conn.domainEventDeregisterAny, cid)
        for cid in self._pool_callback_ids:
            _quietly(conn.storagePoolEventDeregisterAny, cid)
        self._callback_ids.clear()
        self._pool_callback_ids.clear()
        _quietly(conn.unregisterCloseCallback)
        _quietly(conn.close)

    async def close(self) -> None:
        """Close the connection and stop the host's worker threads."""
        self._on_event = None
        await self.disconnect()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _call(self, action: str, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking libvirt call off the loop, bounded by ``call_timeout``."""
        if self._conn is None:
            raise HostUnreachable(f"{action}: not connected to {self.uri}")

        def run() -> T:
            with map_libvirt_errors(action):
                return fn(*args)

        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        ok = False
        try:
            result = await asyncio.wait_for(loop.run_in_executor(self._executor, run),
                                            self.call_timeout)
            ok = True
            return result
        except asyncio.TimeoutError:
            raise VirtTimeout(f"{action}: libvirt did not answer within "
                              f"{self.call_timeout:g} s") from None
        finally:
            if self.observe is not None:
                self.observe(self.name, fn.__name__.lstrip("_"), time.perf_counter() - started,
                             ok)

    # -- queries

    async def capabilities(self) -> tuple[str, str]:
        """(domain type, arch) for new domains on this host; cached."""
        if self._caps is None:
            caps_xml = await self._call("cannot read host capabilities",
                                        self._conn.getCapabilities)
            self._caps = domain_xml.capabilities_summary(caps_xml)
        return self._caps

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

    async def find_domain(self, uuid: str) -> DomainInfo | None:
        """The domain with this UUID, or None."""
        return await self._call(f"cannot look up domain {uuid}", _find_domain, self._conn, uuid)

    # -- actions

    async def create_volume(self, pool: str, xml: str) -> VolumeInfo:
        """Create a volume from XML in ``pool``."""
        vol = await self._call(f"cannot create a volume in pool {pool}", _create_volume,
                               self._conn, self._pool_handles, pool, xml)
        self.inventory.add_volume(vol)
        return vol

    async def delete_volume(self, pool: str, name: str) -> bool:
        """Delete a volume; False if it did not exist."""
        deleted = await self._call(f"cannot delete volume {pool}/{name}", _delete_volume,
                                   self._conn, pool, name)
        self.inventory.remove_volume(pool, name)
        return deleted

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
            await self._call("cannot define the domain", _define_domain, self._conn, xml)
        except BaseException:
            self.inventory.remove_domain(uuid)
            raise

    async def undefine_domain(self, uuid: str) -> bool:
        """Stop (if running) and undefine a domain; False if it did not exist."""
        gone = await self._call(f"cannot undefine domain {uuid}", _undefine_domain,
                                self._conn, uuid)
        self.inventory.remove_domain(uuid)
        return gone


# --------------------------------------------------------------------------- blocking parts
# These run in the executor thread. They keep no libvirt object beyond their own frame.


def _read_inventory(conn: Any, host: str, pool_names: list[str]) -> HostInventory:
    pools: dict[str, PoolInfo] = {}
    for name in pool_names:
        try:
            pool = conn.storagePoolLookupByName(name)
        except libvirt.libvirtError as exc:
            if _is_not_found(exc):
                continue
            raise
        pools[name] = _pool_info(pool)
    uses: list[DiskUse] = []
    for dom in conn.listAllDomains():
        try:
            xml = dom.XMLDesc(0)
        except libvirt.libvirtError as exc:
            if _is_not_found(exc):  # undefined while we listed
                continue
            raise
        for path, pool, volume in domain_xml.disks_of(xml):
            uses.append(DiskUse(dom.name(), path, pool, volume))
    return HostInventory(host, pools, tuple(uses), time.time())


def _disk_uses(domain_name: str, xml: str) -> tuple[DiskUse, ...]:
    try:
        disks = domain_xml.disks_of(xml)
    except ET.ParseError:
        return ()  # libvirt will refuse it and say why
    return tuple(DiskUse(domain_name, path, pool, volume) for path, pool, volume in disks)


def _list_everything(conn: Any) -> tuple[list[Any], list[Any]]:
    return conn.listAllStoragePools(), conn.listAllDomains()


def _pool_entry(pool: Any) -> tuple[str, PoolInfo] | None:
    try:
        return pool.name(), _pool_info(pool)
    except libvirt.libvirtError as exc:
        if _is_not_found(exc):  # undefined since it was listed
            return None
        raise


def _domain_entries(domains: list[Any]) -> tuple[dict[str, str], list[DiskUse]]:
    names: dict[str, str] = {}
    uses: list[DiskUse] = []
    for dom in domains:
        try:
            xml = dom.XMLDesc(0)
        except libvirt.libvirtError as exc:
            if _is_not_found(exc):  # undefined since it was listed
                continue
            raise
        name = dom.name()
        names[dom.UUIDString()] = name
        uses.extend(_disk_uses(name, xml))
    return names, uses


def _read_pools(conn: Any, names: list[str]) -> dict[str, PoolInfo | None]:
    return {name: _read_pool(conn, name) for name in names}


def _read_pool(conn: Any, name: str) -> PoolInfo | None:
    try:
        return _pool_info(conn.storagePoolLookupByName(name))
    except libvirt.libvirtError as exc:
        if _is_not_found(exc):
            return None
        raise


def _pool_info(pool: Any) -> PoolInfo:
    pool_type = domain_xml.pool_type_of(pool.XMLDesc(0))
    active = bool(pool.isActive())
    _state, capacity, allocation, available = pool.info()
    volumes: list[VolumeInfo] = []
    if active:
        for vol in pool.listAllVolumes():
            try:
                volumes.append(_volume_info(pool.name(), vol))
            except libvirt.libvirtError as exc:
                # A volume being created (or deleted) is listed before (after) its file
                # exists: info() then says "no storage vol". It is not a disk to offer.
                if not _is_not_found(exc):
                    raise
    return PoolInfo(pool.name(), pool_type, active, capacity, allocation, available,
                    tuple(volumes))


def _volume_info(pool_name: str, vol: Any) -> VolumeInfo:
    # One round trip: the XML holds what info() and path() would say (three otherwise,
    # per volume, when the whole inventory is read at start-up).
    try:
        path, capacity, allocation, fmt = domain_xml.volume_facts_of(vol.XMLDesc(0))
    except (ET.ParseError, ValueError, KeyError) as exc:
        raise VirtError(f"volume {pool_name}/{vol.name()}: libvirt's XML for it is not "
                        f"understood: {exc}") from None
    return VolumeInfo(pool_name, vol.name(), path, capacity, allocation, fmt)


def _tagged_domains(conn: Any) -> list[TaggedDomain]:
    found = []
    for dom in conn.listAllDomains():
        try:
            meta = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, domain_xml.METADATA_NS)
        except libvirt.libvirtError:
            continue  # no provisiond metadata (or gone meanwhile)
        request_id = domain_xml.parse_request_metadata(meta).get("request_id")
        if request_id:
            found.append(TaggedDomain(dom.UUIDString(), dom.name(), request_id))
    return found


def _quietly(fn: Callable[..., Any], *args: Any) -> None:
    try:
        fn(*args)
    except libvirt.libvirtError:
        pass


def _find_volume(conn: Any, pool_name: str, name: str) -> VolumeInfo | None:
    pool = conn.storagePoolLookupByName(pool_name)
    try:
        vol = pool.storageVolLookupByName(name)
    except libvirt.libvirtError as exc:
        if _is_not_found(exc):
            return None
        raise
    return _volume_info(pool_name, vol)


def _create_volume(conn: Any, handles: dict[str, Any], pool_name: str, xml: str) -> VolumeInfo:
    pool = handles.get(pool_name)
    if pool is None:
        pool = handles[pool_name] = conn.storagePoolLookupByName(pool_name)
    try:
        vol = pool.createXML(xml, 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise
        # Undefined and defined again under the same name before its event arrived.
        handles.pop(pool_name, None)
        pool = handles[pool_name] = conn.storagePoolLookupByName(pool_name)
        vol = pool.createXML(xml, 0)
    # What libvirt made of it: the size it rounded to, where it put the file.
    return _volume_info(pool_name, vol)


def _delete_volume(conn: Any, pool_name: str, name: str) -> bool:
    pool = conn.storagePoolLookupByName(pool_name)
    try:
        vol = pool.storageVolLookupByName(name)
    except libvirt.libvirtError as exc:
        if _is_not_found(exc):
            return False
        raise
    vol.delete(0)
    return True


def _find_domain(conn: Any, uuid: str) -> DomainInfo | None:
    try:
        dom = conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as exc:
        if _is_not_found(exc):
            return None
        raise
    try:
        meta_xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, domain_xml.METADATA_NS)
    except libvirt.libvirtError:
        meta_xml = ""
    return DomainInfo(dom.UUIDString(), dom.name(),
                      domain_xml.parse_request_metadata(meta_xml), dom.XMLDesc(0))


def _define_domain(conn: Any, xml: str) -> None:
    conn.defineXML(xml)


def _undefine_domain(conn: Any, uuid: str) -> bool:
    try:
        dom = conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as exc:
        if _is_not_found(exc):
            return False
        raise
    if dom.isActive():
        dom.destroy()
    dom.undefine()
    return True
