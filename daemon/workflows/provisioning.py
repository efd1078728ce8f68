"""The provisioning workflow: one step per state of ``statemachines.provisioning``.

Each step runs after its state is durable (for the states that act on libvirt), sees only
a ``ProvisioningContext``, and returns an ``Outcome``; the engine fires its trigger. Every
step looks before it acts: the volume by its name derived from the request id, the domain
by its UUID derived from the request id and its metadata. Between reading what it decides
on (claims, reservations, quota) and returning, a step does not yield to the loop, and the
engine records the outcome without yielding either: two requests never decide on the same
claim or the same quota.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ContextManager, Protocol

from daemon.auth import CLOUD_CREATE, Identity, admission_refusal, holds
from daemon.config import Config, HardwarePool, Template
from daemon.config.model import BootFile
from daemon.placement.shared import StorageMap
from daemon.workflows import appliance
from daemon.workflows.placing import host_capacities, hosts_said, place_request
from daemon.engine.workflow import Outcome, Workflow
from daemon.errors import HostUnreachable, NoHostCapacity, NoStorage, PermissionDenied
from daemon.errors import ProvisiondError
from daemon.errors import QuotaExceeded, UnknownName, VirtError, VirtTimeout
from daemon.process.metrics import Metrics
from daemon.store import QuotaUsage, RequestRecord, Reservation
from daemon.virt import domain_xml
from daemon.virt.connection import DomainEvent, HostConnection, PoolEvent
from daemon.virt.inventory import gib
from statemachines.provisioning import HOLDS_QUOTA, ON_HOST, TABLE, State, Trigger
from statemachines.vm import TABLE as VM_TABLE
from statemachines.vm import VmState

VM_INITIAL = str(VM_TABLE.initial)
"""The state a done request's VM starts its own lifecycle in (shut off)."""

log = logging.getLogger("provisiond.provisioning")


class ProvisioningStore(Protocol):
    """The store's methods the provisioning steps use (the ``Store`` has them all)."""

    def atomic(self) -> ContextManager[None]: ...
    async def durable(self) -> None: ...
    def claim_volume(self, host: str, pool: str, volume: str, request_id: str) -> None: ...
    def reserve_space(self, reservation: Reservation) -> None: ...
    def drop_reservation(self, request_id: str) -> None: ...
    def release_storage(self, request_id: str) -> list[tuple[str, str, str]]: ...
    def reservations_on(self, host: str) -> list[Reservation]: ...
    def update_request(self, request_id: str, **updates: Any) -> None: ...
    def append_log(self, request_id: str, kind: str, state: State, trigger: str,
                   detail: str | None = None) -> None: ...
    def requests_on_pool(self, host: str, pool: str) -> list[RequestRecord]: ...
    def find_by_domain_uuid(self, domain_uuid: str) -> RequestRecord | None: ...


class ProvisioningContext(Protocol):
    """What a provisioning step may see and do; nothing here moves a state."""

    @property
    def config(self) -> Config:
        """The configuration in force (a reload swaps it whole)."""

    @property
    def store(self) -> ProvisioningStore:
        """Claims, reservations, notes."""

    @property
    def metrics(self) -> Metrics:
        """Counters the steps feed (placements)."""

    def host(self, name: str | None) -> HostConnection:
        """A configured host's connection (VirtError for an unknown name)."""

    def host_reachable(self, name: str) -> bool:
        """Whether the host's connection works now."""

    def reachable_hosts(self, names: list[str]) -> dict[str, HostConnection]:
        """The connections of those of these hosts that are reachable now."""

    @property
    def storage(self) -> StorageMap:
        """Which hosts' pools are the same storage; claims held on all of them."""

    async def wait_for_any_host(self, names: list[str], timeout: float,
                                request_id: str) -> str | None:
        """Wait until one of these hosts is reachable: its name; None after ``timeout``;
        RequestCancelled as soon as the request is cancelled."""

    def repeating(self, request_id: str) -> bool:
        """Whether this step ran before for the request and may have acted already."""

    def quota_usage(self, resource_pool: str, owner: str | None = None) -> QuotaUsage:
        """What the pool's quota-holding requests add up to (with ``owner``, that user's)."""

    def host_usage(self) -> dict[str, tuple[int, int]]:
        """(vCPUs, memory in KiB) by host of what provisiond placed there."""

    def live_request(self, request_id: str) -> RequestRecord | None:
        """The in-memory record of a request the engine drives, or None."""

    def expect_domain_event(self, host: str, uuid: str, event: str,
                            request_id: str) -> asyncio.Future[DomainEvent]:
        """A future resolved by the domain's next ``event`` (register before acting)."""

    def forget_domain_event(self, host: str, uuid: str, event: str) -> None:
        """Drop the waiter registered by ``expect_domain_event``."""


