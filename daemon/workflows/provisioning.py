"""The work of each state: small async steps, safe to run again after a crash.

Each step runs after its state is durable. It either moves the request on through
``engine.set_state`` or raises a ``ProvisiondError`` (the engine then fails the request
with that message). Every step looks before it acts: the volume by its name derived from
the request id, the domain by its UUID derived from the request id and its metadata.
Between reading the store and recording a decision a step does not yield to the loop, so
two requests never decide on the same claim or the same quota.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Awaitable, Callable

from daemon.virt import domain_xml
from daemon.auth import CLOUD_CREATE, Identity, holds, quota_refusal
from daemon.errors import (
    HostUnreachable,
    NoStorage,
    PermissionDenied,
    ProvisiondError,
    QuotaExceeded,
    UnknownName,
    VirtError,
    VirtTimeout,
)
from daemon.virt.inventory import gib
from daemon.store import RequestRecord, Reservation
from statemachines import State, Trigger

if TYPE_CHECKING:
    from daemon.engine.driver import Engine

log = logging.getLogger("provisiond.steps")


async def authorize(engine: "Engine", req: RequestRecord) -> None:
    """requested: the owner must hold CLOUD_CREATE on the pool, and its quota must hold."""
    pool = engine.config.resource_pools.get(req.resource_pool)
    if pool is None:
        raise UnknownName(f"resource pool {req.resource_pool} is no longer configured")
    identity = Identity(req.owner, frozenset(req.owner_groups))
    if not holds(identity, pool, CLOUD_CREATE):
        raise PermissionDenied(f"{req.owner} does not hold CLOUD_CREATE on resource pool "
                               f"{req.resource_pool}")
    with engine.store.atomic():
        usage = engine.quota_usage(req.resource_pool)
        refusal = quota_refusal(pool.quota, usage, req.cpus, req.memory_kib, req.storage_gb)
        if refusal:
            raise QuotaExceeded(f"{refusal} in resource pool {req.resource_pool}")
        engine.set_state(req.id, Trigger.AUTHORIZE,
                         f"{req.owner} holds CLOUD_CREATE on {req.resource_pool}; quota holds")


async def start_storage_search(engine: "Engine", req: RequestRecord) -> None:
    """authorized: pick the host of the hardware pool and start looking for storage."""
    hardware = engine.config.hardware_pools.get(req.hardware_pool)
    if hardware is None:
        raise UnknownName(f"hardware pool {req.hardware_pool} is no longer configured")
    host = hardware.hosts[0].name
    engine.set_state(req.id, Trigger.SEARCH_STORAGE,
                     f"searching the storage pools of {req.hardware_pool} on host {host}",
                     host=host)


async def search_storage(engine: "Engine", req: RequestRecord) -> None:
    """storage-searching: claim a free volume, or reserve room for a new one, or fail."""
    hardware = engine.config.hardware_pools.get(req.hardware_pool)
    if hardware is None:
        raise UnknownName(f"hardware pool {req.hardware_pool} is no longer configured")
    host = engine.host_of(req)
    if not engine.host_reachable(host.name):
        raise HostUnreachable(f"host {host.name} is unreachable")
    size_bytes = req.storage_gb * 1024**3
    decision = engine.place(host, hardware, size_bytes, req.id)
    if decision.action == "none":
        # Look again before failing: the inventory may lag (a pool restarted with libvirtd,
        # volumes changed outside provisiond: libvirt has no volume events).
        await host.refresh_pools([p.name for p in hardware.storage_pools])
        decision = engine.place(host, hardware, size_bytes, req.id)
    # From here to the transition: no await, so no other request decides in between.
    engine.metrics.placements.labels(
        {"reuse": "reused", "create": "created"}.get(decision.action, "no_storage")).inc()
    with engine.store.atomic():
        if decision.action == "reuse":
            assert decision.volume is not None
            vol = decision.volume
            engine.store.claim_volume(host.name, vol.pool, vol.name, req.id)
            host.inventory.hold(vol.pool, vol.name)
            engine.set_state(req.id, Trigger.REUSE_VOLUME, decision.reason,
                             volume_pool=vol.pool, volume_name=vol.name, volume_path=vol.path,
                             volume_format=vol.format, volume_owned=0, **_domain_of(req))
        elif decision.action == "create":
            assert decision.pool is not None
            name = domain_xml.volume_name_for(req.id, decision.volume_format)
            engine.store.reserve_space(Reservation(req.id, host.name, decision.pool, name,
                                                   decision.new_volume_bytes))
            # Claim the name too: once created, the volume must not look free to others.
            engine.store.claim_volume(host.name, decision.pool, name, req.id)
            host.inventory.hold(decision.pool, name)
            engine.set_state(req.id, Trigger.CREATE_STORAGE, decision.reason,
                             volume_pool=decision.pool, volume_name=name,
                             volume_format=decision.volume_format, volume_owned=1)
        else:
            raise NoStorage(decision.reason)


async def create_storage(engine: "Engine", req: RequestRecord) -> None:
    """storage-creating: create the request's volume unless it already exists."""
    host = engine.host_of(req)
    assert req.volume_pool and req.volume_name
    # Look first only when this step runs again (after a restart or a lost connection)
    # and the inventory, read afresh since, lists the volume; otherwise create, and look
    # only if creating fails (a volume of that name exists: libvirt refuses to create it).
    volume = (await host.find_volume(req.volume_pool, req.volume_name)
              if engine.repeating(req.id)
              and host.inventory.has_volume(req.volume_pool, req.volume_name) else None)
    if volume is not None:
        detail = f"volume {req.volume_pool}/{req.volume_name} already exists (adopted)"
    else:
        xml = domain_xml.build_volume_xml(req.volume_name, req.storage_gb * 1024**3,
                                          req.volume_format)
        try:
            volume = await host.create_volume(req.volume_pool, xml)
        except VirtError:
            volume = await host.find_volume(req.volume_pool, req.volume_name)
            if volume is None:
                raise
            detail = f"volume {req.volume_pool}/{req.volume_name} already exists (adopted)"
        else:
            detail = (f"created volume {req.volume_pool}/{req.volume_name} "
                      f"({gib(volume.capacity)}, {req.volume_format or 'raw'})")
    with engine.store.atomic():
        # The volume exists: libvirt's figures count it now, the reservation is done.
        engine.store.drop_reservation(req.id)
        engine.set_state(req.id, Trigger.DEFINE, detail, volume_path=volume.path,
                         **_domain_of(req))


