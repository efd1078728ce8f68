"""The live inventory's bookkeeping: concurrent reads, claims, the disks domains use."""

from __future__ import annotations

from daemon.virt.inventory import DiskUse, HostInventory, PoolInfo, VolumeInfo
from daemon.virt.live_inventory import LiveInventory

GiB = 1024**3


def pool(*volumes: VolumeInfo) -> PoolInfo:
    return PoolInfo("p", "dir", True, 100 * GiB, 0, 100 * GiB, volumes)


def test_concurrent_reads_each_replay_the_changes_made_during_them() -> None:
    inv = LiveInventory("h")
    inv.load(inv.begin_read(), HostInventory("h", {"p": pool()}), {})
    first, second = inv.begin_read(), inv.begin_read()  # both still empty: equal lists
    inv.apply_pools(second, {"p": pool()})  # the second read ends first
    created = VolumeInfo("p", "new", "/p/new", GiB, 0, "qcow2")
    inv.add_volume(created)  # made while the first read is still out
    inv.apply_pools(first, {"p": pool()})  # its (older) result lacks the new volume...
    assert inv.has_volume("p", "new")  # ...which is replayed onto it
    assert inv.pool("p")[1] == GiB


def test_a_held_volume_is_not_offered_and_released_it_is() -> None:
    inv = LiveInventory("h")
    vol = VolumeInfo("p", "v", "/p/v", GiB, 0, "qcow2")
    inv.load(inv.begin_read(), HostInventory("h", {"p": pool(vol)}), {})
    assert inv.best_free_volume(["p"], GiB, GiB, lambda v: False) == vol
    inv.hold("p", "v", "r1")
    assert inv.best_free_volume(["p"], GiB, GiB, lambda v: False) is None
    assert inv.holder_of(vol) == "r1"
    inv.release("p", "v")
    assert inv.best_free_volume(["p"], GiB, GiB, lambda v: False) == vol
    assert inv.holder_of(vol) is None


def test_a_volume_is_used_by_the_earliest_defined_domain_naming_it() -> None:
    inv = LiveInventory("h")
    vol = VolumeInfo("p", "v", "/p/v", GiB, 0, "qcow2")
    inv.load(inv.begin_read(), HostInventory("h", {"p": pool(vol)},
                                             (DiskUse("web02", "/p/v"),)), {"u2": "web02"})
    assert inv.user_of(vol) == "web02"  # by path
    inv.set_domain("u1", (DiskUse("web01", "/p/v", "p", "v"),))
    assert inv.user_of(vol) == "web01"  # by pool/volume first
    inv.remove_domain("u1")
    inv.set_domain("u1", (DiskUse("web01", "/p/v"),))
    assert inv.user_of(vol) == "web02"  # defined before web01 was redefined
    inv.remove_domain("u2")
    inv.remove_domain("u1")
    assert inv.user_of(vol) is None
    assert inv.best_free_volume(["p"], GiB, GiB, lambda v: False) == vol
