"""A host's storage inventory kept in memory, current without a libvirt round trip.

Loaded in full when a connection opens (and again after a reconnect); then kept current
by the daemon's own actions (volume created or deleted, domain defined or undefined) and
by libvirt's events (a domain defined or undefined by someone else, a pool started,
stopped or refreshed). libvirt has no storage-volume events: a volume made outside
provisiond is seen after ``virsh pool-refresh`` (a REFRESH event) or a reconnect.

Placement reads it without yielding to the event loop. An index of free volumes by
capacity makes picking a volume independent of how many volumes the host has; the pools
are walked in configured order only to check their room for a new volume.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field, replace
from typing import Callable, Iterable

from daemon.virt.inventory import DiskUse, HostInventory, PoolInfo, VolumeInfo

IMAGE_FORMATS = frozenset({"iso"})


def is_image(vol: VolumeInfo) -> bool:
    """ISO images are never disks to reuse."""
    return (vol.format or "") in IMAGE_FORMATS or vol.name.lower().endswith(".iso")


@dataclass
class _Pool:
    info: PoolInfo
    volumes: dict[str, VolumeInfo] = field(default_factory=dict)
    provisioned: int = 0  # sum of the volumes' capacities


class LiveInventory:
    """Pools, volumes and the disks domains use, on one host, kept current."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._pools: dict[str, _Pool] = {}
        self._domain_disks: dict[str, tuple[DiskUse, ...]] = {}
        # uuids of the domains using a disk, in the order they were defined (the first
        # names the volume's user in the dry run's verdicts)
        self._users_by_path: dict[str, dict[str, None]] = {}
        self._users_by_volume: dict[tuple[str, str], dict[str, None]] = {}
        self._held: dict[tuple[str, str], str] = {}
        """Claimed volumes (mirrors the store's claims) -> the request holding each."""
        # free (unused, unclaimed, not an image) volumes: capacity -> pool -> sorted names
        self._free: dict[int, dict[str, list[str]]] = {}
        self._capacities: list[int] = []
        self._journals: list[list[Callable[[], None]]] = []

    # ------------------------------------------------------------------ loading

    def begin_read(self) -> list[Callable[[], None]]:
        """A read from libvirt starts: the daemon's own changes made until its result is
        applied are recorded, and replayed onto that (older) result."""
        journal: list[Callable[[], None]] = []
        self._journals.append(journal)
        return journal

    def _end_read(self, journal: list[Callable[[], None]]) -> list[Callable[[], None]]:
        # By identity: two journals of concurrent reads may be equal (both empty).
        self._journals = [j for j in self._journals if j is not journal]
        return journal

    def load(self, journal: list[Callable[[], None]], snapshot: HostInventory,
             domains: dict[str, str]) -> None:
        """Replace everything with a full read (``domains``: uuid -> name of each domain)."""
        changes = self._end_read(journal)
        self._pools = {}
        self._domain_disks = {}
        self._users_by_path = {}
        self._users_by_volume = {}
        self._free = {}
        self._capacities = []
        for pool in snapshot.pools.values():
            self._set_pool(pool)
        by_domain: dict[str, list[DiskUse]] = {}
        for use in snapshot.disks_in_use:
            by_domain.setdefault(use.domain, []).append(use)
        for uuid, name in domains.items():
            self._set_domain(uuid, tuple(by_domain.get(name, ())))
        for change in changes:
            change()

    def apply_pools(self, journal: list[Callable[[], None]],
                    pools: dict[str, PoolInfo | None]) -> None:
        """Replace these pools with a read of them (None: the pool is gone)."""
        changes = self._end_read(journal)
        for name, info in pools.items():
            if info is None:
                self._remove_pool(name)
            else:
                self._set_pool(info)
        for change in changes:
            change()

    def _journaled(self, change: Callable[[], None]) -> None:
        change()
        for journal in self._journals:
            journal.append(change)

    # ------------------------------------------------------------------ changes

    def _set_pool(self, pool: PoolInfo) -> None:
        old = self._pools.pop(pool.name, None)
        if old is not None:
            for vol in old.volumes.values():
                self._unindex(vol)
        entry = _Pool(replace(pool, volumes=()))
        self._pools[pool.name] = entry
        for vol in pool.volumes:
            entry.volumes[vol.name] = vol
            entry.provisioned += vol.capacity
            self._index(vol)

    def add_volume(self, vol: VolumeInfo) -> None:
        """A volume the daemon created."""
        self._journaled(lambda: self._add_volume(vol))

    def _add_volume(self, vol: VolumeInfo) -> None:
        entry = self._pools.get(vol.pool)
        if entry is None or vol.name in entry.volumes:
            return
        entry.volumes[vol.name] = vol
        entry.provisioned += vol.capacity
        info = entry.info
        entry.info = replace(info, allocation=info.allocation + vol.allocation,
                             available=max(0, info.available - vol.allocation))
        self._index(vol)

    def remove_volume(self, pool: str, name: str) -> None:
        """A volume the daemon deleted."""
        self._journaled(lambda: self._remove_volume(pool, name))

    def _remove_volume(self, pool: str, name: str) -> None:
        entry = self._pools.get(pool)
        vol = entry.volumes.pop(name, None) if entry else None
        if entry is None or vol is None:
            return
        entry.provisioned -= vol.capacity
        info = entry.info
        entry.info = replace(info, allocation=max(0, info.allocation - vol.allocation),
                             available=info.available + vol.allocation)
        self._unindex(vol)

    def set_domain(self, uuid: str, disks: tuple[DiskUse, ...]) -> None:
        """A domain and the disks it uses (defined, or redefined)."""
        self._journaled(lambda: self._set_domain(uuid, disks))

    def _set_domain(self, uuid: str, disks: tuple[DiskUse, ...]) -> None:
        self._remove_domain(uuid)
        self._domain_disks[uuid] = disks
        touched = []
        for use in disks:
            if use.path:
                self._users_by_path.setdefault(use.path, {})[uuid] = None
            if use.pool and use.volume:
                self._users_by_volume.setdefault((use.pool, use.volume), {})[uuid] = None
            touched.append(use)
        self._reindex_disks(touched)

    def remove_domain(self, uuid: str) -> None:
        """A domain undefined."""
        self._journaled(lambda: self._remove_domain(uuid))

    def _remove_domain(self, uuid: str) -> None:
        disks = self._domain_disks.pop(uuid, ())
        for use in disks:
            if use.path:
                users = self._users_by_path.get(use.path)
                if users:
                    users.pop(uuid, None)
                    if not users:
                        del self._users_by_path[use.path]
            if use.pool and use.volume:
                users = self._users_by_volume.get((use.pool, use.volume))
                if users:
                    users.pop(uuid, None)
                    if not users:
                        del self._users_by_volume[(use.pool, use.volume)]
        self._reindex_disks(disks)

    def hold(self, pool: str, name: str, holder: str) -> None:
        """Request ``holder`` claimed this volume: it is not free any more."""
        self._held[(pool, name)] = holder
        vol = self._volume(pool, name)
        if vol is not None:
            self._unindex(vol)

    def release(self, pool: str, name: str) -> None:
        """A claim ended: the volume is free again unless something else uses it."""
        self._held.pop((pool, name), None)
        vol = self._volume(pool, name)
        if vol is not None:
            self._index(vol)

    # ------------------------------------------------------------------ reading

    def pool(self, name: str) -> tuple[PoolInfo, int] | None:
        """A pool's libvirt figures and the sum of its volumes' capacities."""
        entry = self._pools.get(name)
        return (entry.info, entry.provisioned) if entry else None

    def pool_volumes(self, name: str) -> list[VolumeInfo]:
        """The volumes of a pool, in the order the inventory learnt them."""
        entry = self._pools.get(name)
        return list(entry.volumes.values()) if entry else []

    def holder_of(self, vol: VolumeInfo) -> str | None:
        """The request that claimed this volume, or None."""
        return self._held.get((vol.pool, vol.name))

    def user_of(self, vol: VolumeInfo) -> str | None:
        """The name of a domain using this volume as a disk (named by pool/volume first,
        else by path; the earliest defined of several), or None."""
        users = self._users_by_volume.get((vol.pool, vol.name)) or \
            self._users_by_path.get(vol.path)
        if not users:
            return None
        return self._domain_disks[next(iter(users))][0].domain

    def volume(self, pool: str, name: str) -> VolumeInfo | None:
        """The volume, as the inventory knows it, or None."""
        return self._volume(pool, name)

    def has_volume(self, pool: str, name: str) -> bool:
        """Whether the volume exists (as far as the inventory knows)."""
        entry = self._pools.get(pool)
        return entry is not None and name in entry.volumes

    def any_free_between(self, low: int, high: int) -> bool:
        """Whether some pool may hold a free volume of a capacity in [low, high] (a cheap
        look before ``best_free_volume``: no such capacity, no need to look further)."""
        if not self._capacities:
            return False
        start = bisect.bisect_left(self._capacities, low)
        return any(self._free[c] and any(self._free[c].values())
                   for c in self._capacities[start:bisect.bisect_right(self._capacities, high)])

    def best_free_volume(self, pool_order: list[str], low: int, high: int,
                         excluded: Callable[[VolumeInfo], bool]) -> VolumeInfo | None:
        """The free volume with the smallest capacity in [low, high]; ties go to the
        earlier pool, then the smaller name. Cost: the capacities in range times the
        pools, not the number of volumes."""
        start = bisect.bisect_left(self._capacities, low)
        for capacity in self._capacities[start:]:
            if capacity > high:
                break
            by_pool = self._free.get(capacity, {})
            for pool in pool_order:
                entry = self._pools.get(pool)
                if entry is None or not entry.info.active:
                    continue
                for name in by_pool.get(pool, ()):
                    vol = entry.volumes[name]
                    if not excluded(vol):
                        return vol
        return None

    # ------------------------------------------------------------------ the free index

    def _volume(self, pool: str, name: str) -> VolumeInfo | None:
        entry = self._pools.get(pool)
        return entry.volumes.get(name) if entry else None

    def _is_free(self, vol: VolumeInfo) -> bool:
        return ((vol.pool, vol.name) not in self._held and not is_image(vol)
                and (vol.pool, vol.name) not in self._users_by_volume
                and vol.path not in self._users_by_path)

    def _index(self, vol: VolumeInfo) -> None:
        if not self._is_free(vol):
            return
        by_pool = self._free.get(vol.capacity)
        if by_pool is None:
            by_pool = self._free[vol.capacity] = {}
            bisect.insort(self._capacities, vol.capacity)
        names = by_pool.setdefault(vol.pool, [])
        at = bisect.bisect_left(names, vol.name)
        if at == len(names) or names[at] != vol.name:
            names.insert(at, vol.name)

    def _unindex(self, vol: VolumeInfo) -> None:
        names = self._free.get(vol.capacity, {}).get(vol.pool)
        if not names:
            return
        at = bisect.bisect_left(names, vol.name)
        if at < len(names) and names[at] == vol.name:
            del names[at]

    def _reindex_disks(self, disks: Iterable[DiskUse]) -> None:
        for use in disks:
            if use.pool and use.volume:
                vol = self._volume(use.pool, use.volume)
                if vol is not None:
                    self._reindex(vol)
            if use.path:
                vol = self._volume_by_path(use.path)
                if vol is not None:
                    self._reindex(vol)

    def _reindex(self, vol: VolumeInfo) -> None:
        if self._is_free(vol):
            self._index(vol)
        else:
            self._unindex(vol)

    def _volume_by_path(self, path: str) -> VolumeInfo | None:
        # A volume's file is named after it in dir, fs, netfs and logical pools.
        name = path.rsplit("/", 1)[-1]
        for entry in self._pools.values():
            vol = entry.volumes.get(name)
            if vol is not None and vol.path == path:
                return vol
        return None

    def _remove_pool(self, name: str) -> None:
        entry = self._pools.pop(name, None)
        if entry is not None:
            for vol in entry.volumes.values():
                self._unindex(vol)

    def knows_domain(self, uuid: str) -> bool:
        """Whether the domain is in the inventory."""
        return uuid in self._domain_disks