async def define(engine: "Engine", req: RequestRecord) -> None:
    """defining: define the domain and wait for libvirt's DEFINED event for its UUID."""
    host = engine.host_of(req)
    uuid = domain_xml.domain_uuid_for(req.id)
    # Only a repeated step can find its domain already there (the UUID is the request's),
    # and only if the inventory (read afresh since, kept current by events) lists it.
    existing = (await host.find_domain(uuid)
                if engine.repeating(req.id) and host.inventory.knows_domain(uuid) else None)
    if existing is not None:
        if existing.metadata.get("request_id") != req.id:
            raise VirtError(f"domain {existing.name} already has this request's UUID {uuid} "
                            "but is not this request's")
        engine.set_state(req.id, Trigger.FINISH,
                         f"domain {existing.name} ({uuid}) was already defined (adopted)",
                         domain_uuid=uuid, domain_name=existing.name)
        return
    template = engine.config.templates.get(req.template)
    if template is None:
        raise UnknownName(f"template {req.template} is no longer configured")
    if template.volume is not None and not host.inventory.has_volume(
            template.volume.pool, template.volume.name):
        iso = await host.find_volume(template.volume.pool, template.volume.name)
        if iso is None:
            raise VirtError(f"template {req.template}: ISO volume {template.volume.pool}/"
                            f"{template.volume.name} not found on host {host.name}")
    domain_type, arch = await host.capabilities()
    configured = engine.host_config(host.name).domain_type
    if configured != "auto":
        domain_type = configured
    assert req.volume_pool and req.volume_name
    spec = domain_xml.DomainSpec(
        name=req.name, uuid=uuid, domain_type=domain_type, arch=arch, cpus=req.cpus,
        memory_kib=req.memory_kib, disk_pool=req.volume_pool, disk_volume=req.volume_name,
        disk_format=req.volume_format,
        cdrom_path=template.path,
        cdrom_pool=template.volume.pool if template.volume else None,
        cdrom_volume=template.volume.name if template.volume else None,
        network=req.network, request_id=req.id, owner=req.owner, template=req.template,
        size=req.size, resource_pool=req.resource_pool)
    xml = domain_xml.build_domain_xml(spec)
    if req.domain_uuid != uuid:  # a database of an older provisiond: record it first
        engine.store.update_request(req.id, **_domain_of(req))
        req.domain_uuid, req.domain_name = uuid, req.name
        await engine.store.durable()
    waiter = engine.expect_defined(host.name, uuid, req.id)
    timeout = engine.config.daemon.define_event_timeout
    try:
        await host.define_domain(uuid, req.name, xml, spec.disks())
        try:
            event = await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            raise VirtTimeout(f"domain {req.name} ({uuid}) was defined but libvirt's DEFINED "
                              f"event did not arrive within {timeout:g} s") from None
    finally:
        engine.forget_defined(host.name, uuid)
    engine.set_state(req.id, Trigger.FINISH,
                     f"domain {event.name} ({uuid}) defined on {host.name} "
                     f"({domain_type}, {req.cpus} vcpus, {req.memory_kib} KiB)",
                     domain_uuid=uuid, domain_name=event.name)


