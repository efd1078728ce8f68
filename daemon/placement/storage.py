"""Storage placement: the seed's attach-or-create rule, as one function.

1. Among the active storage pools of the hardware pool, a *free* volume of the right size:
   used as a disk by no domain, claimed by no live request, not a template or ISO image,
   capacity within [size, size + tolerance]. Best fit (smallest capacity) wins; ties go to
   the earlier pool, then the smaller name.
2. Else the first pool, in configured order, whose type can create volumes and that has
   room: libvirt's available space minus what other requests' pending reservations will
   allocate (nothing for thin qcow2, the whole size for raw) holds the size, and the
   pool's provisioned capacity (its volumes' capacities + pending reservations + this one)
   stays within capacity x over-commit ratio.
3. Else no storage, with each pool's reason.

``place_storage`` reads the host's live inventory without a libvirt call and without
yielding to the event loop; its cost does not grow with the number of volumes (free
volumes are found by capacity in the inventory's index). The live path and the dry run
call the same function: the dry run (``explain=True``) also gives a verdict for every
candidate volume and pool. The engine makes the decision race-free by recording its claim
in the transition's transaction, with no await between deciding and recording.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from daemon.config import StoragePoolRef
from daemon.placement.decision import (
    CREATABLE_POOL_TYPES,
    QCOW2_POOL_TYPES,
    Decision,
    Verdict,
)
from daemon.store import Reservation
from daemon.virt.inventory import PoolInfo, VolumeInfo, gib
from daemon.virt.live_inventory import LiveInventory, is_image


def place_storage(
    inventory: LiveInventory,
    pools: Iterable[StoragePoolRef],
    *,
    size_bytes: int,
    request_id: str,
    tolerance_bytes: int = 0,
    reservations: Iterable[Reservation] = (),
    template_volumes: Iterable[tuple[str, str]] = (),
    template_paths: Iterable[str] = (),
    image_pool: str | None = None,
    explain: bool = False,
    reuse: bool = True,
    create: bool = True,
    used_elsewhere: Callable[[VolumeInfo], str | None] | None = None,
) -> Decision:
    """Decide where a request's volume comes from (see the module docstring).

    ``image_pool``: the request's disk will hold an appliance's image (kept in that pool):
    step 1 does not apply (a free blank volume does not hold the image), and that pool
    comes first for step 2. Without ``explain``, verdicts are given for the pools only
    when nothing fits (they make the failure's reason); with it, for every candidate
    volume and pool. ``reuse`` / ``create`` off: that step is left out (placement over
    several hosts runs step 1 on them all before step 2 on any). ``used_elsewhere``: the
    domain of another host using a volume of storage the hosts share, if any (this
    host's inventory knows its own domains only).
    """
    listed = list(pools)
    pools = [p for p in listed if not p.templates_only]
    if image_pool is not None:
        pools.sort(key=lambda p: p.name != image_pool)  # stable: the others keep their order
    templates = set(template_volumes)
    paths = set(template_paths)

    def is_template(vol: VolumeInfo) -> bool:
        return (vol.pool, vol.name) in templates or vol.path in paths

    def excluded(vol: VolumeInfo) -> bool:
        return is_template(vol) or (used_elsewhere is not None and
                                    used_elsewhere(vol) is not None)

    verdicts: list[Verdict] = [
        Verdict("create", p.name, None, False, "holds templates only (templates_only)")
        for p in listed if p.templates_only] if explain else []
    vol = None if image_pool is not None or not reuse else inventory.best_free_volume(
        [p.name for p in pools], size_bytes, size_bytes + tolerance_bytes, excluded)
    if explain and image_pool is not None:
        verdicts += [Verdict("reuse", ref.name, v.name, False, "not for an appliance: a free "
                             "blank volume does not hold its image")
                     for ref in pools for v in inventory.pool_volumes(ref.name)]
    elif explain:
        verdicts += _reuse_verdicts(inventory, pools, size_bytes, tolerance_bytes,
                                    is_template, used_elsewhere)
    elif vol is not None:
        return Decision("reuse", vol.pool, vol)
    if not create:
        return Decision("none", verdicts=tuple(verdicts))

    pending = _pending_reservations(reservations, request_id, inventory)
    chosen: PoolInfo | None = None
    for ref in pools:
        found = inventory.pool(ref.name)
        info, provisioned = found if found else (None, 0)
        why = _pool_unusable(info, ref.name) or _creation_refusal(
            info, ref, size_bytes, pending.get(ref.name, _Pending()), provisioned)
        if why is not None:
            verdicts.append(Verdict("create", ref.name, None, False, why))
            continue
        assert info is not None
        if chosen is None:
            chosen = info
            if not explain:
                break
            verdicts.append(Verdict("create", ref.name, None, True, _room_text(
                info, size_bytes, pending.get(ref.name, _Pending()))))
        else:
            verdicts.append(Verdict("create", ref.name, None, True,
                                    "has room, but an earlier pool comes first"))

    if vol is not None:
        return Decision("reuse", vol.pool, vol, verdicts=tuple(verdicts))
    if chosen is not None:
        fmt = "qcow2" if chosen.type in QCOW2_POOL_TYPES else None
        return Decision("create", chosen.name, None, size_bytes, fmt,
                        tuple(verdicts) if explain else ())
    return Decision("none", verdicts=tuple(verdicts))


def _reuse_verdicts(inventory: LiveInventory, pools: list[StoragePoolRef], size_bytes: int,
                    tolerance_bytes: int, is_template: Callable[[VolumeInfo], bool],
                    used_elsewhere: Callable[[VolumeInfo], str | None] | None
                    ) -> list[Verdict]:
    """The dry run's stage 1: each volume of each pool, taken or refused, and why."""
    verdicts = []
    for ref in pools:
        found = inventory.pool(ref.name)
        unusable = _pool_unusable(found[0] if found else None, ref.name)
        if unusable:
            verdicts.append(Verdict("reuse", ref.name, None, False, unusable))
            continue
        for vol in inventory.pool_volumes(ref.name):
            why = _volume_refusal(vol, inventory, is_template, size_bytes, tolerance_bytes)
            elsewhere = used_elsewhere(vol) if used_elsewhere and why is None else None
            if elsewhere is not None:
                why = f"in use by domain {elsewhere}"
            verdicts.append(Verdict("reuse", ref.name, vol.name, why is None,
                                    why or f"free, {gib(vol.capacity)}"))
    return verdicts


def _pool_unusable(pool: PoolInfo | None, name: str) -> str | None:
    if pool is None:
        return "no storage pool of this name on the host"
    if not pool.active:
        return "pool is not active"
    return None


def _volume_refusal(vol: VolumeInfo, inventory: LiveInventory,
                    is_template: Callable[[VolumeInfo], bool], size_bytes: int,
                    tolerance_bytes: int) -> str | None:
    user = inventory.user_of(vol)
    if user is not None:
        return f"in use by domain {user}"
    if is_template(vol):
        return "template image"
    if is_image(vol):
        return "ISO image"
    # Never the asking request's own claim: it is written in the transaction that leaves
    # storage-searching, so a request that is placing holds none.
    holder = inventory.holder_of(vol)
    if holder is not None:
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
                          inventory: LiveInventory) -> dict[str, _Pending]:
    """Reservations per pool for volumes not created yet (the rest are counted by libvirt
    already). The request's own reservation is not counted against itself."""
    pending: dict[str, _Pending] = {}
    for r in reservations:
        if r.request_id == request_id or inventory.has_volume(r.pool, r.volume):
            continue
        entry = pending.setdefault(r.pool, _Pending())
        entry.capacity += r.bytes
        found = inventory.pool(r.pool)
        if (found[0].type if found else None) not in QCOW2_POOL_TYPES:
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


def _room_text(pool: PoolInfo, size_bytes: int, reserved: _Pending) -> str:
    return (f"type {pool.type}, {gib(pool.available - reserved.space)} free for "
            f"{gib(size_bytes)}")
