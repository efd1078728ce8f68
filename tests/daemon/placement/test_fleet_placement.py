"""Fifty test-driver hosts in one daemon: requests spread by the policy, never beyond a
host's capacity, and storage the hosts share claimed once and reserved once."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from harness.fleet import SHARED_VOLUME_GIB, fleet_shapes, shared_volume_name, write_fleet
from statemachines.provisioning import State

GIB_KIB = 1024**2
HOSTS = 50


async def run_all(h: Any, n: int, size: str) -> list[Any]:
    """Submit ``n`` requests at once and wait for every one to end."""
    records = [h.submit(size=size) for _ in range(n)]
    return list(await asyncio.gather(*(h.service.wait_terminal(r.id, timeout=120)
                                       for r in records)))


def placed_on(records: list[Any]) -> dict[str, tuple[int, int]]:
    """(vCPUs, memory in KiB) of the done requests on each host."""
    usage: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        if r.state == State.DONE:
            usage[r.host][0] += r.cpus
            usage[r.host][1] += r.memory_kib
    return {host: (cpus, memory) for host, (cpus, memory) in usage.items()}


@pytest.mark.parametrize("policy", ["spread", "pack"])
async def test_fifty_hosts_are_filled_exactly_to_capacity_and_no_further(
        make_harness, tmp_path: Path, policy: str) -> None:
    hosts = write_fleet(tmp_path / "fleet", HOSTS, seed=7)
    shapes = dict(zip((h["name"] for h in hosts), fleet_shapes(HOSTS, seed=7)))
    # 4 vcpus and 8 GiB each: a host holds min(cpus / 4, memory / 8 GiB) of them.
    room = {name: min(cpus // 4, memory // (8 * GIB_KIB)) for name, (cpus, memory)
            in shapes.items()}
    h = await make_harness(hosts=hosts, storage_pools=["pool-dir"],
                           sizes={"big": {"cpus": 4, "memory": 8 * GIB_KIB,
                                          "storage_size_in_gb": 1}},
                           hardware={"cpu_allocation_ratio": 1, "ram_allocation_ratio": 1,
                                     "host_policy": policy})
    extra = 7
    records = await run_all(h, sum(room.values()) + extra, "big")

    done = [r for r in records if r.state == State.DONE]
    failed = [r for r in records if r.state == State.FAILED]
    assert len(done) == sum(room.values()) and len(failed) == extra
    assert all("no host of hw can hold 4 vcpus" in r.reason for r in failed)
    # Every host full, none beyond: its share is exactly what it has room for.
    assert Counter(r.host for r in done) == Counter(room)
    for host, (cpus, memory) in placed_on(records).items():
        assert cpus <= shapes[host][0] and memory <= shapes[host][1]
    # Each VM's disk was made on the host it was defined on.
    for r in done:
        assert r.volume_pool == "pool-dir"
        assert r.volume_name in {v.name for v in
                                 h.service.hosts[r.host].inventory.pool_volumes("pool-dir")}


@pytest.mark.parametrize("policy", ["spread", "pack"])
async def test_the_policy_decides_which_host_each_request_gets(
        make_harness, tmp_path: Path, policy: str) -> None:
    hosts = write_fleet(tmp_path / "fleet", HOSTS, seed=3)
    shapes = dict(zip((h["name"] for h in hosts), fleet_shapes(HOSTS, seed=3)))
    h = await make_harness(hosts=hosts, storage_pools=["pool-dir"],
                           sizes={"one": {"cpus": 1, "memory": GIB_KIB,
                                          "storage_size_in_gb": 1}},
                           hardware={"cpu_allocation_ratio": 1, "ram_allocation_ratio": 1,
                                     "host_policy": policy})
    records = []
    for _ in range(40):  # one at a time: each choice sees the ones before it
        records.append(await h.run(size="one"))
    assert all(r.state == State.DONE for r in records)
    placed = placed_on(records)
    free = {name: memory - placed.get(name, (0, 0))[1] for name, (_c, memory) in
            shapes.items()}
    cpus_left = {name: cpus - placed.get(name, (0, 0))[0] for name, (cpus, _m) in
                 shapes.items()}
    used = set(placed)
    open_hosts = [n for n in shapes if n not in used and cpus_left[n] >= 1]
    for host in used:
        # When it last got one, it had 1 GiB more free than now, and the policy
        # preferred it over every host that got none (their free memory never moved).
        before = free[host] + GIB_KIB
        for other in open_hosts:
            if policy == "spread":
                assert before >= free[other], (host, other)
            else:
                assert before <= free[other], (host, other)
    if policy == "spread":
        assert len(used) > 1
    else:  # pack fills the smallest hosts first: few hosts take all forty
        assert len(used) < 40 and min(shapes[n][1] for n in used) == min(
            memory for _c, memory in shapes.values())


async def test_a_shared_pool_is_one_pool_for_all_fifty_hosts(make_harness,
                                                               tmp_path: Path) -> None:
    free_volumes = 20
    hosts = write_fleet(tmp_path / "fleet", HOSTS, seed=5, shared_volumes=free_volumes)
    # The netfs pool holds 20 x 10 GiB; with 100 GiB of capacity x 3, ten more fit.
    h = await make_harness(hosts=hosts,
                           storage_pools=[{"name": "pool-shared", "overcommit": 3}],
                           sizes={"ten": {"cpus": 1, "memory": GIB_KIB,
                                          "storage_size_in_gb": SHARED_VOLUME_GIB}})
    records = await run_all(h, 40, "ten")

    done = [r for r in records if r.state == State.DONE]
    reused = [r for r in done if not r.volume_owned]
    created = [r for r in done if r.volume_owned]
    failed = [r for r in records if r.state == State.FAILED]
    # Each free volume went to exactly one request, whichever host it landed on.
    assert sorted(r.volume_name for r in reused) == [shared_volume_name(i)
                                                     for i in range(free_volumes)]
    assert len({r.host for r in reused}) > 1  # spread over hosts, one storage
    # Room for ten new volumes in the one pool: ten, not ten per host.
    assert len(created) == 10 and len(failed) == 10
    assert all("would over-commit" in r.reason for r in failed)
    # Claims are recorded once, under the shared storage's key.
    rows = list(h.store.db.query("SELECT host, pool, volume FROM volume_claims"))
    assert len(rows) == len({(r["pool"], r["volume"]) for r in rows}) == 30
    assert {r["host"] for r in rows} == {
        "shared:pool-shared@netfs:dir=/export/vms;host=nfs.example"}
    # Every host sees every claim and every new volume.
    for name in h.service.hosts:
        inventory = h.service.hosts[name].inventory
        for r in done:
            assert inventory.holder_of(inventory.volume("pool-shared", r.volume_name)) == r.id

    # Deleting a VM gives its room back to the one pool, for a request on any host.
    from tests.conftest import ALICE

    victim = created[0]
    await h.service.operate(ALICE, victim.id, "delete")
    await h.service.wait_terminal(victim.id, timeout=20)
    assert h.store.get_vm(victim.id).state == "deleted"
    for name in h.service.hosts:
        assert not h.service.hosts[name].inventory.has_volume("pool-shared",
                                                              victim.volume_name)
    again = await h.run(size="ten")
    assert again.state == State.DONE and again.volume_owned, again.reason


def _connection_of(h: Any, host: str) -> Any:
    """The raw libvirt connection the harness opened to a fleet host."""
    return next(c for c in h.connections if f"/{host}.xml" in c.getURI())


async def test_a_shared_volume_another_hosts_domain_uses_is_not_free(make_harness,
                                                                      tmp_path: Path) -> None:
    hosts = write_fleet(tmp_path / "fleet", 4, seed=5, shared_volumes=2)
    h = await make_harness(hosts=hosts,
                           storage_pools=[{"name": "pool-shared", "overcommit": 3}],
                           sizes={"ten": {"cpus": 1, "memory": GIB_KIB,
                                          "storage_size_in_gb": SHARED_VOLUME_GIB}})
    # Someone defines a domain on host-02 with free-000 as its disk, behind provisiond.
    busy = shared_volume_name(0)
    _connection_of(h, "host-02").defineXML(
        "<domain type='test'><name>theirs</name><memory>65536</memory><os><type>hvm</type>"
        "</os><devices><disk type='volume' device='disk'><source pool='pool-shared' "
        f"volume='{busy}'/><target dev='vda'/></disk></devices></domain>")
    for _ in range(100):  # its DEFINED event reaches host-02's inventory
        inventory = h.service.hosts["host-02"].inventory
        if inventory.user_of(inventory.volume("pool-shared", busy)) == "theirs":
            break
        await asyncio.sleep(0.02)
    from daemon.service import ProvisioningRequest
    from tests.conftest import ALICE

    dry = await h.service.explain(ALICE, ProvisioningRequest("ipxe", "ten", "rp"))
    said = {v.volume: v.reason for v in dry.verdicts if v.stage == "reuse"}
    if dry.host != "host-02":
        assert said[busy] == "in use by domain theirs on host host-02"
    records = await run_all(h, 3, "ten")
    assert all(r.state == State.DONE for r in records)
    # Whichever host each landed on, none took the disk of host-02's domain.
    assert busy not in {r.volume_name for r in records}
    assert sorted(r.volume_name for r in records if not r.volume_owned) == [
        shared_volume_name(1)]


async def test_claims_an_older_daemon_recorded_under_a_host_move_to_the_shared_key(
        make_harness, tmp_path: Path) -> None:
    hosts = write_fleet(tmp_path / "fleet", 3, seed=5, shared_volumes=2)
    h = await make_harness(hosts=hosts, storage_pools=["pool-shared"],
                           sizes={"ten": {"cpus": 1, "memory": GIB_KIB,
                                          "storage_size_in_gb": SHARED_VOLUME_GIB}})
    # As a database of an older provisiond has it: the claim under the host's name.
    h.store.claim_volume("host-00", "pool-shared", shared_volume_name(0), "r-older")
    h.service.relocate_claims()  # what the start (and a reload) does
    rows = list(h.store.db.query("SELECT host, volume, request_id FROM volume_claims"))
    assert rows == [{"host": "shared:pool-shared@netfs:dir=/export/vms;host=nfs.example",
                     "volume": shared_volume_name(0), "request_id": "r-older"}]
    for name in h.service.hosts:  # held wherever the volume is seen
        inventory = h.service.hosts[name].inventory
        assert inventory.holder_of(inventory.volume("pool-shared",
                                                    shared_volume_name(0))) == "r-older"
    records = await run_all(h, 2, "ten")
    assert [r.volume_name for r in records if not r.volume_owned] == [shared_volume_name(1)]