def _domain_of(req: RequestRecord) -> dict[str, str]:
    # Recorded with the move to defining, before the domain is: a rollback after a crash
    # then knows which domain to look for.
    return {"domain_uuid": domain_xml.domain_uuid_for(req.id), "domain_name": req.name}


StepFn = Callable[["Engine", RequestRecord], Awaitable[None]]

STEPS: dict[State, StepFn] = {
    State.REQUESTED: authorize,
    State.AUTHORIZED: start_storage_search,
    State.STORAGE_SEARCHING: search_storage,
    State.STORAGE_CREATING: create_storage,
    State.DEFINING: define,
}
"""The step run in each non-terminal state."""


async def rollback(engine: "Engine", request_id: str) -> None:
    """failed: release claims; undefine the domain and delete the volume it created.

    Idempotent; marks the request cleaned up only when everything is undone, so an
    unfinished rollback (host down) is retried at the next start.
    """
    req = engine.store.get_request(request_id)
    if req is None or req.cleaned_up:
        return
    undone: list[str] = []
    try:
        if req.host is not None and (req.domain_uuid or req.volume_owned):
            host = engine.host_of(req)
            uuid = req.domain_uuid or domain_xml.domain_uuid_for(req.id)
            found = await host.find_domain(uuid)
            if found is not None and found.metadata.get("request_id") == req.id:
                await host.undefine_domain(uuid)
                undone.append(f"undefined domain {found.name}")
            if req.volume_owned and req.volume_pool and req.volume_name:
                if await host.delete_volume(req.volume_pool, req.volume_name):
                    undone.append(f"deleted volume {req.volume_pool}/{req.volume_name}")
    except ProvisiondError as exc:
        engine.store.append_log(req.id, "note", State.FAILED, "rollback",
                                f"rollback incomplete, will retry at next start: {exc.message}")
        return
    had_claim = req.volume_pool is not None
    with engine.store.atomic():
        engine.store.release_storage(req.id)
        if had_claim and req.host in engine.hosts and req.volume_pool and req.volume_name:
            engine.hosts[req.host].inventory.release(req.volume_pool, req.volume_name)
        engine.store.update_request(req.id, cleaned_up=1)
        if had_claim and not req.volume_owned:
            undone.append(f"released volume {req.volume_pool}/{req.volume_name}")
        elif had_claim and not undone:
            undone.append("released the space reserved in pool " + str(req.volume_pool))
        engine.store.append_log(req.id, "note", State.FAILED, "rollback",
                                "rolled back: " + ("; ".join(undone) or "nothing to undo"))
