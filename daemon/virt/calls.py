"""The blocking libvirt calls: run in a host's worker threads, never on the loop.

Each returns plain data (``daemon.virt.inventory``) or a bool; ``HostConnection`` maps
their errors. The only libvirt objects kept beyond a call are a connection's ``Handles``.
"""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Callable

import libvirt

from daemon.errors import VirtError
from daemon.virt import domain_xml
from daemon.virt.inventory import DiskUse, HostInventory, PoolInfo, VolumeInfo

NOT_FOUND_CODES = {
    libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL,
}


def _is_not_found(exc: libvirt.libvirtError) -> bool:
    return exc.get_error_code() in NOT_FOUND_CODES


HANDLES_MAX = 10000
"""Domain (or volume) handles a connection keeps at most; past that they are dropped and
looked up again."""


@dataclass
class Handles:
    """A connection's libvirt objects, each looked up (or made) once: storage pools by
    name, domains by UUID, volumes by (pool, name). A handle only names its object:
    libvirtd finds a domain by its UUID and a volume by its pool's name and its own at
    every call, so a call on a handle is the call after a look-up, one round trip less,
    and fails as not found if the object is gone. (A pool is found by its UUID: one
    defined again under its name needs a new handle.) Dropped with the connection."""

    pools: dict[str, Any] = field(default_factory=dict)
    domains: dict[str, Any] = field(default_factory=dict)
    volumes: dict[tuple[str, str], Any] = field(default_factory=dict)

    def keep_domain(self, uuid: str, dom: Any) -> None:
        """Keep a domain's handle."""
        if len(self.domains) >= HANDLES_MAX:
            self.domains.clear()
        self.domains[uuid] = dom

    def keep_volume(self, pool: str, name: str, vol: Any) -> None:
        """Keep a volume's handle."""
        if len(self.volumes) >= HANDLES_MAX:
            self.volumes.clear()
        self.volumes[(pool, name)] = vol


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
    pool_type, source, target = domain_xml.pool_facts_of(pool.XMLDesc(0))
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
                    tuple(volumes), source, target)


def _volume_info(pool_name: str, vol: Any) -> VolumeInfo:
    # One round trip: the XML holds what info() and path() would say (three otherwise,
    # per volume, when the whole inventory is read at start-up).
    try:
        path, capacity, allocation, fmt, backing = domain_xml.volume_facts_of(
            vol.XMLDesc(0))
    except (ET.ParseError, ValueError, KeyError) as exc:
        raise VirtError(f"volume {pool_name}/{vol.name()}: libvirt's XML for it is not "
                        f"understood: {exc}") from None
    return VolumeInfo(pool_name, vol.name(), path, capacity, allocation, fmt, backing)


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


def _create_volume(conn: Any, handles: Handles, pool_name: str, xml: str) -> VolumeInfo:
    pools = handles.pools
    pool = pools.get(pool_name)
    if pool is None:
        pool = pools[pool_name] = conn.storagePoolLookupByName(pool_name)
    try:
        vol = pool.createXML(xml, 0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
            raise
        # Undefined and defined again under the same name before its event arrived.
        pools.pop(pool_name, None)
        pool = pools[pool_name] = conn.storagePoolLookupByName(pool_name)
        vol = pool.createXML(xml, 0)
    # What libvirt made of it: the size it rounded to, where it put the file.
    info = _volume_info(pool_name, vol)
    handles.keep_volume(pool_name, info.name, vol)
    return info


def _clone_volume(conn: Any, handles: Handles, pool_name: str, xml: str, source_pool: str,
                  source_name: str) -> VolumeInfo:
    """A new volume in ``pool_name`` with the content of another (``createXMLFrom``)."""
    pool = conn.storagePoolLookupByName(pool_name)
    source = conn.storagePoolLookupByName(source_pool).storageVolLookupByName(source_name)
    vol = pool.createXMLFrom(xml, source, 0)
    info = _volume_info(pool_name, vol)
    handles.keep_volume(pool_name, info.name, vol)
    return info


def _upload_volume(conn: Any, pool_name: str, name: str, data: bytes) -> bool:
    """Write ``data`` into a volume through libvirt's upload stream (remote hosts too);
    False if the host's driver cannot upload (the test driver)."""
    vol = conn.storagePoolLookupByName(pool_name).storageVolLookupByName(name)
    stream = conn.newStream(0)
    try:
        vol.upload(stream, 0, len(data), 0)
    except libvirt.libvirtError as exc:
        _quietly(stream.abort)
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT,
                                    libvirt.VIR_ERR_OPERATION_UNSUPPORTED):
            return False
        raise
    try:
        view = memoryview(data)
        while view:
            sent = stream.send(bytes(view[:262144]))
            view = view[sent:]
        stream.finish()
    except BaseException:
        _quietly(stream.abort)
        raise
    return True