# --------------------------------------------------------------------------- the steps


async def authorize(ctx: ProvisioningContext, req: RequestRecord) -> Outcome:
    """requested: the owner must hold CLOUD_CREATE on the pool, and its quota must hold."""
    pool = ctx.config.resource_pools.get(req.resource_pool)
    if pool is None:
        raise UnknownName(f"resource pool {req.resource_pool} is no longer configured")
    identity = Identity(req.owner, frozenset(req.owner_groups))
    if not holds(identity, pool, CLOUD_CREATE):
        raise PermissionDenied(f"{req.owner} does not hold CLOUD_CREATE on resource pool "
                               f"{req.resource_pool}")
    refusal = admission_refusal(pool, ctx.quota_usage(req.resource_pool),
                                ctx.quota_usage(req.resource_pool, req.owner), req.owner,
                                req.cpus, req.memory_kib, req.storage_gb)
    if refusal:
        raise QuotaExceeded(refusal)
    return Outcome(Trigger.AUTHORIZE,
                   f"{req.owner} holds CLOUD_CREATE on {req.resource_pool}; quota holds")


async def start_storage_search(ctx: ProvisioningContext, req: RequestRecord) -> Outcome:
    """authorized: go and look for a host and storage (``search_storage`` chooses both)."""
    return Outcome(Trigger.SEARCH_STORAGE,
                   f"looking for a host of {req.hardware_pool} and storage on it")


async def search_storage(ctx: ProvisioningContext, req: RequestRecord) -> Outcome:
    """storage-searching: choose the host and claim a free volume there, or reserve
    room for a new one (``place_on_hosts``), or fail with every host's reason."""
    hardware = _hardware_pool(ctx, req)
    template = appliance.template_of(ctx, req)
    capacities = await host_capacities(ctx, hardware)
    if all(c is None for c in capacities.values()):
        names = list(capacities)
        timeout = ctx.config.daemon.host_wait_timeout
        ctx.store.append_log(req.id, "note", State.STORAGE_SEARCHING, "host-unreachable",
                             f"no host of {req.hardware_pool} is reachable; waiting up to "
                             f"{timeout:g} s for one of {', '.join(names)}")
        back = await ctx.wait_for_any_host(names, timeout, req.id)
        if back is None:
            raise HostUnreachable(f"no host of {req.hardware_pool} is reachable")
        ctx.store.append_log(req.id, "note", State.STORAGE_SEARCHING, "host-back",
                             f"host {back} is reachable; choosing a host and storage")
        capacities = await host_capacities(ctx, hardware)
    decision = await place_request(ctx, hardware, capacities, template, req.cpus,
                                   req.memory_kib, req.storage_gb, req.id)
    if decision.host is None and decision.failure:
        # Look again before failing: the inventories may lag (a pool restarted with
        # libvirtd, volumes changed outside provisiond: libvirt has no volume events).
        await asyncio.gather(*(_refresh(ctx.host(name), hardware)
                               for name, capacity in capacities.items() if capacity),
                             return_exceptions=True)
        decision = await place_request(ctx, hardware, capacities, template, req.cpus,
                                       req.memory_kib, req.storage_gb, req.id)
    # From here to the engine recording the outcome: no await.
    ctx.metrics.placements.labels(
        {"reuse": "reused", "create": "created"}.get(decision.action, "no_storage")).inc()
    if decision.host is None:
        if decision.failure is None:
            raise NoHostCapacity(f"no host of {req.hardware_pool} can hold {req.cpus} vcpus "
                                 f"and {req.memory_kib} KiB: " + "; ".join(
                                     f"{v.host}: {v.reason}" for v in decision.hosts))
        raise NoStorage(decision.reason)
    host = ctx.host(decision.host)
    said = f"on host {host.name}, " + hosts_said(decision.hosts)
    store, storage = ctx.store, ctx.storage
    if decision.action == "reuse":
        assert decision.volume is not None
        vol = decision.volume
        where = storage.location(host.name, vol.pool)

        def claim() -> None:
            store.claim_volume(where, vol.pool, vol.name, req.id)
            storage.hold(where, vol.pool, vol.name, req.id)

        return Outcome(Trigger.REUSE_VOLUME, f"{decision.reason} {said}", {
            "host": host.name, "volume_pool": vol.pool, "volume_name": vol.name,
            "volume_path": vol.path, "volume_format": vol.format, "volume_owned": False,
            **_domain_of(req)}, claim)
    assert decision.pool is not None
    pool = decision.pool
    name = domain_xml.volume_name_for(req.id, decision.volume_format)
    where = storage.location(host.name, pool)

    def reserve() -> None:
        store.reserve_space(Reservation(req.id, where, pool, name, decision.new_volume_bytes))
        # Claim the name too: once created, the volume must not look free to others.
        store.claim_volume(where, pool, name, req.id)
        storage.hold(where, pool, name, req.id)

    return Outcome(Trigger.CREATE_STORAGE, f"{decision.reason} {said}", {
        "host": host.name, "volume_pool": pool, "volume_name": name,
        "volume_format": decision.volume_format, "volume_owned": True}, reserve)


