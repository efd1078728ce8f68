"""What a libvirt host holds, as plain data: the input of placement, made by ``daemon.virt.connection``."""

from __future__ import annotations

from dataclasses import dataclass, field

GiB = 1024**3


@dataclass(frozen=True)
class VolumeInfo:
    """A storage volume as libvirt reports it."""

    pool: str
    name: str
    path: str
    capacity: int
    allocation: int
    format: str | None = None
    backing: str | None = None
    """The file it is an overlay on (its backing store), if any."""


@dataclass(frozen=True)
class PoolInfo:
    """A storage pool as libvirt reports it; ``volumes`` is empty when inactive."""

    name: str
    type: str
    active: bool
    capacity: int
    allocation: int
    available: int
    volumes: tuple[VolumeInfo, ...] = ()
    source: str = ""
    """Where its storage is, as ``domain_xml.pool_facts_of`` canonicalises ``<source>``:
    two hosts' pools with the same type and source are the same storage."""
    target: str = ""
    """The pool's target path on its host (a file-based pool's directory)."""


@dataclass(frozen=True)
class DiskUse:
    """Which domain uses a disk, named by path and, for volume disks, by pool/volume."""

    domain: str
    path: str | None = None
    pool: str | None = None
    volume: str | None = None


@dataclass(frozen=True)
class HostInventory:
    """A snapshot of a host's storage pools and of the disks its domains use."""

    host: str
    pools: dict[str, PoolInfo]
    disks_in_use: tuple[DiskUse, ...] = ()
    taken_at: float = 0.0
    _by_path: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    _by_volume: dict[tuple[str, str], str] = field(default_factory=dict, compare=False,
                                                   repr=False)

    def __post_init__(self) -> None:
        for use in self.disks_in_use:
            if use.path:
                self._by_path.setdefault(use.path, use.domain)
            if use.pool and use.volume:
                self._by_volume.setdefault((use.pool, use.volume), use.domain)

    def user_of(self, volume: VolumeInfo) -> str | None:
        """The name of a domain using ``volume`` as a disk, or None if none does."""
        return self._by_volume.get((volume.pool, volume.name)) or self._by_path.get(volume.path)


def gib(nbytes: int) -> str:
    """Bytes as GiB for messages, e.g. '15 GiB' or '0.2 GiB'."""
    value = nbytes / GiB
    return f"{value:.0f} GiB" if value == int(value) else f"{value:.1f} GiB"
