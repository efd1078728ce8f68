"""Load and safety under load (issue 6): 500 concurrent requests for scarce storage.

The host is generated here and sized around the test driver's fixed 100 GiB pool capacity
(see LIBVIRT_NOTES.md), so that exactly 50 requests can reuse a volume and exactly 100 can
create one, whatever order the engine happens to run them in:

- ``pool-luns`` (iscsi: reusable, never creatable): 50 free 1 GiB LUNs, plus a 2 GiB LUN
  that is never the right size (reuse tolerance is 0).
- ``pool-dir`` (dir, thin qcow2, over-commit 2.5, so 250 GiB may be provisioned): 150 GiB
  provisioned already (a 140 GiB disk of domain old01, free 8 GiB and 2 GiB volumes of the
  wrong size), all with allocation 0, so libvirt reports the full 100 GiB available and
  the binding limit is the over-commit: 150 + 100 x 1 GiB = 250 GiB fits, a 101st does not.
  2.5 is exact in binary, so ``capacity x overcommit`` is exactly 250 GiB. (With less than
  100 GiB available, the reservations of a burst bind first: the known bug pinned by the
  xfail test at the end.)
- ``pool-images`` (dir, outside the hardware pool): the template's ISO.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from statemachines import State

GiB = 1024**3
REQUESTS = 500
FREE_LUNS = 50
NEW_ROOM = 100
OVERCOMMIT = 2.5
POOL_CAPACITY = 100 * GiB  # what the test driver reports for every pool
NO_STORAGE = "no free volume of the right size and no pool with room"

SIZES = {"one": {"cpus": 1, "memory": 65536, "storage_size_in_gb": 1}}
TEMPLATES = {"ipxe": {"kind": "iso", "volume": {"pool": "pool-images", "name": "ipxe.iso"}}}
STORAGE_POOLS = ["pool-luns", {"name": "pool-dir", "overcommit": OVERCOMMIT}]


def _lun(name: str, gb: int) -> str:
    return (f'<volume type="block"><name>{name}</name><capacity unit="G">{gb}</capacity>'
            f'<allocation unit="G">{gb}</allocation></volume>')


def _thin(name: str, gb: int, allocated_gb: int = 0) -> str:
    return (f'<volume type="file"><name>{name}</name><capacity unit="G">{gb}</capacity>'
            f'<allocation unit="G">{allocated_gb}</allocation>'
            '<target><format type="qcow2"/></target></volume>')


def node_xml() -> str:
    """The load host (see the module docstring)."""
    luns = "\n    ".join(_lun(f"lun-{i:02d}", 1) for i in range(FREE_LUNS))
    return f"""<node>
  <cpu><mhz>2400</mhz><model>x86_64</model><active>4</active><nodes>1</nodes>
       <sockets>1</sockets><cores>4</cores><threads>1</threads></cpu>
  <memory>16777216</memory>
  <domain type="test">
    <name>old01</name>
    <uuid>5b0c1e7a-4f0e-4a55-9a7e-0d6c6f1e2a01</uuid>
    <memory>524288</memory><vcpu>1</vcpu><os><type>hvm</type></os>
    <devices>
      <disk type="file" device="disk">
        <source file="/pools/dir/used-140g.qcow2"/><target dev="vda" bus="virtio"/>
      </disk>
    </devices>
  </domain>
  <pool type="iscsi">
    <name>pool-luns</name>
    <uuid>5b0c1e7a-4f0e-4a55-9a7e-0d6c6f1e2b01</uuid>
    <source><host name="iscsi.example.com"/><device path="iqn.2026-11.com.example:load"/></source>
    <target><path>/dev/disk/by-path</path></target>
    {luns}
    {_lun("lun-2g", 2)}
  </pool>
  <pool type="dir">
    <name>pool-dir</name>
    <uuid>5b0c1e7a-4f0e-4a55-9a7e-0d6c6f1e2b02</uuid>
    <target><path>/pools/dir</path></target>
    {_thin("used-140g.qcow2", 140)}
    {_thin("free-8g.qcow2", 8)}
    {_thin("free-2g.qcow2", 2)}
  </pool>
  <pool type="dir">
    <name>pool-images</name>
    <uuid>5b0c1e7a-4f0e-4a55-9a7e-0d6c6f1e2b03</uuid>
    <target><path>/pools/images</path></target>
    <volume type="file"><name>ipxe.iso</name><capacity unit="M">1</capacity>
      <allocation unit="M">1</allocation><target><format type="iso"/></target></volume>
  </pool>
</node>
"""


def provisioned(conn, pool: str) -> int:
    """The sum of the capacities of a pool's volumes, as libvirt reports them now."""
    return sum(v.info()[1] for v in conn.storagePoolLookupByName(pool).listAllVolumes())


