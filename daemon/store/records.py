"""What the store returns: plain records, no SQL."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

from statemachines.provisioning import State
from statemachines.vm import VmState


@dataclass
class RequestRecord:
    """A provisioning request as stored."""

    id: str
    name: str
    owner: str
    owner_groups: list[str]
    template: str
    size: str
    resource_pool: str
    hardware_pool: str
    host: str | None
    cpus: int
    memory_kib: int
    storage_gb: int
    network: str | None
    state: State
    reason: str | None
    volume_pool: str | None
    volume_name: str | None
    volume_path: str | None
    volume_format: str | None
    volume_owned: bool
    domain_uuid: str | None
    domain_name: str | None
    idempotency_key: str | None
    cleaned_up: bool
    created_at: float
    updated_at: float
    vm_state: str | None = None
    """The VM's lifecycle state once the request is done (``statemachines.vm``)."""
    vm_reason: str | None = None
    cloud_init: str | None = None
    """JSON of what the request adds for cloud-init (appliances): ssh_keys, user_data,
    network_config."""
    seed_volume: str | None = None
    """The cloud-init seed volume made for the request, in ``volume_pool``."""
    installing: bool = False
    """A kickstart VM whose domain still boots its installer directly."""

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "RequestRecord":
        """Build from a ``requests`` row."""
        values = {f.name: row[f.name] for f in fields(cls)}
        values["owner_groups"] = json.loads(row["owner_groups"] or "[]")
        values["state"] = State(row["state"])
        values["volume_owned"] = bool(row["volume_owned"])
        values["cleaned_up"] = bool(row["cleaned_up"])
        values["installing"] = bool(row["installing"])
        return cls(**values)


@dataclass(frozen=True)
class LogEntry:
    """One row of a request's state log: a transition, a libvirt event or a note."""

    id: int
    request_id: str
    kind: str
    from_state: str | None
    to_state: str | None
    trigger: str | None
    at: float
    detail: str | None


@dataclass(frozen=True)
class Reservation:
    """Space a request holds in a pool for the volume it is about to create."""

    request_id: str
    host: str
    pool: str
    volume: str
    bytes: int


@dataclass(frozen=True)
class QuotaUsage:
    """What a resource pool's quota-holding requests add up to."""

    vms: int
    cpus: int
    memory: int
    storage_gb: int


@dataclass
class VmRecord:
    """A provisioned VM, as its lifecycle's steps see it: the ``requests`` row of the
    request that made it, with ``state`` its lifecycle state."""

    id: str
    state: VmState
    updated_at: float
    name: str
    owner: str
    resource_pool: str
    host: str | None
    domain_uuid: str | None
    domain_name: str | None
    volume_pool: str | None
    volume_name: str | None
    volume_owned: bool
    cpus: int
    memory_kib: int
    storage_gb: int
    reason: str | None = None
    seed_volume: str | None = None
    """Its cloud-init seed volume (appliances), in ``volume_pool``; deleted with it."""
    installing: bool = False
    """Its domain still boots its installer directly (kickstart, until its first stop)."""

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "VmRecord":
        """Build from a ``requests`` row whose ``vm_state`` is set."""
        values = {f.name: row[f.name] for f in fields(cls)
                  if f.name not in ("state", "reason")}
        values["volume_owned"] = bool(row["volume_owned"])
        values["installing"] = bool(row["installing"])
        return cls(state=VmState(row["vm_state"]), reason=row["vm_reason"], **values)
