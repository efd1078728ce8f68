"""The libvirt adapter on private test-driver hosts: events from worker threads, inventory,
and libvirt errors mapped to daemon.errors.

All tests run on the one session event loop (libvirt takes one event implementation per
process); each closes its HostConnection.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import libvirt
import pytest

from daemon.virt import domain_xml
from daemon.errors import HostUnreachable, VirtError
from daemon.virt.inventory import DiskUse
from daemon.virt.connection import DomainEvent, HostConnection

DATA = Path(__file__).resolve().parents[2] / "data"
BASIC_URI = "test://" + str((DATA / "host_basic.xml").resolve())
GiB = 1024**3
ALL_POOLS = ["pool-iscsi", "pool-dir", "pool-nfs", "pool-lvm"]


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` on the loop until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def domain_spec(i: int, domain_type: str, arch: str) -> domain_xml.DomainSpec:
    request_id = f"req-{i:03d}"
    return domain_xml.DomainSpec(
        name=f"vm-{i:03d}", uuid=domain_xml.domain_uuid_for(request_id),
        domain_type=domain_type, arch=arch, cpus=1, memory_kib=131072,
        disk_pool="pool-dir", disk_volume="free-10g.qcow2", disk_format="qcow2",
        cdrom_path=None, cdrom_pool="pool-dir", cdrom_volume="ipxe.iso", network=None,
        request_id=request_id, owner="alice", template="ipxe", size="tiny",
        resource_pool="rp")


@pytest.fixture
async def debug_loop() -> AsyncIterator[asyncio.AbstractEventLoop]:
    """The running loop in debug mode: asyncio raises on calls from the wrong thread."""
    loop = asyncio.get_running_loop()
    was = loop.get_debug()
    loop.set_debug(True)
    try:
        yield loop
    finally:
        loop.set_debug(was)


class Opener:
    """Opens real connections and keeps them, so a test can act on the same host."""

    def __init__(self) -> None:
        self.opened: list[Any] = []

    def __call__(self, uri: str) -> Any:
        conn = libvirt.open(uri)
        self.opened.append(conn)
        return conn


# --------------------------------------------------------------------------- events


async def test_defines_from_worker_threads_deliver_every_defined_event(
        debug_loop: asyncio.AbstractEventLoop, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    events: list[object] = []
    host = HostConnection("testhost", BASIC_URI)
    try:
        await host.open(events.append)
        domain_type, arch = await host.capabilities()
        specs = [domain_spec(i, domain_type, arch) for i in range(50)]

        await asyncio.gather(*(host.define_domain(s.uuid, s.name, domain_xml.build_domain_xml(s))
                               for s in specs))

        def defined() -> set[tuple[str, str]]:
            return {(e.uuid, e.name) for e in events
                    if isinstance(e, DomainEvent) and e.event == "DEFINED"}

        expected = {(s.uuid, s.name) for s in specs}
        await wait_until(lambda: defined() >= expected, timeout=5.0)
        assert defined() == expected, f"{len(defined())} of 50 DEFINED events arrived"
        assert all(e.host == "testhost" for e in events if isinstance(e, DomainEvent))
        # No hook raised on the loop (asyncio's debug checks would log it here).
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    finally:
        await host.close()


async def test_a_defined_domain_is_found_with_its_request_metadata() -> None:
    host = HostConnection("testhost", BASIC_URI)
    try:
        await host.open(lambda _e: None)
        domain_type, arch = await host.capabilities()
        spec = domain_spec(7, domain_type, arch)
        await host.define_domain(spec.uuid, spec.name, domain_xml.build_domain_xml(spec))

        found = await host.find_domain(domain_xml.domain_uuid_for("req-007"))
        assert found is not None and found.name == "vm-007"
        assert found.metadata == {"request_id": "req-007", "owner": "alice",
                                  "template": "ipxe", "size": "tiny", "resource_pool": "rp"}
        # Another request's domain is left alone; its own goes, once.
        assert await host.undefine_domain(found.uuid, of_request="req-008") is None
        assert await host.find_domain(found.uuid) is not None
        assert await host.undefine_domain(found.uuid, of_request="req-007") == "vm-007"
        assert await host.find_domain(found.uuid) is None
        assert await host.undefine_domain(found.uuid) is None
    finally:
        await host.close()


class Calls:
    """Counts the libvirt binding's calls by name (the round trips a step makes)."""

    NAMES = (("virConnect", "lookupByUUIDString"), ("virDomain", "metadata"),
             ("virStoragePool", "storageVolLookupByName"))

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count: dict[str, int] = {}
        for cls, name in self.NAMES:
            original = getattr(getattr(libvirt, cls), name)

            def counted(*args: Any, _name: str = name, _original: Any = original) -> Any:
                self.count[_name] = self.count.get(_name, 0) + 1
                return _original(*args)

            monkeypatch.setattr(getattr(libvirt, cls), name, counted)