async def test_500_concurrent_requests_share_scarce_storage_exactly(make_harness, tmp_path):
    host = tmp_path / "host_load.xml"
    host.write_text(node_xml())
    h = await make_harness(str(host), storage_pools=STORAGE_POOLS, sizes=SIZES,
                           templates=TEMPLATES)
    # The host is what the arithmetic above assumes.
    dir_pool = h.conn.storagePoolLookupByName("pool-dir")
    assert dir_pool.info()[1] == POOL_CAPACITY
    assert dir_pool.info()[3] == POOL_CAPACITY  # nothing allocated: space never binds
    before = provisioned(h.conn, "pool-dir")
    limit = int(POOL_CAPACITY * OVERCOMMIT)
    assert before + NEW_ROOM * GiB <= limit < before + (NEW_ROOM + 1) * GiB

    started = time.monotonic()
    # Every request is stored and its task spawned before the loop runs any of them.
    records = [h.submit(template="ipxe", size="one") for _ in range(REQUESTS)]
    assert len({r.id for r in records}) == REQUESTS
    results = await asyncio.wait_for(
        asyncio.gather(*(h.service.wait_terminal(r.id) for r in records)), 50)
    elapsed = time.monotonic() - started

    by_state = Counter(r.state for r in results)
    done = [r for r in results if r.state == State.DONE]
    failed = [r for r in results if r.state == State.FAILED]
    assert by_state == {State.DONE: FREE_LUNS + NEW_ROOM,
                        State.FAILED: REQUESTS - FREE_LUNS - NEW_ROOM}, (
        Counter(r.reason for r in failed).most_common(3), elapsed)

    reused = [r for r in done if not r.volume_owned]
    created = [r for r in done if r.volume_owned]
    assert len(reused) == FREE_LUNS
    assert len(created) == NEW_ROOM
    assert {r.volume_pool for r in reused} == {"pool-luns"}
    assert {r.volume_name for r in reused} == {f"lun-{i:02d}" for i in range(FREE_LUNS)}
    assert {r.volume_pool for r in created} == {"pool-dir"}
    assert all(r.volume_name == f"provisiond-{r.id}.qcow2" for r in created)

    # Every failure is for lack of storage, and holds nothing.
    assert all(NO_STORAGE in r.reason for r in failed), Counter(r.reason for r in failed)
    assert all(r.cleaned_up and r.volume_name is None for r in failed)

    # No volume claimed twice: distinct volumes per done request, one claim each in the
    # store, and claims only by done requests.
    volumes = [(r.volume_pool, r.volume_name) for r in done]
    assert len(set(volumes)) == len(volumes) == FREE_LUNS + NEW_ROOM
    rows = list(h.store.db.query("SELECT host, pool, volume, request_id FROM volume_claims"))
    assert len(rows) == len({(r["host"], r["pool"], r["volume"]) for r in rows}) == len(done)
    assert Counter(r["request_id"] for r in rows) == Counter(r.id for r in done)
    claims = {(r["pool"], r["volume"]): r["request_id"] for r in rows}
    assert set(claims) == set(volumes)
    # An iscsi target is storage other hosts could log in to: its LUNs are claimed under
    # the target's key, the rest under the host's name.
    assert {r["host"].split("@")[0] for r in rows} == {"testhost", "shared:pool-luns"}
    assert all(claims[(r.volume_pool, r.volume_name)] == r.id for r in done)
    # Space reserved, if any is still held, only for volumes that were created.
    assert {x.request_id for x in h.store.reservations_on("testhost")} <= {r.id for r in created}

    # No pool over-committed, as libvirt itself sees it.
    new = {n for n in h.volume_names("pool-dir") if n.startswith("provisiond-")}
    assert new == {r.volume_name for r in created}
    after = provisioned(h.conn, "pool-dir")
    assert after == before + NEW_ROOM * GiB
    assert after <= dir_pool.info()[1] * OVERCOMMIT
    assert not any(n.startswith("provisiond-") for n in h.volume_names("pool-luns"))
    # One domain per done request (plus old01), each on its own volume.
    domains = [d for d in h.conn.listAllDomains() if d.name() != "old01"]
    assert len(domains) == FREE_LUNS + NEW_ROOM


async def test_a_burst_fits_as_many_thin_volumes_as_requests_one_after_another(
        make_harness, tmp_path):
    # pool-dir as above, but free-8g allocates its 8 GiB: 92 GiB available. The
    # over-commit still leaves room for 100 new 1 GiB thin volumes, and one after another
    # all 100 are created (each allocates nothing, so available stays 92 GiB).
    host = tmp_path / "host_load_allocated.xml"
    host.write_text(node_xml().replace(_thin("free-8g.qcow2", 8), _thin("free-8g.qcow2", 8, 8)))
    h = await make_harness(str(host), storage_pools=STORAGE_POOLS, sizes=SIZES,
                           templates=TEMPLATES)
    assert h.conn.storagePoolLookupByName("pool-dir").info()[3] == 92 * GiB

    records = [h.submit(template="ipxe", size="one") for _ in range(FREE_LUNS + NEW_ROOM + 50)]
    results = await asyncio.wait_for(
        asyncio.gather(*(h.service.wait_terminal(r.id) for r in records)), 50)

    created = [r for r in results if r.state == State.DONE and r.volume_owned]
    assert len(created) == NEW_ROOM, Counter(
        r.reason.rsplit(";", 1)[-1] for r in results if r.state == State.FAILED)