def _delete_volume(conn: Any, handles: Handles, pool_name: str, name: str) -> bool:
    vol = handles.volumes.pop((pool_name, name), None)
    if vol is not None:
        try:
            vol.delete(0)
            return True
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return False  # as the look-up would have said
            if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                raise
            # No pool of that name (now): as without the volume's handle.
    pools = handles.pools
    cached = pools.get(pool_name)
    pool = cached if cached is not None else conn.storagePoolLookupByName(pool_name)
    pools[pool_name] = pool
    try:
        vol = pool.storageVolLookupByName(name)
    except libvirt.libvirtError as exc:
        if cached is not None and exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            # Undefined and defined again under the same name before its event arrived:
            # look the pool up again (an error of that look-up stands, as without a handle).
            pools.pop(pool_name, None)
            return _delete_volume(conn, handles, pool_name, name)
        if _is_not_found(exc):
            return False
        raise
    vol.delete(0)
    return True


def _lookup_domain(conn: Any, uuid: str) -> Any | None:
    """The domain with this UUID, or None if there is none."""
    try:
        return conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as exc:
        if _is_not_found(exc):
            return None
        raise


def _find_domain(conn: Any, uuid: str) -> DomainInfo | None:
    dom = _lookup_domain(conn, uuid)
    if dom is None:
        return None
    try:
        meta_xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, domain_xml.METADATA_NS)
    except libvirt.libvirtError:
        meta_xml = ""
    return DomainInfo(dom.UUIDString(), dom.name(),
                      domain_xml.parse_request_metadata(meta_xml), dom.XMLDesc(0))


def _remove_direct_boot(conn: Any, uuid: str) -> bool | None:
    """Redefine the domain without its direct kernel boot; False if it had none, None if
    there is no such domain."""
    dom = _lookup_domain(conn, uuid)
    if dom is None:
        return None
    new = domain_xml.without_direct_boot(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
    if new is None:
        return False
    conn.defineXML(new)
    return True


def _domain_named(conn: Any, name: str) -> bool:
    """Whether a domain of this name is defined."""
    try:
        conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if _is_not_found(exc):
            return False
        raise
    return True


def _define_domain(conn: Any, handles: Handles, uuid: str, xml: str) -> None:
    dom = conn.defineXML(xml)
    if isinstance(dom, libvirt.virDomain):  # what libvirt answers (a test's fake may not)
        handles.keep_domain(uuid, dom)


_NS = f"{{{domain_xml.METADATA_NS}}}"
_REQUEST_ID = f"./metadata/{_NS}request/{_NS}request-id"
"""Where a domain's XML names the request it was made for."""


def _undefine_domain(conn: Any, handles: Handles, uuid: str,
                     of_request: str | None) -> str | None:
    """Stop (if running) and undefine a domain; its name, or None if there is none (or,
    with ``of_request``, if its metadata names another request: not ours to remove).

    With the domain's handle at hand, one call (its XML) says whether it runs, whose it
    is and its name; else the look-up says whether it runs (its id) and its metadata whose
    it is."""
    dom = handles.domains.get(uuid)
    if dom is not None:
        try:
            root = ET.fromstring(dom.XMLDesc(0))
        except libvirt.libvirtError as exc:
            if not _is_not_found(exc):
                raise
            handles.domains.pop(uuid, None)
            return None
        name = root.findtext("name")
        active = root.get("id", "-1") != "-1"  # a running domain's XML carries its id
        owner = root.findtext(_REQUEST_ID)
    else:
        dom = _lookup_domain(conn, uuid)
        if dom is None:
            return None
        name = dom.name()
        active = dom.ID() != -1  # the look-up answered with its id (isActive: one more call)
        owner = None
        if of_request is not None:
            try:
                meta_xml = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                                        domain_xml.METADATA_NS)
            except libvirt.libvirtError:
                meta_xml = ""
            owner = domain_xml.parse_request_metadata(meta_xml).get("request_id")
    if of_request is not None and owner != of_request:
        return None
    if active:
        dom.destroy()
    dom.undefine()
    handles.domains.pop(uuid, None)
    return str(name)


POWER_STATES = {
    libvirt.VIR_DOMAIN_RUNNING: "running", libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused", libvirt.VIR_DOMAIN_PMSUSPENDED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "running", libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
}
"""libvirt's domain states as a VM's lifecycle reads them (shutting down is still on)."""


