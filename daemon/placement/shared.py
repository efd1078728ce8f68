"""Storage that several hosts share: which host's pool is which storage.

A storage pool named in a hardware pool is looked up on each of its hosts. Mostly each
host's pool is its own. A pool of a network type (netfs, gluster, rbd, iscsi, ...) whose
source is the same on several hosts, or one the configuration declares ``shared: true``
(a dir pool on an NFS mount made outside libvirt), is one storage that those hosts see.

Each (host, pool) has a *location*: the key its claims and space reservations are
recorded under. For a host's own storage it is the host's name; for shared storage it is
common to the hosts that share it, so a volume there is claimed once and space reserved
once, whichever host placement looked through. Claims are held, and the volumes
provisiond creates or deletes are mirrored, in the inventory of every host that sees the
storage: libvirt has no volume events, and another host would learn of a new file only
at its next pool refresh.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Protocol

from daemon.config import Config, StoragePoolRef
from daemon.virt.inventory import PoolInfo, VolumeInfo
from daemon.virt.live_inventory import LiveInventory

SHARED_POOL_TYPES = frozenset(
    {"netfs", "gluster", "rbd", "iscsi", "iscsi-direct", "sheepdog", "vstorage"})
"""Pool types whose storage lives off the host: shared when their source is the same."""

SHARED_PREFIX = "shared:"


def location_of(host: str, hardware_pool: str, ref: StoragePoolRef,
                info: PoolInfo | None) -> str:
    """The key a host's pool records claims and reservations under (module docstring):
    ``shared:HARDWARE/POOL`` for a pool the configuration declares shared (within its
    hardware pool), ``shared:POOL@TYPE:SOURCE`` for a network pool (whichever hardware
    pool its hosts are in: the source names the storage), else the host's name."""
    if ref.shared is True:
        return f"{SHARED_PREFIX}{hardware_pool}/{ref.name}"
    if ref.shared is None and info is not None and info.type in SHARED_POOL_TYPES \
            and info.source:
        return f"{SHARED_PREFIX}{ref.name}@{info.type}:{info.source}"
    return host


def is_shared(location: str) -> bool:
    """Whether a location is storage several hosts may share."""
    return location.startswith(SHARED_PREFIX)


class _Host(Protocol):
    @property
    def inventory(self) -> LiveInventory: ...


class StorageMap:
    """The locations of the configured hosts' pools, and the inventories that mirror
    one another's claims and volumes."""

    def __init__(self, hosts: Callable[[str], _Host | None],
                 config: Callable[[], Config]) -> None:
        self._hosts = hosts
        self._config = config
        self._refs_of: tuple[Config, dict[str, dict[str, tuple[str, StoragePoolRef]]]] | \
            None = None

    def _refs(self) -> dict[str, dict[str, tuple[str, StoragePoolRef]]]:
        """host -> pool name -> (its hardware pool, its entry there), per configuration."""
        config = self._config()
        if self._refs_of is None or self._refs_of[0] is not config:
            refs: dict[str, dict[str, tuple[str, StoragePoolRef]]] = {}
            for hardware in config.hardware_pools.values():
                for host in hardware.hosts:
                    pools = refs.setdefault(host.name, {})
                    for ref in hardware.storage_pools:
                        pools.setdefault(ref.name, (hardware.name, ref))
            self._refs_of = (config, refs)
        return self._refs_of[1]

    def location(self, host: str, pool: str) -> str:
        """Where the host's pool keeps its volumes (its claims' and reservations' key)."""
        found = self._refs().get(host, {}).get(pool)
        if found is None:
            return host
        inventory = self._inventory(host)
        info = inventory.pool(pool) if inventory is not None else None
        return location_of(host, found[0], found[1], info[0] if info else None)

    def locations(self, host: str, pools: Iterable[str]) -> list[str]:
        """The distinct locations of a host's pools, in order."""
        return list(dict.fromkeys(self.location(host, p) for p in pools))

    def hosts_seeing(self, location: str, pool: str) -> list[str]:
        """The configured hosts whose pool ``pool`` may be at ``location``. For shared
        storage: every host that lists the pool (a host whose inventory is not read yet
        is included: holding a claim there is harmless, missing it is not)."""
        if not is_shared(location):
            return [location]
        declared = location[len(SHARED_PREFIX):].split("@", 1)[0]
        hardware = declared.split("/", 1)[0] if "@" not in location else None
        return [host for host, pools in self._refs().items() if pool in pools
                and (hardware is None or pools[pool][0] == hardware)]

    def user_elsewhere(self, host: str, volume: VolumeInfo) -> str | None:
        """A domain of another host that uses this volume of shared storage, named with
        its host (each host's inventory knows its own domains only); None if none does."""
        location = self.location(host, volume.pool)
        if not is_shared(location):
            return None
        for other in self.hosts_seeing(location, volume.pool):
            inventory = self._inventory(other)
            if other == host or inventory is None or \
                    self.location(other, volume.pool) != location:
                continue
            seen = inventory.volume(volume.pool, volume.name)
            user = inventory.user_of(seen) if seen is not None else None
            if user is not None:
                return f"{user} on host {other}"
        return None

    def hold(self, location: str, pool: str, volume: str, holder: str) -> None:
        """A claim recorded: the volume is not free on any host that sees it."""
        for host in self.hosts_seeing(location, pool):
            inventory = self._inventory(host)
            if inventory is not None:
                inventory.hold(pool, volume, holder)

    def release(self, location: str, pool: str, volume: str) -> None:
        """A claim ended: the volume is free again wherever it is seen."""
        for host in self.hosts_seeing(location, pool):
            inventory = self._inventory(host)
            if inventory is not None:
                inventory.release(pool, volume)

    def mirror(self, host: str, pool: str, name: str, volume: VolumeInfo | None) -> None:
        """A host created (``volume``) or deleted (None) a volume: tell the inventories of
        the other hosts at the same location, the path under their own target."""
        location = self.location(host, pool)
        if not is_shared(location):
            return
        origin = self._pool_info(host, pool)
        for other in self.hosts_seeing(location, pool):
            if other == host or self.location(other, pool) != location:
                continue
            inventory = self._inventory(other)
            if inventory is None:
                continue
            if volume is None:
                inventory.remove_volume(pool, name)
                continue
            target = self._pool_info(other, pool)
            path = volume.path
            if origin and target and origin.target and target.target and \
                    path.startswith(origin.target.rstrip("/") + "/"):
                path = target.target.rstrip("/") + path[len(origin.target.rstrip("/")):]
            inventory.add_volume(dataclasses.replace(volume, path=path))

    def _inventory(self, host: str) -> LiveInventory | None:
        found = self._hosts(host)
        return found.inventory if found is not None else None

    def _pool_info(self, host: str, pool: str) -> PoolInfo | None:
        inventory = self._inventory(host)
        found = inventory.pool(pool) if inventory is not None else None
        return found[0] if found else None
