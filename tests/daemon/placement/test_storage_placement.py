"""The seed's placement rule: each clause by example, and one property over random hosts.

The live path (``explain=False``) and the dry run (``explain=True``) call the same
function; the property test checks on random inventories that they decide the same, that
the dry run's verdicts agree with the decision, and that both equal a brute-force reading
of the seed's rule written here from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import StoragePoolRef
from daemon.placement import CREATABLE_POOL_TYPES, QCOW2_POOL_TYPES, Decision, place_storage
from daemon.store import Reservation
from daemon.virt.inventory import DiskUse, HostInventory, PoolInfo, VolumeInfo
from daemon.virt.live_inventory import LiveInventory

GiB = 1024**3


def vol(pool: str, name: str, gib: int, fmt: str | None = "qcow2") -> VolumeInfo:
    return VolumeInfo(pool, name, f"/{pool}/{name}", gib * GiB, gib * GiB // 4, fmt)


def pool(name: str, *volumes: VolumeInfo, type: str = "dir", active: bool = True,
         capacity: int = 100, available: int = 80) -> PoolInfo:
    return PoolInfo(name, type, active, capacity * GiB, (capacity - available) * GiB,
                    available * GiB, volumes)


def uuid_of(domain: str) -> str:
    return f"uuid-{domain}"


def inventory(*pools: PoolInfo, used: dict[str, list[VolumeInfo]] | None = None,
              held: dict[tuple[str, str], str] | None = None,
              by_path: dict[str, list[VolumeInfo]] | None = None) -> LiveInventory:
    """A live inventory as a host read would load it: pools, and domains' disks (``used``:
    volume disks; ``by_path``: file disks, named by path only)."""
    uses = [DiskUse(domain, v.path, v.pool, v.name)
            for domain, vols in (used or {}).items() for v in vols]
    uses += [DiskUse(domain, v.path) for domain, vols in (by_path or {}).items() for v in vols]
    used = {**(used or {}), **(by_path or {})}
    domains = {uuid_of(domain): domain for domain in used}
    inv = LiveInventory("h")
    inv.load(inv.begin_read(), HostInventory("h", {p.name: p for p in pools}, tuple(uses)),
             domains)
    for (pool_name, name), holder in (held or {}).items():
        inv.hold(pool_name, name, holder)
    return inv


def refs(*names: str, overcommit: float = 1.0) -> list[StoragePoolRef]:
    return [StoragePoolRef(n, overcommit) for n in names]


def place(inv: LiveInventory, pools: list[StoragePoolRef], size: int, **kw) -> Decision:
    return place_storage(inv, pools, size_bytes=size * GiB, request_id="me", **kw)


# --------------------------------------------------------------------------- by example


def test_a_free_volume_of_the_right_size_is_reused_best_fit_first() -> None:
    inv = inventory(pool("a", vol("a", "v20", 20), vol("a", "v16", 16)),
                    pool("b", vol("b", "v15", 15)))
    decision = place(inv, refs("a", "b"), 15, tolerance_bytes=5 * GiB)
    assert (decision.action, decision.pool, decision.volume.name) == ("reuse", "b", "v15")
    assert decision.reason == "reusing free volume b/v15 (15 GiB)"


def test_equal_fits_go_to_the_earlier_pool_then_the_smaller_name() -> None:
    inv = inventory(pool("a", vol("a", "z", 15), vol("a", "y", 15)),
                    pool("b", vol("b", "a", 15)))
    assert place(inv, refs("b", "a"), 15).volume.name == "a"
    assert place(inv, refs("a", "b"), 15).volume.name == "y"


def test_volumes_in_use_claimed_images_templates_and_wrong_sizes_are_refused() -> None:
    used, claimed = vol("a", "used", 15), vol("a", "claimed", 15)
    iso, template = vol("a", "boot.iso", 15, "raw"), vol("a", "golden", 15)
    small, large = vol("a", "small", 10), vol("a", "large", 40)
    inv = inventory(pool("a", used, claimed, iso, template, small, large, capacity=200),
                    used={"web01": [used]}, held={("a", "claimed"): "r-other"})
    decision = place(inv, refs("a"), 15, template_volumes=[("a", "golden")], explain=True)

    assert decision.action == "create"
    assert [(v.volume, v.reason) for v in decision.verdicts if v.stage == "reuse"] == [
        ("used", "in use by domain web01"),
        ("claimed", "claimed by request r-other"),
        ("boot.iso", "ISO image"),
        ("golden", "template image"),
        ("small", "too small: 10 GiB, need 15 GiB"),
        ("large", "too large: 40 GiB, need exactly 15 GiB"),
    ]


def test_pools_that_are_missing_inactive_or_cannot_create_are_skipped_with_reasons() -> None:
    inv = inventory(pool("down", vol("down", "v", 15), active=False),
                    pool("lun", type="iscsi"), pool("fs"))
    decision = place(inv, refs("ghost", "down", "lun", "fs"), 15)
    assert (decision.action, decision.pool, decision.volume_format) == ("create", "fs", "qcow2")

    decision = place(inv, refs("ghost", "down", "lun"), 15)
    assert decision.action == "none"
    assert decision.reason == (
        "no free volume of the right size and no pool with room: "
        "ghost: no storage pool of this name on the host; down: pool is not active; "
        "lun: pool type 'iscsi' cannot create volumes")


def test_raw_reservations_take_space_thin_ones_only_count_against_over_commit() -> None:
    inv = inventory(pool("lvm", type="logical", capacity=100, available=30))
    raw = [Reservation("r1", "h", "lvm", "new1", 20 * GiB)]
    decision = place(inv, refs("lvm"), 15, reservations=raw)
    assert decision.action == "none"
    assert "not enough space: 30 GiB available minus 20 GiB reserved, need 15 GiB" in \
        decision.reason
    # The request's own reservation does not count against itself.
    own = [Reservation("me", "h", "lvm", "new1", 20 * GiB)]
    assert place(inv, refs("lvm"), 15, reservations=own).action == "create"

    files = inventory(pool("dir", vol("dir", "big", 60), capacity=100, available=80))
    thin = [Reservation("r1", "h", "dir", "new1", 30 * GiB)]
    assert place(files, refs("dir"), 5, reservations=thin).action == "create"
    decision = place(files, refs("dir"), 15, reservations=thin)
    assert "would over-commit: 90 GiB provisioned + 15 GiB > 100 GiB x 1" in decision.reason
    assert place(files, refs("dir", overcommit=2.0), 15, reservations=thin).action == "create"


def test_tolerance_widens_the_right_size_to_a_range() -> None:
    inv = inventory(pool("a", vol("a", "v17", 17), vol("a", "v18", 18)))
    decision = place(inv, refs("a"), 15, tolerance_bytes=2 * GiB, explain=True)
    assert (decision.action, decision.volume.name) == ("reuse", "v17")
    assert [(v.volume, v.accepted, v.reason) for v in decision.verdicts
            if v.stage == "reuse"] == [
        ("v17", True, "free, 17 GiB"),
        ("v18", False, "too large: 18 GiB, need 15 GiB (+2 GiB tolerance)"),
    ]
    assert place(inv, refs("a"), 15).action == "create"  # no tolerance: exactly 15 GiB


def test_disks_and_templates_named_by_path_count_too() -> None:
    shared, golden, spare = vol("a", "shared", 15), vol("a", "golden", 15), vol("a", "x", 15)
    inv = inventory(pool("a", shared, golden, spare),
                    by_path={"db01": [shared], "db02": [shared]})
    decision = place(inv, refs("a"), 15, template_paths=["/a/golden"], explain=True)
    assert (decision.action, decision.volume.name) == ("reuse", "x")
    assert [(v.volume, v.reason) for v in decision.verdicts if v.stage == "reuse"] == [
        ("shared", "in use by domain db01"),  # the earlier defined of its users
        ("golden", "template image"),
        ("x", "free, 15 GiB"),
    ]


def test_the_first_pool_with_room_wins_and_gets_the_format_its_type_allows() -> None:
    inv = inventory(pool("full", available=10), pool("lvm", type="logical"), pool("dir"))
    decision = place(inv, refs("full", "lvm", "dir"), 15)
    assert (decision.action, decision.pool, decision.volume_format) == ("create", "lvm", None)
    assert decision.new_volume_bytes == 15 * GiB
    assert decision.reason == "creating a 15 GiB volume in pool lvm"
    assert place(inv, refs("dir", "lvm"), 15).volume_format == "qcow2"


def test_a_volume_freed_after_the_load_is_offered_again() -> None:
    v = vol("a", "v", 15)
    inv = inventory(pool("a", v), used={"web01": [v]}, held={("a", "v"): "r1"})
    inv.remove_domain(uuid_of("web01"))
    assert place(inv, refs("a"), 15, explain=True).verdicts[0].reason == \
        "claimed by request r1"
    inv.release("a", "v")
    assert place(inv, refs("a"), 15).volume == v


def test_the_dry_run_explains_every_pool_even_when_a_volume_is_reused() -> None:
    inv = inventory(pool("a", vol("a", "v15", 15)), pool("b"), pool("c", type="iscsi"))
    decision = place(inv, refs("a", "b", "c"), 15, explain=True)
    assert decision.action == "reuse"
    assert [(v.stage, v.pool, v.accepted, v.reason) for v in decision.verdicts] == [
        ("reuse", "a", True, "free, 15 GiB"),
        ("create", "a", True, "type dir, 80 GiB free for 15 GiB"),
        ("create", "b", True, "has room, but an earlier pool comes first"),
        ("create", "c", False, "pool type 'iscsi' cannot create volumes"),
    ]
    assert place(inv, refs("a", "b", "c"), 15).verdicts == ()  # the live path: none


# --------------------------------------------------------------------------- the property


@dataclass(frozen=True)
class Host:
    """A random host, loaded, then changed as the daemon and libvirt's events change it."""

    pools: tuple[PoolInfo, ...]
    order: tuple[str, ...]
    used: tuple[tuple[tuple[str, str], bool], ...]  # (volume, named by path only)
    held: tuple[tuple[str, str], ...]
    templates: tuple[tuple[tuple[str, str], bool], ...]  # (volume, named by path)
    reservations: tuple[Reservation, ...]
    size: int
    tolerance: int
    overcommit: float
    # after the load: claims ended, domains undefined, volumes the daemon created
    released: tuple[tuple[str, str], ...] = ()
    undefined: tuple[int, ...] = ()
    created: tuple[VolumeInfo, ...] = ()

    def volumes(self) -> dict[tuple[str, str], VolumeInfo]:
        """Every volume at the end, by (pool, name)."""
        vols = [v for p in self.pools for v in p.volumes]
        vols += [v for v in self.created if any(p.name == v.pool for p in self.pools)]
        return {(v.pool, v.name): v for v in vols}

    def in_use(self) -> set[tuple[str, str]]:
        return {k for i, (k, _) in enumerate(self.used) if i not in self.undefined}

    def claimed(self) -> set[tuple[str, str]]:
        return set(self.held) - set(self.released)


