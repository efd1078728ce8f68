"""What placement answers: a decision, with a verdict for each candidate it looked at."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from daemon.placement.hosts import HostVerdict
from daemon.virt.inventory import VolumeInfo, gib

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
    host: str | None = None
    """The host the storage is on (the dry run: the host a request would get)."""
    hosts: tuple[HostVerdict, ...] = field(default=())
    """Every host's verdict (the dry run), the chosen one first."""
    failure: str | None = None
    """Why no host that could hold the request had storage for it (action ``none``)."""

    @property
    def reason(self) -> str:
        """One line for the log: what was chosen, or why nothing could be."""
        if self.failure is not None:
            return self.failure
        if self.action == "reuse" and self.volume:
            return (f"reusing free volume {self.volume.pool}/{self.volume.name} "
                    f"({gib(self.volume.capacity)})")
        if self.action == "create":
            return f"creating a {gib(self.new_volume_bytes)} volume in pool {self.pool}"
        if self.hosts and self.host is None:
            return "no host can hold it: " + "; ".join(f"{h.host}: {h.reason}"
                                                        for h in self.hosts)
        refused = [v for v in self.verdicts if v.stage == "create"]
        return "no free volume of the right size and no pool with room: " + "; ".join(
            f"{v.pool}: {v.reason}" for v in refused) if refused else "no storage pool configured"