async def _refresh(host: HostConnection, hardware: HardwarePool) -> None:
    await host.refresh_pools([p.name for p in hardware.storage_pools])


async def create_storage(ctx: ProvisioningContext, req: RequestRecord) -> Outcome:
    """storage-creating: create the request's volume unless it already exists."""
    host = ctx.host(req.host)
    assert req.volume_pool and req.volume_name
    # Look first only when this step runs again (after a restart or a lost connection)
    # and the inventory, read afresh since, lists the volume; otherwise create, and look
    # only if creating fails (a volume of that name exists: libvirt refuses to create it).
    volume = (await host.find_volume(req.volume_pool, req.volume_name)
              if ctx.repeating(req.id)
              and host.inventory.has_volume(req.volume_pool, req.volume_name) else None)
    adopted = f"volume {req.volume_pool}/{req.volume_name} already exists (adopted)"
    template = appliance.template_of(ctx, req)
    if volume is not None:
        detail = adopted
    else:
        try:
            if appliance.is_appliance(template):
                assert template is not None
                volume, detail = await appliance.create_disk(host, req, template)
            else:
                xml = domain_xml.build_volume_xml(req.volume_name, req.storage_gb * 1024**3,
                                                  req.volume_format)
                volume = await host.create_volume(req.volume_pool, xml)
                detail = (f"created volume {req.volume_pool}/{req.volume_name} "
                          f"({gib(volume.capacity)}, {req.volume_format or 'raw'})")
        except VirtError:
            volume = await host.find_volume(req.volume_pool, req.volume_name)
            if volume is None:
                raise
            detail = adopted
    store = ctx.store
    fields = {"volume_path": volume.path, **_domain_of(req)}
    trigger = Trigger.DEFINE
    if appliance.is_appliance(template):
        # Named before the seed step acts: a rollback after a crash knows what to delete.
        trigger, fields["seed_volume"] = Trigger.SEED, domain_xml.seed_volume_name(req.id)
    # The volume exists: libvirt's figures count it now, the reservation is done.
    return Outcome(trigger, detail, fields, lambda: store.drop_reservation(req.id))