POOL_TYPES = sorted(CREATABLE_POOL_TYPES) + ["iscsi", "mpath", "scsi"]


@st.composite
def hosts(draw: st.DrawFn) -> Host:
    names = draw(st.lists(st.sampled_from(["p0", "p1", "p2", "p3"]), min_size=1, max_size=4,
                          unique=True))
    pools = []
    all_vols = []
    for name in names:
        vols = []
        for i in range(draw(st.integers(0, 6))):
            iso = draw(st.sampled_from(["", "", "", ".iso", ".ISO"]))
            fmt = draw(st.sampled_from([None, "qcow2", "raw", "iso"]))
            vols.append(vol(name, f"v{i}{iso}", draw(st.integers(1, 12)), fmt))
        all_vols += vols
        capacity = draw(st.integers(10, 120))
        pools.append(pool(name, *vols, type=draw(st.sampled_from(POOL_TYPES)),
                          active=draw(st.booleans()) or draw(st.booleans()),
                          capacity=capacity, available=draw(st.integers(0, capacity))))
    keys = [(v.pool, v.name) for v in all_vols]
    subset = st.lists(st.sampled_from(keys), unique=True) if keys else st.just([])
    flagged = st.lists(st.tuples(st.sampled_from(keys), st.booleans()),
                       unique_by=lambda t: t[0]) if keys else st.just([])
    order = draw(st.permutations(names + ["ghost"]))
    reservations = tuple(
        Reservation(draw(st.sampled_from(["me", "r1", "r2"])) + f"-{i}" * (i > 0), "h",
                    draw(st.sampled_from(names)),
                    draw(st.sampled_from([f"new{i}", *[k[1] for k in keys]])),
                    draw(st.integers(1, 20)) * GiB)
        for i in range(draw(st.integers(0, 3))))
    used, held = tuple(draw(flagged)), tuple(draw(subset))
    created = tuple(  # no allocation yet (thin), so the pools' free space stays as read
        VolumeInfo(p, f"new{i}", f"/{p}/new{i}", draw(st.integers(1, 12)) * GiB, 0, "qcow2")
        for i, p in enumerate(draw(st.lists(st.sampled_from(names), max_size=3))))
    return Host(tuple(pools), tuple(order), used, held, tuple(draw(flagged)), reservations,
                draw(st.integers(1, 12)), draw(st.integers(0, 3)),
                draw(st.sampled_from([1.0, 1.5, 3.0])),
                released=tuple(draw(st.lists(st.sampled_from(held), unique=True)))
                if held else (),
                undefined=tuple(draw(st.lists(st.integers(0, len(used) - 1), unique=True)))
                if used else (),
                created=created)


