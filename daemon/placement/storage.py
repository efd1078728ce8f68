"""Storage placement: the seed's attach-or-create rule, as one pure function.

1. Among the active storage pools of the hardware pool, a *free* volume of the right size:
   used as a disk by no domain, claimed by no other live request, not a template or ISO
   image, capacity within [size, size + tolerance]. Best fit (smallest capacity) wins.
2. Else the first pool, in configured order, whose type can create volumes and that has
   room: libvirt's available space minus what other requests' pending reservations
   will allocate (nothing for thin qcow2, the whole size for raw) holds the size, and the pool's provisioned capacity (its volumes' capacities + pending
   reservations + this one) stays within capacity x over-commit ratio.
3. Else no storage, with each pool's reason.

It reads an inventory snapshot and the store's claims and reservations, and returns a
decision with a verdict for every candidate; the same result serves the dry run. The
engine makes it race-free by claiming the decision in the store without yielding to the
event loop between deciding and claiming.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

from daemon.config import StoragePoolRef
from daemon.virt.inventory import GiB, HostInventory, PoolInfo, VolumeInfo, gib
from daemon.virt.live_inventory import LiveInventory, is_image
from daemon.store import Reservation

CREATABLE_POOL_TYPES = frozenset(
    {"dir", "fs", "netfs", "logical", "zfs", "rbd", "gluster", "vstorage", "disk"}
)
"""Pool types on which libvirt can create volumes (never iscsi, iscsi-direct, scsi, mpath)."""

QCOW2_POOL_TYPES = frozenset({"dir", "fs", "netfs", "gluster", "vstorage"})
"""Pool types whose volumes are files, so qcow2 is available."""


@dataclass(frozen=True)
class Verdict:
    """Why a candidate (a volume to reuse, or a pool to create in) was taken or refused."""

    stage: Literal["reuse", "create"]
    pool: str
    volume: str | None
    accepted: bool
    reason: str

    def to_json(self) -> dict[str, object]:
        """As the API shows it."""
        return {"stage": self.stage, "pool": self.pool, "volume": self.volume,
                "verdict": "ok" if self.accepted else "refused", "reason": self.reason}


@dataclass(frozen=True)
class Decision:
    """The outcome of placement: reuse a volume, create one in a pool, or no storage."""

    action: Literal["reuse", "create", "none"]
    pool: str | None = None
    volume: VolumeInfo | None = None
    new_volume_bytes: int = 0
    volume_format: str | None = None
    verdicts: tuple[Verdict, ...] = field(default=())

    @property
    def reason(self) -> str:
        """One line for the log: what was chosen, or why nothing could be."""
        if self.action == "reuse" and self.volume:
            return (f"reusing free volume {self.volume.pool}/{self.volume.name} "
                    f"({gib(self.volume.capacity)})")
        if self.action == "create":
            return f"creating a {gib(self.new_volume_bytes)} volume in pool {self.pool}"
        refused = [v for v in self.verdicts if v.stage == "create"]
        return "no free volume of the right size and no pool with room: " + "; ".join(
            f"{v.pool}: {v.reason}" for v in refused) if refused else "no storage pool configured"


def place_storage(
    inventory: HostInventory,
    pools: Iterable[StoragePoolRef],
    *,
    size_bytes: int,
    request_id: str,
    tolerance_bytes: int = 0,
    claims: dict[tuple[str, str], str] | None = None,
    reservations: Iterable[Reservation] = (),
    template_volumes: Iterable[tuple[str, str]] = (),
    template_paths: Iterable[str] = (),
) -> Decision:
    """Decide where a request's volume comes from; see the module docstring for the rule."""
    pools = list(pools)
    claims = claims or {}
    templates = set(template_volumes)
    template_path_set = set(template_paths)
    verdicts: list[Verdict] = []

    # Stage 1: a free volume of the right size, best fit.
    fits: list[tuple[int, int, str, VolumeInfo]] = []
    for order, ref in enumerate(pools):
        pool = inventory.pools.get(ref.name)
        unusable = _pool_unusable(pool, ref.name)
        if unusable:
            verdicts.append(Verdict("reuse", ref.name, None, False, unusable))
            continue
        assert pool is not None
        for vol in pool.volumes:
            why = _volume_refusal(vol, inventory, claims, request_id, templates,
                                  template_path_set, size_bytes, tolerance_bytes)
            if why is None:
                own = claims.get((vol.pool, vol.name)) == request_id
                # Our own earlier claim (a resumed request) sorts first, then best fit.
                fits.append((0 if own else 1, vol.capacity, f"{order:06d}/{vol.name}", vol))
                verdicts.append(Verdict("reuse", ref.name, vol.name, True,
                                        f"free, {gib(vol.capacity)}"))
            else:
                verdicts.append(Verdict("reuse", ref.name, vol.name, False, why))

    # Stage 2: the first pool that can create volumes and has room (always evaluated,
    # so the dry run shows every pool's verdict).
    names = {name: {v.name for v in p.volumes} for name, p in inventory.pools.items()}
    pending = _pending_reservations(
        reservations, request_id, lambda pool, vol: vol in names.get(pool, ()),
        lambda pool: inventory.pools[pool].type if pool in inventory.pools else None)
    chosen_pool: PoolInfo | None = None
    for ref in pools:
        pool = inventory.pools.get(ref.name)
        held = pending.get(ref.name, _Pending())
        why = _pool_unusable(pool, ref.name) or _creation_refusal(
            pool, ref, size_bytes, held, sum(v.capacity for v in pool.volumes) if pool else 0)
        if why is None and chosen_pool is None:
            chosen_pool = pool
            verdicts.append(Verdict("create", ref.name, None, True, _room_text(
                pool, size_bytes, held)))
        elif why is None:
            verdicts.append(Verdict("create", ref.name, None, True,
                                    "has room, but an earlier pool comes first"))
        else:
            verdicts.append(Verdict("create", ref.name, None, False, why))

    if fits:
        vol = min(fits, key=lambda f: f[:3])[3]
        return Decision("reuse", vol.pool, vol, verdicts=tuple(verdicts))
    if chosen_pool is not None:
        fmt = "qcow2" if chosen_pool.type in QCOW2_POOL_TYPES else None
        return Decision("create", chosen_pool.name, None, size_bytes, fmt, tuple(verdicts))
    return Decision("none", verdicts=tuple(verdicts))