async def define(ctx: ProvisioningContext, req: RequestRecord) -> Outcome:
    """defining: define the domain and wait for libvirt's DEFINED event for its UUID."""
    host = ctx.host(req.host)
    uuid = domain_xml.domain_uuid_for(req.id)
    # Only a repeated step can find its domain already there (the UUID is the request's),
    # and only if the inventory (read afresh since, kept current by events) lists it.
    existing = (await host.find_domain(uuid)
                if ctx.repeating(req.id) and host.inventory.knows_domain(uuid) else None)
    if existing is not None:
        if existing.metadata.get("request_id") != req.id:
            raise VirtError(f"domain {existing.name} already has this request's UUID {uuid} "
                            "but is not this request's")
        return Outcome(Trigger.FINISH,
                       f"domain {existing.name} ({uuid}) was already defined (adopted)",
                       {"domain_uuid": uuid, "domain_name": existing.name,
                        "vm_state": VM_INITIAL})
    template = ctx.config.templates.get(req.template)
    if template is None:
        raise UnknownName(f"template {req.template} is no longer configured")
    seeded = appliance.is_appliance(template)
    if not seeded and template.volume is not None and not host.inventory.has_volume(
            template.volume.pool, template.volume.name):
        iso = await host.find_volume(template.volume.pool, template.volume.name)
        if iso is None:
            raise VirtError(f"template {req.template}: ISO volume {template.volume.pool}/"
                            f"{template.volume.name} not found on host {host.name}")
    kickstart = template.kind == "kickstart"
    kernel = await _boot_path(host, template.kernel, template) if kickstart else None
    initrd = await _boot_path(host, template.initrd, template) if kickstart else None
    domain_type, arch = await host.capabilities()
    configured = _host_config(ctx.config, host.name).domain_type
    if configured != "auto":
        domain_type = configured
    assert req.volume_pool and req.volume_name
    spec = domain_xml.DomainSpec(
        name=req.name, uuid=uuid, domain_type=domain_type, arch=arch, cpus=req.cpus,
        memory_kib=req.memory_kib, disk_pool=req.volume_pool, disk_volume=req.volume_name,
        disk_format=req.volume_format,
        cdrom_path=None if seeded else template.path,
        cdrom_pool=req.volume_pool if seeded else (
            template.volume.pool if template.volume else None),
        cdrom_volume=req.seed_volume if seeded else (
            template.volume.name if template.volume else None),
        network=req.network, request_id=req.id, owner=req.owner, template=req.template,
        size=req.size, resource_pool=req.resource_pool,
        boot=("hd",) if seeded or kickstart else ("cdrom", "hd"),
        kernel_path=kernel, initrd_path=initrd,
        cmdline=template.cmdline if kickstart else None)
    xml = domain_xml.build_domain_xml(spec)
    if req.domain_uuid != uuid:  # a database of an older provisiond: record it first
        ctx.store.update_request(req.id, **_domain_of(req))
        req.domain_uuid, req.domain_name = uuid, req.name
        await ctx.store.durable()
    waiter = ctx.expect_domain_event(host.name, uuid, "DEFINED", req.id)
    timeout = ctx.config.daemon.define_event_timeout
    try:
        try:
            await host.define_domain(uuid, req.name, xml, spec.disks())
        except VirtError as exc:
            if "already exists" not in exc.message:
                raise
            # libvirt's message names the other domain's UUID: the admin's log has it, the
            # requester (who may not own that domain) gets the fact only.
            log.warning("request %s: %s", req.id, exc.message)
            raise VirtError(f"the name {req.name} is taken on host {host.name}; ask again "
                            "with another name", libvirt_code=exc.libvirt_code) from None
        try:
            event = await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            raise VirtTimeout(f"domain {req.name} ({uuid}) was defined but libvirt's DEFINED "
                              f"event did not arrive within {timeout:g} s") from None
    finally:
        ctx.forget_domain_event(host.name, uuid, "DEFINED")
    return Outcome(Trigger.FINISH,
                   f"domain {event.name} ({uuid}) defined on {host.name} "
                   f"({domain_type}, {req.cpus} vcpus, {req.memory_kib} KiB)"
                   + (f"; it boots its installer ({kernel}) directly until its first "
                      "power-off" if kickstart else ""),
                   {"domain_uuid": uuid, "domain_name": event.name, "vm_state": VM_INITIAL,
                    "installing": int(kickstart)})