def live_inventory(host: Host) -> LiveInventory:
    by_key = {(v.pool, v.name): v for p in host.pools for v in p.volumes}
    uses = [(f"dom{i}", [by_key[k]], by_path) for i, (k, by_path) in enumerate(host.used)]
    inv = inventory(*host.pools, used={d: vs for d, vs, by_path in uses if not by_path},
                    by_path={d: vs for d, vs, by_path in uses if by_path},
                    held={k: "r-held" for k in host.held})
    for i in host.undefined:
        inv.remove_domain(uuid_of(f"dom{i}"))
    for key in host.released:
        inv.release(*key)
    for v in host.created:
        inv.add_volume(v)
    return inv


def fits(host: Host) -> list[VolumeInfo]:
    """The seed's stage 1, read literally: every volume of every active pool that is free
    and of the right size."""
    pools = {p.name: p for p in host.pools}
    usable = {n for n in host.order if n in pools and pools[n].active}
    template_paths = {f"/{p}/{n}" for (p, n), by_path in host.templates if by_path}
    taken = host.in_use() | host.claimed() | {k for k, by_path in host.templates
                                               if not by_path}
    low, high = host.size * GiB, (host.size + host.tolerance) * GiB
    return [v for k, v in host.volumes().items()
            if v.pool in usable and k not in taken and v.path not in template_paths
            and v.format != "iso" and not v.name.lower().endswith(".iso")
            and low <= v.capacity <= high]


