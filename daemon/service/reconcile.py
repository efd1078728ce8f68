"""The orphan reconciler: what carries provisiond's tags but belongs to no request.

A volume named ``provisiond-<request id>`` or a domain whose ``<metadata>`` names a request
is this daemon's. It is an orphan when that request is unknown to the store, or failed
and already rolled back, or when the request holds a different volume or domain (a
duplicate). Requests in progress, done ones, and failed ones whose rollback is still
pending are never touched. A volume that some domain uses is never deleted.

A *claim* is listed too when no VM holds it any more: a deleted VM's volume that its
host could not wipe (its driver cannot, or its pool was not running) stays claimed, out
of the free set. ``apply`` wipes it now if the host can, then releases the claim; or
releases it once an administrator has deleted the volume by hand.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Literal

from daemon.virt.calls import GONE, WIPED
from daemon.virt.domain_xml import VOLUME_PREFIX, domain_uuid_for
from daemon.errors import ProvisiondError
from daemon.store import RequestRecord
from statemachines import State

if TYPE_CHECKING:
    from daemon.service.service import Service

VOLUME_NAME_RE = re.compile(
    rf"{re.escape(VOLUME_PREFIX)}([0-9a-f]{{32}})(-seed)?(\.[a-z0-9]+)?\Z")
"""A volume provisiond makes: a request's disk, or (``-seed``) its cloud-init seed."""


@dataclass
class Orphan:
    """A tagged volume or domain that belongs to no live or done request."""

    host: str
    kind: Literal["volume", "domain", "claim"]
    name: str
    request_id: str
    reason: str
    pool: str | None = None
    uuid: str | None = None
    action: str = "found"

    def to_json(self) -> dict[str, object]:
        """As the API shows it."""
        return asdict(self)


def _why_orphan(record: RequestRecord | None) -> str | None:
    if record is None:
        return "its request is unknown to this daemon"
    if record.state == State.FAILED and record.cleaned_up:
        return f"its request failed and was rolled back ({record.reason})"
    return None


async def find_orphans(service: "Service", hosts: list[str]) -> list[Orphan]:
    """Orphans on the given hosts (only the storage pools of their hardware pools)."""
    orphans: list[Orphan] = []
    seen: set[tuple[str, str, str]] = set()  # shared storage is listed once, not per host
    for host_name in hosts:
        host = service.hosts[host_name]
        pools = sorted({p.name for hw in service.config.hardware_pools.values()
                        if any(h.name == host_name for h in hw.hosts) for p in hw.storage_pools})
        inventory = await host.read_inventory(pools)
        for dom in await host.tagged_domains():
            record = service.store.get_request(dom.request_id)
            why = _why_orphan(record)
            if why is None and dom.uuid != domain_uuid_for(dom.request_id):
                why = "a second domain for a request that has its own"
            if why is not None:
                orphans.append(Orphan(host_name, "domain", dom.name, dom.request_id, why,
                                      uuid=dom.uuid))
        for location, pool_name, volume, request_id in service.store.kept_claims():
            where = (location, pool_name, volume)
            if pool_name not in pools or where in seen or \
                    service.storage.location(host_name, pool_name) != location:
                continue
            seen.add(where)
            found = inventory.pools.get(pool_name)
            if found is None or not found.active:  # the volume may be there still
                why = ("a deleted VM's volume its host could not wipe; kept: its pool is "
                       "not running, so whether the volume is gone is not known")
            elif any(v.name == volume for v in found.volumes):
                why = ("a deleted VM's volume its host could not wipe, still there (wiped "
                       "by apply if the host can now)")
            else:
                why = "a deleted VM's volume its host could not wipe, deleted since"
            orphans.append(Orphan(host_name, "claim", volume, request_id, why,
                                  pool=pool_name))
        orphan_domains = {o.name for o in orphans if o.kind == "domain"}
        for pool in inventory.pools.values():
            for vol in pool.volumes:
                match = VOLUME_NAME_RE.match(vol.name)
                where = (service.storage.location(host_name, pool.name), pool.name, vol.name)
                if match is None or where in seen:
                    continue
                seen.add(where)
                record = service.store.get_request(match.group(1))
                why = _why_orphan(record)
                seed = match.group(2) is not None
                if why is None and record is not None and vol.name != (
                        record.seed_volume if seed else record.volume_name):
                    why = ("a seed volume the request does not hold" if seed else
                           "a second volume for a request that holds another")
                if why is None:
                    continue
                user = inventory.user_of(vol) or service.storage.user_elsewhere(host_name, vol)
                if user is not None and user not in orphan_domains:
                    why += f"; kept: in use by domain {user}"
                orphans.append(Orphan(host_name, "volume", vol.name, match.group(1), why,
                                      pool=pool.name))
    return orphans


async def remove_orphans(service: "Service", orphans: list[Orphan]) -> list[Orphan]:
    """Undefine orphan domains, then delete orphan volumes no other domain uses."""
    for orphan in sorted(orphans, key=lambda o: o.kind != "domain"):
        host = service.hosts[orphan.host]
        if "; kept:" in orphan.reason:
            orphan.action = "kept"
            continue
        try:
            if orphan.kind == "claim" and orphan.pool:
                # Released once nothing of the data is left: wiped now, or gone already.
                if await host.wipe_volume(orphan.pool, orphan.name) not in (WIPED, GONE):
                    orphan.action = "kept"
                    orphan.reason += ("; kept: it cannot be wiped there (delete it by hand, "
                                      f"e.g. virsh vol-delete {orphan.name} --pool "
                                      f"{orphan.pool}, then apply again)")
                    continue
                location = service.storage.location(orphan.host, orphan.pool)
                service.store.release_claim(location, orphan.pool, orphan.name)
                service.storage.release(location, orphan.pool, orphan.name)
                orphan.action = "released"
                continue
            if orphan.kind == "domain" and orphan.uuid:
                await host.undefine_domain(orphan.uuid)
            elif orphan.pool:
                await host.delete_volume(orphan.pool, orphan.name)
            orphan.action = "removed"
        except ProvisiondError as exc:
            orphan.action = f"not removed: {exc.message}"
    return orphans