async def _boot_path(host: HostConnection, file: BootFile | None, template: Template) -> str:
    """The host path of a kickstart template's kernel or initrd."""
    assert file is not None
    if file.path is not None:
        return file.path
    assert file.volume is not None
    vol = host.inventory.volume(file.volume.pool, file.volume.name) or await host.find_volume(
        file.volume.pool, file.volume.name)
    if vol is None:
        raise VirtError(f"template {template.name}: volume {file.volume.pool}/"
                        f"{file.volume.name} not found on host {host.name}")
    return vol.path


STEPS = {
    State.REQUESTED: authorize,
    State.AUTHORIZED: start_storage_search,
    State.STORAGE_SEARCHING: search_storage,
    State.STORAGE_CREATING: create_storage,
    State.SEEDING: appliance.create_seed,
    State.DEFINING: define,
}
"""The step run in each in-progress state."""


# --------------------------------------------------------------------------- after failing


def needs_rollback(req: RequestRecord) -> bool:
    """Whether a request failed and has not been rolled back yet."""
    return req.state == State.FAILED and not req.cleaned_up


async def rollback(ctx: ProvisioningContext, req: RequestRecord) -> None:
    """failed: undefine the domain and delete the volume it created, release its claims.

    Idempotent. ``HostUnreachable`` propagates: the engine waits for the host and runs it
    again. Any other libvirt error leaves it for the next start, with a note saying so.
    The request is marked cleaned up only once everything is undone.
    """
    if req.cleaned_up:
        return
    undone: list[str] = []
    try:
        if req.host is not None and (req.domain_uuid or req.volume_owned):
            host = ctx.host(req.host)
            uuid = req.domain_uuid or domain_xml.domain_uuid_for(req.id)
            name = await host.undefine_domain(uuid, of_request=req.id)
            if name is not None:
                undone.append(f"undefined domain {name}")
            if req.volume_owned and req.volume_pool and req.volume_name:
                if await host.delete_volume(req.volume_pool, req.volume_name):
                    undone.append(f"deleted volume {req.volume_pool}/{req.volume_name}")
            if req.seed_volume and req.volume_pool:
                if await host.delete_volume(req.volume_pool, req.seed_volume):
                    undone.append(f"deleted seed volume {req.volume_pool}/{req.seed_volume}")
    except HostUnreachable:
        raise
    except ProvisiondError as exc:
        ctx.store.append_log(req.id, "note", State.FAILED, "rollback",
                             f"rollback incomplete, will retry at next start: {exc.message}")
        return
    had_claim = req.volume_pool is not None
    store = ctx.store
    with store.atomic():
        for where, pool, volume in store.release_storage(req.id):
            ctx.storage.release(where, pool, volume)
        store.update_request(req.id, cleaned_up=1)
        if had_claim and not req.volume_owned:
            undone.append(f"released volume {req.volume_pool}/{req.volume_name}")
        elif had_claim and not undone:
            undone.append("released the space reserved in pool " + str(req.volume_pool))
        store.append_log(req.id, "note", State.FAILED, "rollback",
                         "rolled back: " + ("; ".join(undone) or "nothing to undo"))
    req.cleaned_up = True


# --------------------------------------------------------------------------- events


def record_event(ctx: ProvisioningContext, event: object, waiting: str | None) -> None:
    """Write a libvirt event into the log of each request it concerns."""
    store = ctx.store
    if isinstance(event, PoolEvent):
        for record in store.requests_on_pool(event.host, event.pool):
            store.append_log(record.id, "event", record.state, f"libvirt:pool-{event.event}",
                             f"storage pool {event.pool} of this request's volume "
                             f"{event.event}")
    elif isinstance(event, DomainEvent):
        record = (ctx.live_request(waiting) if waiting is not None else None) or \
            store.find_by_domain_uuid(event.uuid)
        if record is not None and record.host == event.host:
            store.append_log(record.id, "event", record.vm_state or record.state,
                             f"libvirt:{event.event}",
                             f"domain {event.name} {event.event} (detail {event.detail})")