def reference(host: Host) -> tuple[object, ...]:
    """The seed's rule, read literally: a brute force over every volume and pool."""
    free = fits(host)
    if free:
        best = min(free, key=lambda v: (v.capacity, host.order.index(v.pool), v.name))
        return ("reuse", best.pool, best.name)
    pools = {p.name: p for p in host.pools}
    volumes = host.volumes().values()
    for p in (pools[n] for n in host.order if n in pools and pools[n].active):
        if p.type not in CREATABLE_POOL_TYPES:
            continue
        names = {v.name for v in volumes if v.pool == p.name}
        pending = [r for r in host.reservations if r.pool == p.name
                   and r.request_id != "me" and r.volume not in names]
        space = sum(r.bytes for r in pending) if p.type not in QCOW2_POOL_TYPES else 0
        provisioned = sum(v.capacity for v in volumes if v.pool == p.name) + \
            sum(r.bytes for r in pending)
        if p.available - space >= host.size * GiB and \
                provisioned + host.size * GiB <= int(p.capacity * host.overcommit):
            return ("create", p.name, "qcow2" if p.type in QCOW2_POOL_TYPES else None)
    return ("none",)


def summary(decision: Decision) -> tuple[object, ...]:
    if decision.action == "reuse":
        assert decision.volume is not None
        return ("reuse", decision.volume.pool, decision.volume.name)
    if decision.action == "create":
        return ("create", decision.pool, decision.volume_format)
    return ("none",)


@settings(max_examples=300, deadline=None)
@given(hosts())
def test_the_live_path_and_the_dry_run_decide_alike_and_as_the_seed_says(host: Host) -> None:
    inv = live_inventory(host)
    kwargs = dict(size_bytes=host.size * GiB, request_id="me",
                  tolerance_bytes=host.tolerance * GiB, reservations=host.reservations,
                  template_volumes=[k for k, by_path in host.templates if not by_path],
                  template_paths=[f"/{p}/{n}" for (p, n), by_path in host.templates
                                  if by_path])
    order = refs(*host.order, overcommit=host.overcommit)
    live = place_storage(inv, order, **kwargs)
    dry = place_storage(inv, order, explain=True, **kwargs)

    # (a) and (c): the same decision, and the seed's.
    assert summary(live) == summary(dry) == reference(host)
    assert live.new_volume_bytes == dry.new_volume_bytes == \
        (host.size * GiB if live.action == "create" else 0)
    assert live.reason == dry.reason
    # (b) The dry run's verdicts agree with its decision, and accept exactly the fits.
    reuse_ok = [v for v in dry.verdicts if v.stage == "reuse" and v.accepted]
    create_ok = [v for v in dry.verdicts if v.stage == "create" and v.accepted]
    assert sorted((v.pool, v.volume) for v in reuse_ok) == \
        sorted((v.pool, v.name) for v in fits(host))
    if dry.action == "reuse":
        volumes = host.volumes()
        best = min(reuse_ok, key=lambda v: (volumes[(v.pool, v.volume)].capacity,
                                            host.order.index(v.pool), v.volume))
        assert (best.pool, best.volume) == (dry.volume.pool, dry.volume.name)
    else:
        assert reuse_ok == []
        assert (create_ok[0].pool if create_ok else None) == dry.pool
    # Every pool in the order is explained, in order; the live path explains only failure.
    assert [v.pool for v in dry.verdicts if v.stage == "create"] == list(host.order)
    assert live.verdicts == (() if live.action != "none" else
                             tuple(v for v in dry.verdicts if v.stage == "create"))