def _pool_unusable(pool: PoolInfo | None, name: str) -> str | None:
    if pool is None:
        return "no storage pool of this name on the host"
    if not pool.active:
        return "pool is not active"
    return None


def _volume_refusal(vol: VolumeInfo, inventory: HostInventory, claims: dict[tuple[str, str], str],
                    request_id: str, templates: set[tuple[str, str]], template_paths: set[str],
                    size_bytes: int, tolerance_bytes: int) -> str | None:
    user = inventory.user_of(vol)
    if user is not None:
        return f"in use by domain {user}"
    if (vol.pool, vol.name) in templates or vol.path in template_paths:
        return "template image"
    if is_image(vol):
        return "ISO image"
    holder = claims.get((vol.pool, vol.name))
    if holder is not None and holder != request_id:
        return f"claimed by request {holder}"
    if vol.capacity < size_bytes:
        return f"too small: {gib(vol.capacity)}, need {gib(size_bytes)}"
    if vol.capacity > size_bytes + tolerance_bytes:
        if tolerance_bytes:
            return (f"too large: {gib(vol.capacity)}, need {gib(size_bytes)} "
                    f"(+{gib(tolerance_bytes)} tolerance)")
        return f"too large: {gib(vol.capacity)}, need exactly {gib(size_bytes)}"
    return None


@dataclass
class _Pending:
    """What other requests' reservations hold in a pool: capacity (for the over-commit
    check) and space (what their volumes allocate when created: nothing for thin
    qcow2, the whole size for raw volumes)."""

    capacity: int = 0
    space: int = 0