async def test_a_vm_made_on_the_connection_goes_without_a_look_up(
        monkeypatch: pytest.MonkeyPatch) -> None:
    host = HostConnection("testhost", BASIC_URI)
    try:
        await host.open(lambda _e: None)
        domain_type, arch = await host.capabilities()
        spec = domain_spec(9, domain_type, arch)
        await host.create_volume("pool-dir", domain_xml.build_volume_xml(
            "provisiond-r9.qcow2", GiB, "qcow2"))
        await host.define_domain(spec.uuid, spec.name, domain_xml.build_domain_xml(spec))
        assert await host.power(spec.uuid, "start") == "shutoff"
        calls = Calls(monkeypatch)
        # Its handle: its XML says it runs and whose it is (another request's is left).
        assert await host.undefine_domain(spec.uuid, of_request="req-008") is None
        assert await host.power(spec.uuid, "destroy") == "running"
        assert await host.power(spec.uuid, "start") == "shutoff"
        assert await host.undefine_domain(spec.uuid, of_request="req-009") == "vm-009"
        assert await host.delete_volume("pool-dir", "provisiond-r9.qcow2") is True
        assert calls.count == {}  # no look-up, no metadata call: one round trip each less
        assert await host.find_domain(spec.uuid) is None
        assert await host.find_volume("pool-dir", "provisiond-r9.qcow2") is None
        assert await host.undefine_domain(spec.uuid, of_request="req-009") is None
        assert await host.delete_volume("pool-dir", "provisiond-r9.qcow2") is False
    finally:
        await host.close()


async def test_handles_of_what_went_behind_provisiond_s_back_say_it_is_gone() -> None:
    host = HostConnection("testhost", BASIC_URI)
    try:
        await host.open(lambda _e: None)
        domain_type, arch = await host.capabilities()
        spec = domain_spec(10, domain_type, arch)
        await host.define_domain(spec.uuid, spec.name, domain_xml.build_domain_xml(spec))
        await host.create_volume("pool-dir", domain_xml.build_volume_xml(
            "provisiond-r10.qcow2", GiB, "qcow2"))
        conn = host._conn  # virsh undefine, virsh vol-delete: no event reaches the handles
        conn.lookupByUUIDString(spec.uuid).undefine()
        conn.storagePoolLookupByName("pool-dir").storageVolLookupByName(
            "provisiond-r10.qcow2").delete(0)
        assert await host.power(spec.uuid, "start") is None
        assert await host.undefine_domain(spec.uuid, of_request="req-010") is None
        assert await host.delete_volume("pool-dir", "provisiond-r10.qcow2") is False
        # Defined again behind its back (same UUID): looked up, and its metadata checked.
        conn.defineXML(domain_xml.build_domain_xml(spec))
        conn.lookupByUUIDString(spec.uuid).create()
        assert await host.undefine_domain(spec.uuid, of_request="req-011") is None
        assert await host.undefine_domain(spec.uuid, of_request="req-010") == "vm-010"
        assert await host.find_domain(spec.uuid) is None
    finally:
        await host.close()