def _domain_power(conn: Any, handles: Handles, uuid: str, action: str) -> str | None:
    """Act on a domain (start, shutdown, destroy, reboot); its power state before, or None
    if it does not exist. Starting a running domain or stopping a stopped one is a no-op."""
    dom = handles.domains.get(uuid)
    if dom is None:
        dom = _lookup_domain(conn, uuid)
        if dom is None:
            return None
        handles.keep_domain(uuid, dom)
    try:
        power = dom.state()[0]
    except libvirt.libvirtError as exc:
        if not _is_not_found(exc):
            raise
        handles.domains.pop(uuid, None)
        return None
    state = POWER_STATES.get(power, "shutoff")
    active = state != "shutoff" and state != "crashed"
    if action == "start" and not active:
        dom.create()
    elif action == "shutdown" and active:
        dom.shutdown()
    elif action == "destroy" and active:
        dom.destroy()
    elif action == "reboot":
        dom.reboot(0)
    return state


def _open_console(conn: Any, uuid: str, force: bool) -> Any:
    """A non-blocking stream on the domain's first console (its serial port)."""
    dom = _lookup_domain(conn, uuid)
    if dom is None:
        raise VirtError(f"domain {uuid} does not exist", libvirt_code=libvirt.VIR_ERR_NO_DOMAIN)
    stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
    try:
        dom.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE if force
                        else libvirt.VIR_DOMAIN_CONSOLE_SAFE)
    except libvirt.libvirtError:
        _quietly(stream.abort)
        raise
    return stream


def _open_graphics(conn: Any, uuid: str) -> int:
    """A file descriptor connected to the domain's first display (VNC), auth skipped:
    provisiond has checked the caller. Only local connections can pass descriptors."""
    dom = _lookup_domain(conn, uuid)
    if dom is None:
        raise VirtError(f"domain {uuid} does not exist", libvirt_code=libvirt.VIR_ERR_NO_DOMAIN)
    return int(dom.openGraphicsFD(0, libvirt.VIR_DOMAIN_OPEN_GRAPHICS_SKIPAUTH))


def _power_states(conn: Any) -> dict[str, str]:
    """Every domain's power state, by UUID."""
    out = {}
    for dom in conn.listAllDomains(0):
        try:
            out[dom.UUIDString()] = POWER_STATES.get(dom.state()[0], "shutoff")
        except libvirt.libvirtError as exc:
            if not _is_not_found(exc):  # undefined while we listed
                raise
    return out


WIPED, CANNOT_WIPE, GONE, POOL_MISSING, POOL_INACTIVE = (
    "wiped", "cannot-wipe", "gone", "pool-missing", "pool-inactive")
"""What ``_wipe_volume`` found: only WIPED and GONE leave nothing of the volume's data."""


def _wipe_volume(conn: Any, pool_name: str, name: str) -> str:
    """Wipe a volume: WIPED; CANNOT_WIPE if the driver cannot (left as it is); GONE if
    there is no such volume; POOL_MISSING or POOL_INACTIVE if its pool is not defined or
    not running (its storage may still hold the volume)."""
    try:
        pool = conn.storagePoolLookupByName(pool_name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_POOL:
            return POOL_MISSING
        raise
    if not pool.isActive():
        return POOL_INACTIVE
    try:
        vol = pool.storageVolLookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return GONE
        raise
    try:
        vol.wipe(0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
            return CANNOT_WIPE
        if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
            return GONE
        raise
    return WIPED


ADDRESS_SOURCES = (("lease", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE),
                   ("agent", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_AGENT),
                   ("arp", libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_ARP))
"""Where a VM's addresses are asked, in order (as Cockpit does): the network's DHCP
leases, the guest agent, the host's ARP table."""


def _interface_addresses(conn: Any, uuid: str) -> list[dict[str, Any]]:
    """The domain's IP addresses from the first source that knows any."""
    dom = _lookup_domain(conn, uuid)
    if dom is None:
        return []
    for source, flag in ADDRESS_SOURCES:
        try:
            interfaces = dom.interfaceAddresses(flag)
        except libvirt.libvirtError:
            continue  # no agent, no lease database: the next source may know
        found = [{"interface": name, "mac": iface.get("hwaddr"), "address": addr["addr"],
                  "prefix": addr["prefix"], "source": source}
                 for name, iface in sorted(interfaces.items())
                 for addr in iface.get("addrs") or []]
        if found:
            return found
    return []