def _pending_reservations(reservations: Iterable[Reservation], request_id: str,
                          exists: Callable[[str, str], bool],
                          pool_type: Callable[[str], str | None]) -> dict[str, _Pending]:
    """Reservations per pool for volumes not created yet (the rest are counted by libvirt
    already). The request's own reservation is not counted against itself."""
    pending: dict[str, _Pending] = {}
    for r in reservations:
        if r.request_id == request_id or exists(r.pool, r.volume):
            continue
        entry = pending.setdefault(r.pool, _Pending())
        entry.capacity += r.bytes
        if pool_type(r.pool) not in QCOW2_POOL_TYPES:
            entry.space += r.bytes
    return pending


def _creation_refusal(pool: PoolInfo | None, ref: StoragePoolRef, size_bytes: int,
                      reserved: _Pending, volumes_capacity: int) -> str | None:
    assert pool is not None
    if pool.type not in CREATABLE_POOL_TYPES:
        return f"pool type '{pool.type}' cannot create volumes"
    free = pool.available - reserved.space
    if free < size_bytes:
        held = f" minus {gib(reserved.space)} reserved" if reserved.space else ""
        return (f"not enough space: {gib(pool.available)} available{held}, "
                f"need {gib(size_bytes)}")
    provisioned = volumes_capacity + reserved.capacity
    limit = int(pool.capacity * ref.overcommit)
    if provisioned + size_bytes > limit:
        return (f"would over-commit: {gib(provisioned)} provisioned + {gib(size_bytes)} "
                f"> {gib(pool.capacity)} x {ref.overcommit:g}")
    return None


def _room_text(pool: PoolInfo | None, size_bytes: int, reserved: _Pending) -> str:
    assert pool is not None
    return (f"type {pool.type}, {gib(pool.available - reserved.space)} free for "
            f"{gib(size_bytes)}")


def place_storage_fast(
    inventory: LiveInventory,
    pools: Iterable[StoragePoolRef],
    *,
    size_bytes: int,
    request_id: str,
    tolerance_bytes: int = 0,
    reservations: Iterable[Reservation] = (),
    template_volumes: Iterable[tuple[str, str]] = (),
    template_paths: Iterable[str] = (),
) -> Decision:
    """The same decision as ``place_storage``, from the live inventory's indexes.

    Its cost does not grow with the number of volumes: free volumes are looked up by
    capacity; only the pools are walked (for room). Verdicts are given for the pools
    only when nothing fits (they make the failure's reason); ``place_storage`` gives
    every candidate's, for the dry run.
    """
    pools = list(pools)
    templates = set(template_volumes)
    paths = set(template_paths)
    vol = inventory.best_free_volume(
        [p.name for p in pools], size_bytes, size_bytes + tolerance_bytes,
        lambda v: (v.pool, v.name) in templates or v.path in paths)
    if vol is not None:
        return Decision("reuse", vol.pool, vol)
    def pool_type(name: str) -> str | None:
        found = inventory.pool(name)
        return found[0].type if found else None

    pending = _pending_reservations(reservations, request_id, inventory.has_volume, pool_type)
    verdicts = []
    for ref in pools:
        found = inventory.pool(ref.name)
        info, provisioned = found if found else (None, 0)
        why = _pool_unusable(info, ref.name) or _creation_refusal(
            info, ref, size_bytes, pending.get(ref.name, _Pending()), provisioned)
        if why is None:
            assert info is not None
            fmt = "qcow2" if info.type in QCOW2_POOL_TYPES else None
            return Decision("create", info.name, None, size_bytes, fmt)
        verdicts.append(Verdict("create", ref.name, None, False, why))
    return Decision("none", verdicts=tuple(verdicts))


__all__ = ["CREATABLE_POOL_TYPES", "QCOW2_POOL_TYPES", "Decision", "GiB", "Verdict",
           "place_storage", "place_storage_fast"]