# --------------------------------------------------------------------------- inventory


async def test_inventory_reports_pools_volumes_and_disks_in_use() -> None:
    host = HostConnection("testhost", BASIC_URI)
    try:
        await host.open(lambda _e: None)
        inv = await host.read_inventory(ALL_POOLS)

        assert inv.host == "testhost"
        assert list(inv.pools) == ALL_POOLS
        assert {n: p.type for n, p in inv.pools.items()} == {
            "pool-iscsi": "iscsi", "pool-dir": "dir", "pool-nfs": "netfs",
            "pool-lvm": "logical"}
        assert all(p.active for p in inv.pools.values())
        by_name = {v.name: v for v in inv.pools["pool-dir"].volumes}
        assert set(by_name) == {"free-10g.qcow2", "free-15g.qcow2", "used-15g.qcow2",
                                "ipxe.iso"}
        free = by_name["free-15g.qcow2"]
        assert (free.pool, free.capacity, free.format) == ("pool-dir", 15 * GiB, "qcow2")
        assert free.path == "/pools/dir/free-15g.qcow2"
        assert inv.pools["pool-lvm"].volumes == ()

        # web01 uses its disk by path, db01 by pool/volume.
        assert DiskUse("web01", path="/pools/dir/used-15g.qcow2") in inv.disks_in_use
        assert DiskUse("db01", pool="pool-nfs", volume="used-15g-nfs.qcow2") in \
            inv.disks_in_use
        nfs = {v.name: v for v in inv.pools["pool-nfs"].volumes}
        assert inv.user_of(by_name["used-15g.qcow2"]) == "web01"
        assert inv.user_of(nfs["used-15g-nfs.qcow2"]) == "db01"
        assert inv.user_of(free) is None
    finally:
        await host.close()


async def test_a_missing_pool_is_absent_from_the_inventory() -> None:
    host = HostConnection("testhost", BASIC_URI)
    try:
        await host.open(lambda _e: None)
        inv = await host.read_inventory(["pool-dir", "no-such-pool"])
        assert list(inv.pools) == ["pool-dir"]
    finally:
        await host.close()


async def test_an_inactive_pool_is_reported_without_volumes() -> None:
    opener = Opener()
    host = HostConnection("testhost", BASIC_URI, opener=opener)
    try:
        await host.open(lambda _e: None)
        opener.opened[0].storagePoolLookupByName("pool-dir").destroy()
        inv = await host.read_inventory(["pool-dir", "pool-nfs"])
        assert not inv.pools["pool-dir"].active and inv.pools["pool-dir"].volumes == ()
        assert inv.pools["pool-nfs"].active and inv.pools["pool-nfs"].volumes
    finally:
        await host.close()


async def test_volumes_are_created_found_and_deleted() -> None:
    host = HostConnection("testhost", BASIC_URI)
    try:
        await host.open(lambda _e: None)
        xml = domain_xml.build_volume_xml("provisiond-r1.qcow2", 7 * GiB, "qcow2")
        created = await host.create_volume("pool-dir", xml)
        assert (created.name, created.capacity, created.format) == (
            "provisiond-r1.qcow2", 7 * GiB, "qcow2")
        assert await host.find_volume("pool-dir", "provisiond-r1.qcow2") == created
        assert await host.delete_volume("pool-dir", "provisiond-r1.qcow2") is True
        assert await host.find_volume("pool-dir", "provisiond-r1.qcow2") is None
        assert await host.delete_volume("pool-dir", "provisiond-r1.qcow2") is False
    finally:
        await host.close()