# --------------------------------------------------------------------------- shared


def _hardware_pool(ctx: ProvisioningContext, req: RequestRecord) -> HardwarePool:
    hardware = ctx.config.hardware_pools.get(req.hardware_pool)
    if hardware is None:
        raise UnknownName(f"hardware pool {req.hardware_pool} is no longer configured")
    return hardware


def _host_config(config: Config, name: str) -> Any:
    for hw in config.hardware_pools.values():
        for host in hw.hosts:
            if host.name == name:
                return host
    raise VirtError(f"host {name!r} is not configured")


def _domain_of(req: RequestRecord) -> dict[str, str]:
    # Recorded with the move to defining, before the domain is: a rollback after a crash
    # then knows which domain to look for.
    return {"domain_uuid": domain_xml.domain_uuid_for(req.id), "domain_name": req.name}


class QuotaLedger:
    """Each resource pool's quota usage, each user's share of it, and what each host
    holds, counted in memory as requests move (read from the store the first time each
    is asked for: host choice runs for every request, and must not scan the history)."""

    def __init__(self, read: Any, read_hosts: Any = None) -> None:
        self._read = read
        self._read_hosts = read_hosts
        self._usage: dict[tuple[str, str | None], QuotaUsage] = {}
        self._hosts: dict[str, tuple[int, int]] | None = None

    def host_usage(self) -> dict[str, tuple[int, int]]:
        """(vCPUs, memory in KiB) by host of the requests bound to it that hold quota."""
        if self._hosts is None:
            self._hosts = dict(self._read_hosts())
        return self._hosts

    def usage(self, resource_pool: str, owner: str | None = None) -> QuotaUsage:
        """What the pool's quota-holding requests add up to (with ``owner``: that user's)."""
        key = (resource_pool, owner)
        if key not in self._usage:
            self._usage[key] = self._read(resource_pool, owner)
        return self._usage[key]

    def on_transition(self, req: RequestRecord, left: State, entered: State) -> None:
        """Count a request in when it passes the quota, out when it fails; on its host from
        when it is bound to one (leaving storage-searching) until it fails."""
        if (left in HOLDS_QUOTA) != (entered in HOLDS_QUOTA):
            self._add(req, 1 if entered in HOLDS_QUOTA else -1)
        if (left in ON_HOST) != (entered in ON_HOST):
            self._add_to_host(req, 1 if entered in ON_HOST else -1)

    def on_vm_transition(self, vm: Any, left: VmState, entered: VmState) -> None:
        """A deleted VM gives its share of its pool's quota, and its host's room, back."""
        if entered == VmState.DELETED:
            self._add(vm, -1)
            self._add_to_host(vm, -1)

    def _add_to_host(self, what: Any, sign: int) -> None:
        if self._hosts is None or what.host is None:
            return  # read when first asked for, with this transition in the store
        cpus, memory = self._hosts.get(what.host, (0, 0))
        self._hosts[what.host] = (cpus + sign * what.cpus, memory + sign * what.memory_kib)

    def _add(self, what: Any, sign: int) -> None:
        # A figure not read yet is read when first asked for: the store already has
        # this transition, so there is nothing to add to it now.
        for key in ((what.resource_pool, None), (what.resource_pool, what.owner)):
            usage = self._usage.get(key)
            if usage is not None:
                self._usage[key] = QuotaUsage(
                    usage.vms + sign, usage.cpus + sign * what.cpus,
                    usage.memory + sign * what.memory_kib,
                    usage.storage_gb + sign * what.storage_gb)




def provisioning_workflow(ctx: ProvisioningContext, records: Any,
                          ledger: QuotaLedger) -> Workflow[RequestRecord]:
    """The provisioning table with its steps, records, rollback and event log."""
    return Workflow(
        table=TABLE, steps=STEPS, records=records, context=ctx,
        host_of=lambda req: req.host, needs_cleanup=needs_rollback, cleanup=rollback,
        on_transition=ledger.on_transition, on_event=record_event)
