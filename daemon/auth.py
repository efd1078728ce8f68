"""Who the caller is, what they may do in a resource pool, and whether its quota holds."""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from daemon.config import Quota, ResourcePool
from daemon.store import QuotaUsage

CLOUD_CREATE = "CLOUD_CREATE"
CLOUD_ADMIN = "CLOUD_ADMIN"


@dataclass(frozen=True)
class Identity:
    """A caller: a user name and the names of the groups they belong to."""

    user: str
    groups: frozenset[str] = frozenset()

    @classmethod
    def from_uid(cls, uid: int, gid: int | None = None) -> "Identity":
        """The identity of a local uid, with its groups from the system's databases."""
        try:
            entry = pwd.getpwuid(uid)
        except KeyError:
            return cls(f"uid:{uid}", frozenset())
        primary = entry.pw_gid if gid is None else gid
        groups = set()
        for group_id in {primary, *_supplementary_gids(entry.pw_name, entry.pw_gid)}:
            try:
                groups.add(grp.getgrgid(group_id).gr_name)
            except KeyError:
                groups.add(f"gid:{group_id}")
        return cls(entry.pw_name, frozenset(groups))


def _supplementary_gids(user: str, primary: int) -> list[int]:
    try:
        return os.getgrouplist(user, primary)
    except OSError:
        return [primary]


def holds(identity: Identity, pool: ResourcePool, privilege: str) -> bool:
    """Whether the caller holds ``privilege`` on the resource pool (directly or by group)."""
    grant = pool.grants.get(privilege)
    if grant is None:
        return False
    return identity.user in grant.users or bool(identity.groups & grant.groups)


def quota_refusal(quota: Quota, usage: QuotaUsage, cpus: int, memory_kib: int,
                  storage_gb: int, whose: str = "the resource pool's quota") -> str | None:
    """Why adding this VM would break the quota, with the figures (used, asked, limit),
    or None if it holds."""
    checks = (
        ("vms", quota.vms, usage.vms, 1, ""),
        ("cpus", quota.cpus, usage.cpus, cpus, ""),
        ("memory", quota.memory, usage.memory, memory_kib, " KiB"),
        ("storage_gb", quota.storage_gb, usage.storage_gb, storage_gb, " GiB"),
    )
    over = [f"{name}: {used}{unit} used + {asked}{unit} asked > {limit}{unit}"
            for name, limit, used, asked, unit in checks
            if limit is not None and used + asked > limit]
    return f"{whose} exceeded: " + "; ".join(over) if over else None


def admission_refusal(pool: ResourcePool, pool_usage: QuotaUsage, user_usage: QuotaUsage,
                      user: str, cpus: int, memory_kib: int, storage_gb: int) -> str | None:
    """Why the pool's quota or the user's share of it would not hold this VM, or None."""
    refusal = quota_refusal(pool.quota, pool_usage, cpus, memory_kib, storage_gb,
                            f"the quota of resource pool {pool.name}")
    if refusal is None and pool.quota.per_user is not None:
        refusal = quota_refusal(pool.quota.per_user, user_usage, cpus, memory_kib, storage_gb,
                                f"{user}'s quota in resource pool {pool.name}")
    return refusal