async def test_a_pool_defined_again_under_its_name_still_takes_new_volumes() -> None:
    opened: list = []
    host = HostConnection("testhost", BASIC_URI,
                          opener=lambda uri: opened.append(libvirt.open(uri)) or opened[-1])
    try:
        await host.open(lambda _e: None)  # its events are not seen: the worst case
        first = domain_xml.build_volume_xml("provisiond-r1.qcow2", GiB, "qcow2")
        await host.create_volume("pool-dir", first)
        # Someone replaces the pool by another of the same name (a new UUID).
        old = opened[0].storagePoolLookupByName("pool-dir")
        xml = re.sub(r"<uuid>.*</uuid>", "", old.XMLDesc(0))
        old.destroy()
        old.undefine()
        opened[0].storagePoolCreateXML(xml, 0)

        second = domain_xml.build_volume_xml("provisiond-r2.qcow2", GiB, "qcow2")
        created = await host.create_volume("pool-dir", second)

        assert created.name == "provisiond-r2.qcow2"
        pool = opened[0].storagePoolLookupByName("pool-dir")
        assert pool.UUIDString() != old.UUIDString()
        assert "provisiond-r2.qcow2" in pool.listVolumes()
    finally:
        await host.close()


# --------------------------------------------------------------------------- errors


async def test_malformed_volume_xml_is_a_virt_error_naming_the_action() -> None:
    host = HostConnection("testhost", BASIC_URI)
    try:
        await host.open(lambda _e: None)
        with pytest.raises(VirtError) as err:
            await host.create_volume("pool-dir", "<volume><name>broken")
        assert type(err.value) is VirtError  # not "host unreachable"
        assert err.value.message.startswith("cannot create a volume in pool pool-dir: ")
        assert err.value.libvirt_code in (libvirt.VIR_ERR_XML_ERROR,
                                          libvirt.VIR_ERR_XML_DETAIL)
        assert err.value.http_status == 502
        assert not isinstance(err.value.__cause__, libvirt.libvirtError)
    finally:
        await host.close()


async def test_other_libvirt_errors_name_their_action() -> None:
    host = HostConnection("testhost", BASIC_URI)
    try:
        await host.open(lambda _e: None)
        volume = domain_xml.build_volume_xml("v", GiB, None)
        with pytest.raises(VirtError, match="^cannot create a volume in pool nope: .*nope"):
            await host.create_volume("nope", volume)
        with pytest.raises(VirtError, match="^cannot define the domain: "):
            await host.define_domain("00000000-0000-4000-8000-000000000001", "x",
                                     "<domain type='qemu'><name>x</name>")
        assert await host.find_domain(domain_xml.domain_uuid_for("never-defined")) is None
    finally:
        await host.close()


async def test_calls_after_close_say_the_host_is_unreachable() -> None:
    host = HostConnection("testhost", BASIC_URI)
    await host.open(lambda _e: None)
    await host.close()
    assert not host.connected
    with pytest.raises(HostUnreachable, match="not connected"):
        await host.read_inventory(["pool-dir"])


async def test_a_host_that_cannot_be_opened_is_a_virt_error() -> None:
    host = HostConnection("ghost", "test:///no/such/node.xml")
    try:
        with pytest.raises(VirtError, match="^cannot connect to test:///no/such/node.xml"):
            await host.open(lambda _e: None)
        assert not host.connected
    finally:
        await host.close()


class _SlowInfo:
    """A real connection whose getInfo takes a while; notes the order of events."""

    def __init__(self, conn: Any, events: list[str]) -> None:
        self._conn, self._events = conn, events

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def getInfo(self) -> Any:
        time.sleep(0.5)
        self._events.append("getInfo returned")
        return self._conn.getInfo()

    def close(self) -> int:
        self._events.append("closed")
        return self._conn.close()


async def test_closing_waits_for_a_call_still_running_on_the_connection() -> None:
    events: list[str] = []
    host = HostConnection("testhost", BASIC_URI,
                          opener=lambda uri: _SlowInfo(libvirt.open(uri), events))
    await host.open(lambda _e: None)
    asking = asyncio.ensure_future(host.node_capacity())
    await asyncio.sleep(0.1)  # the call is running on a worker thread
    asking.cancel()  # its caller gives up: the call goes on, on the connection
    await host.close()
    # Closed after the call returned, not under it (a use after free in libvirt).
    assert events == ["getInfo returned", "closed"]
