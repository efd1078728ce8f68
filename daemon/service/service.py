"""The service: the one facade the API (and any other front end) calls.

It assembles the parts (hosts, event router, engine, the provisioning workflow and its
context) and answers callers: submit, cancel, wait, look, explain, reconcile. Who may see
what is decided here; the API only maps HTTP to these calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, Callable, Sequence

from daemon.auth import CLOUD_ADMIN, CLOUD_CREATE, Identity, admission_refusal
from daemon.config import Config
from daemon.engine import Engine, EventRouter, Hosts
from daemon.errors import HostUnreachable, InvalidInput, InvalidState, PermissionDenied
from daemon.errors import ForceOffAsked, InUse, ProvisiondError, QuotaExceeded
from daemon.errors import TooManyInProgress, UnknownName
from daemon.placement import Decision
from daemon.placement.shared import StorageMap
from daemon.process.metrics import Metrics
from daemon.service import reconcile
from daemon.service.intake import ProvisioningRequest, new_request_row, pools_granting
from daemon.service.intake import validate
from daemon.service.sessions import Sessions
from daemon.engine import Outcome
from daemon.store import LogEntry, QuotaUsage, RequestRecord, RequestRecords, Store
from daemon.store import VmRecords
from daemon.virt.connection import HostConnection, Opener, open_connection
from daemon.workflows.placing import host_capacities, place_request
from daemon.workflows.provisioning import QuotaLedger
from daemon.workflows.provisioning import provisioning_workflow
from daemon.workflows.vm import vm_workflow
from daemon.service.contexts import StepContext, VmStepContext
from statemachines.provisioning import TERMINAL, State
from statemachines.vm import TABLE as VM_TABLE
from statemachines.vm import VmState, VmTrigger

log = logging.getLogger("provisiond.service")

OPERATIONS = {"start": VmTrigger.START, "stop": VmTrigger.STOP, "reboot": VmTrigger.REBOOT,
              "delete": VmTrigger.DELETE}
"""The operations on a VM, by their name in the API."""
RETRY_AFTER = 5
"""Seconds a caller over ``max_in_progress_per_user`` is told to wait (Retry-After)."""
PRUNE_INTERVAL = 3600.0
"""Seconds between two prunings of deleted VMs (and one at start)."""
OPERATION_PAST = {"start": "started", "stop": "stopped", "reboot": "rebooted",
                  "delete": "deleted"}


class Service:
    """provisiond's operations, for callers identified by the API."""

    def __init__(self, config: Config, store: Store, *, opener: Opener = open_connection,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        """In force; a reload replaces it whole (steps and handlers see old or new)."""
        self.store = store
        self.clock = clock
        self.metrics = Metrics(store.count_by_state)
        connections: dict[str, HostConnection] = {}
        for hw in config.hardware_pools.values():
            for host in hw.hosts:
                connections.setdefault(host.name, HostConnection(
                    host.name, host.uri, opener=opener,
                    call_timeout=config.daemon.libvirt_call_timeout,
                    observe=self._observe_call))
        self.storage = StorageMap(lambda name: connections.get(name), lambda: self.config)
        """Which hosts' pools are the same storage (``daemon.placement.shared``)."""
        for connection in connections.values():
            connection.on_volume_change = self.storage.mirror
        self.hosts = Hosts(connections, clock=clock,
                           on_lost=lambda name, why: self.engine.host_lost(name, why),
                           on_back=lambda name, gap: self.engine.host_back(name, gap),
                           on_reconnect=lambda name: self.metrics.reconnects.labels(name).inc())
        self.events = EventRouter(self.hosts, self.metrics, clock)
        self.engine = Engine(store, self.hosts, self.events, self.metrics, clock=clock,
                             host_wait_timeout=lambda: self.config.daemon.host_wait_timeout)
        self._ledger = QuotaLedger(store.quota_usage, store.host_usage)
        self._context = StepContext(self)
        self.provisioning = provisioning_workflow(self._context, RequestRecords(store),
                                                  self._ledger)
        self.engine.add(self.provisioning)
        self.vms = vm_workflow(VmStepContext(self), VmRecords(store),
                               self._ledger.on_vm_transition)
        self.engine.add(self.vms)
        self._background: set[asyncio.Task[None]] = set()
        self.sessions = Sessions(self)
        """The VMs' open consoles and displays."""
        self._looking: dict[str, bool] = {}
        """Hosts being looked at again (``look_again``): whether another look was asked."""

    # -- lifecycle

    async def start(self) -> None:
        """Open every host (events first), then resume what was left in progress."""
        self.store.enable_group_commit()
        self.events.start()
        await self.hosts.open_all(self.events.enqueue, self._claims_seen_by)
        self.relocate_claims()
        self.engine.resume()
        # VMs at rest may have changed while no provisiond watched: look (in the
        # background; a slow host must not hold up the start).
        for name in self.hosts:
            if self.hosts.reachable(name):
                task = asyncio.create_task(self.engine.resync(name), name=f"resync-{name}")
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        pruner = asyncio.create_task(self._prune_every(PRUNE_INTERVAL), name="prune")
        self._background.add(pruner)

    def look_again(self, host: str) -> None:
        """Look at the host's records soon, as after a reconnect: one look at a time per
        host, and one asked while it runs runs after it (it may have read before the
        change it is asked for). The look is a background task, ended with the service."""
        if host in self._looking:
            self._looking[host] = True
            return
        self._looking[host] = False

        async def look() -> None:
            try:
                while True:
                    self._looking[host] = False
                    await self.engine.resync(host)
                    if not self._looking.get(host):
                        return
            finally:
                self._looking.pop(host, None)

        task = asyncio.create_task(look(), name=f"look-{host}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def relocate_claims(self) -> None:
        """Claims and reservations recorded under a host's name for storage that is now
        shared (a database of an older provisiond, or a pool newly declared ``shared``)
        move to the storage's key, and are held on every host that sees it: another host
        must not hand out what this one claimed."""
        moved = self.store.relocate_storage(
            [name for name in self.hosts if self.hosts.reachable(name)],
            self.storage.location)
        for where, pool, volume, holder in moved:
            self.storage.hold(where, pool, volume, holder)
        if moved:
            log.info("%d claims moved to the key of the storage several hosts share",
                     len(moved))

    def _claims_seen_by(self, host: str) -> dict[tuple[str, str], str]:
        """The claims a host's inventory holds: on its own storage, and on shared storage
        of a pool it lists (``StorageMap.hosts_seeing``)."""
        claims = self.store.claims_on(host)
        for where, pool, volume, holder in self.store.shared_claims():
            if host in self.storage.hosts_seeing(where, pool):
                claims[(pool, volume)] = holder
        return claims

    async def prune(self) -> int:
        """Forget the deleted VMs older than ``daemon.retention_days``, a batch per loop
        pass (the event loop is never held long); return how many."""
        before = self.clock() - self.config.daemon.retention_days * 86400
        pruned = 0
        while True:
            count = self.store.prune_deleted(before)
            pruned += count
            await self.store.durable()
            if count == 0:
                break
            await asyncio.sleep(0)
        if pruned:
            log.info("pruned %d deleted VMs older than %g days", pruned,
                     self.config.daemon.retention_days)
        return pruned

    async def _prune_every(self, seconds: float) -> None:
        while True:
            try:
                await self.prune()
            except Exception:  # the store's error is logged; try again next time
                log.exception("pruning deleted VMs failed")
            await asyncio.sleep(seconds)

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop driving (every record stays in its last durable state), close hosts."""
        for task in self._background:
            task.cancel()
        await self.engine.stop(timeout)
        await self.events.stop(timeout)
        await self.hosts.close_all()

    # -- requests

    def submit(self, identity: Identity, req: ProvisioningRequest) -> RequestRecord:
        """Store a new request as ``requested`` and start driving it; return it.

        Unknown template, size or pool is refused before anything is stored. With an
        idempotency key the caller used before, the original request is returned.
        """
        return self._submit(identity, req, validate(self.config, identity, req))

    def _submit(self, identity: Identity, req: ProvisioningRequest,
                pool_name: str) -> RequestRecord:
        if req.idempotency_key is not None:
            earlier = self.store.find_by_idempotency_key(identity.user, req.idempotency_key)
            if earlier is not None:
                same = (earlier.template, earlier.size, earlier.resource_pool) == (
                    req.template, req.size, pool_name) and req.name in (None, earlier.name)
                if not same:
                    raise InvalidInput("this idempotency key was used for a different request "
                                       f"({earlier.id})", field="idempotency_key")
                return earlier
        self._check_in_progress(identity.user)
        self._admit(identity.user, pool_name, req.size)
        if req.name is not None:
            self._check_name(identity, req.name, self.config.hardware_pool_of(pool_name).name)
        record = self.store.insert_request(
            new_request_row(self.config, identity, req, pool_name),
            detail=f"{identity.user} asked for {req.template} / {req.size} in {pool_name}")
        log.info("request %s: %s", record.id, record.state,
                 extra={"request_id": record.id, "state": str(record.state)})
        # The engine moves its own copy; the caller keeps the request as it was stored.
        self.engine.drive(self.provisioning, dataclasses.replace(record))
        return record

    async def create(self, identity: Identity, req: ProvisioningRequest) -> RequestRecord:
        """``submit``, after making sure that a name the caller chose is not a domain's on
        the host already (one provisiond did not make): refused now, not after a volume."""
        pool_name = validate(self.config, identity, req)
        hardware = self.config.hardware_pool_of(pool_name)
        replay = req.idempotency_key is not None and self.store.find_by_idempotency_key(
            identity.user, req.idempotency_key) is not None
        if req.name is not None and not replay:
            self._check_name(identity, req.name, hardware.name)  # first: it may say more
            for host in hardware.hosts:
                if not self.hosts.reachable(host.name):
                    continue  # the define step finds out, and says so without details
                try:
                    taken = await self.hosts.connection(host.name).domain_named(req.name)
                except ProvisiondError as exc:
                    log.info("name %s not looked up on %s: %s", req.name, host.name,
                             exc.message)
                    continue
                if taken:
                    raise InUse(f"the name {req.name} is taken on host {host.name}; choose "
                                "another", field="name")
        return self._submit(identity, req, pool_name)  # its checks again: we awaited

    def _check_name(self, identity: Identity, name: str, hardware_pool: str) -> None:
        """InUse if a VM of provisiond's has (or will have) this name in the hardware pool;
        whose it is, only if it is the caller's."""
        holder = self.store.holder_of_name(name, hardware_pool)
        if holder is None:
            return
        if holder.owner == identity.user:
            raise InUse(f"you already have a VM named {name} (request {holder.id}); choose "
                        "another name or delete that VM", field="name")
        raise InUse(f"the name {name} is taken in hardware pool {hardware_pool}; choose "
                    "another", field="name")

    def _admit(self, user: str, pool_name: str, size_name: str) -> None:
        """QuotaExceeded, with the figures, if the pool's quota or the user's share of it
        would not hold one more VM of this size. Requests not yet authorized count too;
        the authorize step checks again (a refusal there fails the request)."""
        pool = self.config.resource_pools[pool_name]
        size = self.config.sizes[size_name]
        pool_usage = self._ledger.usage(pool_name)
        user_usage = self._ledger.usage(pool_name, user)
        for record in self.engine.live_records():
            if isinstance(record, RequestRecord) and record.state == State.REQUESTED \
                    and record.resource_pool == pool_name:
                pool_usage = _plus(pool_usage, record)
                if record.owner == user:
                    user_usage = _plus(user_usage, record)
        refusal = admission_refusal(pool, pool_usage, user_usage, user, size.cpus,
                                    size.memory, size.storage_size_in_gb)
        if refusal:
            raise QuotaExceeded(refusal)

    def _check_in_progress(self, user: str) -> None:
        """TooManyInProgress (429) if the user has ``max_in_progress_per_user`` requests
        and VM operations in progress already."""
        limit = self.config.daemon.max_in_progress_per_user
        count = sum(1 for r in self.engine.live_records() if r.owner == user)
        if count >= limit:
            raise TooManyInProgress(
                f"{user} has {count} requests and VM operations in progress, the most one "
                f"user may (daemon.max_in_progress_per_user = {limit}); ask again once some "
                "are over", retry_after=RETRY_AFTER)

    def cancel(self, request_id: str, by_user: str) -> RequestRecord:
        """Ask a live request to stop; it fails with 'cancelled by USER' and rolls back."""
        record = self.store.get_request(request_id)
        if record is None:
            raise UnknownName(no_such_request(request_id))
        if record.state in TERMINAL:
            raise InvalidState(f"request {request_id} is already {record.state}; "
                               "only a request in progress can be cancelled")
        if not self.engine.is_live(request_id):
            raise InvalidState(f"request {request_id} is {record.state} but not being driven "
                               "(see the daemon's log); it resumes at the next start")
        self.engine.cancel(request_id, by_user)
        return record

    async def operate(self, who: Identity, request_id: str, operation: str,
                      force: bool = False) -> RequestRecord:
        """Start, stop (``force``: forced off at once), reboot or delete a done request's VM;
        the request as it is once the operation is recorded (it runs on). The caller must
        see the request (owner or CLOUD_ADMIN). A delete while one runs returns that one."""
        record = self.visible(who, request_id)
        finishing = self.engine.live_record(record.id)
        if isinstance(finishing, RequestRecord) and finishing.state == State.DONE:
            # Done is stored (a client may have seen it) but its task is still ending:
            # the VM is the engine's to move only once it has.
            await self.engine.wait_finished(record.id, timeout=10)
        vm = self.store.get_vm(record.id)
        if vm is None:
            hint = ("; a request in progress is stopped by cancelling it (provctl cancel)"
                    if record.state not in TERMINAL else "")
            raise InvalidState(f"request {record.id} is {record.state}: only the VM of a done "
                               f"request can be operated{hint}")
        trigger = OPERATIONS[operation]
        if operation == "stop" and force:
            trigger = VmTrigger.FORCE_OFF
        if operation == "delete" and vm.state in (VmState.DELETING, VmState.DELETED):
            return record  # the delete already asked for
        if vm.state == VmState.UNKNOWN:
            raise HostUnreachable(f"host {vm.host} of VM {vm.name} is unreachable: its state "
                                  "is unknown until the host is back")
        if trigger == VmTrigger.FORCE_OFF and vm.state == VmState.POWERING_OFF:
            return record  # the forced stop already asked
        if VM_TABLE.destination(vm.state, trigger) is None:
            raise InvalidState(f"VM {vm.name} is {vm.state}: it cannot be "
                               f"{OPERATION_PAST[operation]} now", field="state")
        if trigger == VmTrigger.FORCE_OFF and vm.state == VmState.STOPPING and \
                self.engine.is_live(vm.id):
            # As virsh destroy after a virsh shutdown: the stop step stops waiting for
            # the guest and moves on to powering-off itself (no second operation).
            self.engine.hurry(vm.id, who.user, ForceOffAsked(who.user))
            return record
        self._check_in_progress(who.user)
        self.engine.fire(self.vms, vm, Outcome(trigger, f"{operation}"
                                               f"{' --force' if force else ''} by {who.user}"))
        current = self.store.get_request(record.id)
        assert current is not None
        return current

    async def addresses(self, record: RequestRecord) -> list[dict[str, Any]] | None:
        """A running VM's IP addresses as libvirt knows them ([] if it knows none); None
        when the host could not be asked (unreachable, or it refused)."""
        if record.vm_state not in (VmState.RUNNING, VmState.PAUSED) or not record.domain_uuid:
            return []
        try:
            return await self.hosts.connection(record.host).addresses(record.domain_uuid)
        except ProvisiondError as exc:
            log.info("addresses of %s not read: %s", record.id, exc.message)
            return None

    async def wait_terminal(self, request_id: str,
                            timeout: float | None = None) -> RequestRecord:
        """The request once it has ended (and is rolled back if it failed), or as it is
        when the daemon stops; ``asyncio.TimeoutError`` after ``timeout`` seconds."""
        if self.store.get_request(request_id) is None:
            raise UnknownName(no_such_request(request_id))
        await self.engine.wait_finished(request_id, timeout)
        record = self.store.get_request(request_id)
        assert record is not None
        return record

    def release_waiters(self) -> None:
        """Answer every ``wait_terminal`` now and end every console and display session
        (the daemon is stopping)."""
        self.engine.release_waiters()
        self.sessions.end_all("provisiond is stopping")

    # -- what a caller may see

    def pools_granting(self, identity: Identity, privilege: str) -> list[str]:
        """Names of the resource pools on which the caller holds ``privilege``."""
        return pools_granting(self.config, identity, privilege)

    def admin_pools(self, who: Identity) -> list[str]:
        """The pools where the caller holds CLOUD_ADMIN; PermissionDenied if none."""
        pools = self.pools_granting(who, CLOUD_ADMIN)
        if not pools:
            raise PermissionDenied(f"{who.user} holds CLOUD_ADMIN on no resource pool")
        return pools

    def visible(self, who: Identity, request_id: str) -> RequestRecord:
        """The request if the caller may see it; UnknownName otherwise (no leak)."""
        record = self.store.get_request(request_id)
        if record is None or not (record.owner == who.user or record.resource_pool in
                                  self.pools_granting(who, CLOUD_ADMIN)):
            raise UnknownName(no_such_request(request_id))
        return record

    def list_visible(self, who: Identity, *, limit: int, states: Sequence[State] | None = None,
                     owners: Sequence[str] | None = None, pools: Sequence[str] | None = None,
                     since: float | None = None, until: float | None = None,
                     after: str | None = None,
                     names: Sequence[str] | None = None) -> list[RequestRecord]:
        """A page of what the caller sees: their requests and their admin pools'."""
        return self.store.list_requests(
            states=states, owner=who.user,
            resource_pools=self.pools_granting(who, CLOUD_ADMIN), owners=owners, pools=pools,
            created_since=since, created_until=until, after=after, limit=limit, names=names)

    def log_of(self, record: RequestRecord) -> list[LogEntry]:
        """A request's log, oldest first."""
        return self.store.get_log(record.id)

    def whoami(self, who: Identity) -> dict[str, Any]:
        """Who the caller is to provisiond: user, groups, and the resource pools where
        they hold each privilege (anyone may ask: it tells what they may do)."""
        return {"user": who.user, "groups": sorted(who.groups),
                "privileges": {privilege: self.pools_granting(who, privilege)
                               for privilege in (CLOUD_CREATE, CLOUD_ADMIN)}}

    def catalog(self, who: Identity) -> dict[str, Any]:
        """Templates, sizes and the resource pools where the caller may create."""
        pools = self.pools_granting(who, CLOUD_CREATE)
        if not pools:
            raise PermissionDenied(f"{who.user} holds CLOUD_CREATE on no resource pool")
        cfg = self.config
        administered = set(self.pools_granting(who, CLOUD_ADMIN))
        return {
            "user": who.user,
            "templates": [{"name": t.name, "kind": t.kind, "description": t.description,
                           "accepts": (["ssh_keys", "user_data", "network_config"]
                                       if t.takes_cloud_init else [])}
                          for t in cfg.templates.values()],
            "sizes": [{"name": s.name, "cpus": s.cpus, "memory": s.memory,
                       "storage_size_in_gb": s.storage_size_in_gb, "network": s.network}
                      for s in cfg.sizes.values()],
            "resource_pools": [{
                "name": p, "description": cfg.resource_pools[p].description,
                "hardware_pool": cfg.resource_pools[p].hardware_pool,
                "quota": _quota_json(cfg.resource_pools[p].quota),
                "used": dataclasses.asdict(self._ledger.usage(p)),
                "used_by_you": dataclasses.asdict(self._ledger.usage(p, who.user)),
                "you_administer": p in administered,
            } for p in pools],
        }

    def host_states(self) -> dict[str, str]:
        """Each host: connected or disconnected."""
        return {name: "connected" if self.hosts.reachable(name) else "disconnected"
                for name in self.hosts}

    async def explain(self, identity: Identity, req: ProvisioningRequest) -> Decision:
        """The placement dry run: what would happen now, with every candidate's verdict."""
        pool_name = validate(self.config, identity, req)
        self._admit(identity.user, pool_name, req.size)  # a create would be refused
        size = self.config.sizes[req.size]
        hardware = self.config.hardware_pool_of(pool_name)
        template = self.config.templates[req.template]
        capacities = await host_capacities(self._context, hardware)
        if all(capacity is None for capacity in capacities.values()):
            raise HostUnreachable(f"no host of hardware pool {hardware.name} is reachable")
        return await place_request(self._context, hardware, capacities, template, size.cpus,
                                   size.memory, size.storage_size_in_gb, "(dry run)",
                                   explain=True)

    async def reconcile(self, who: Identity, apply: bool) -> tuple[list[str],
                                                                   list[reconcile.Orphan]]:
        """Orphans on the hosts of the caller's admin pools (removed with ``apply``)."""
        admin_pools = self.admin_pools(who)
        hosts = sorted({h.name for p in admin_pools
                        for h in self.config.hardware_pool_of(p).hosts})
        orphans = await reconcile.find_orphans(self, hosts)
        if apply:
            orphans = await reconcile.remove_orphans(self, orphans)
        return hosts, orphans

    def _observe_call(self, host: str, call: str, seconds: float, ok: bool) -> None:
        self.metrics.libvirt_call_seconds.labels(host, call).observe(seconds)
        if not ok:
            self.metrics.libvirt_call_errors.labels(host, call).inc()


def no_such_request(request_id: str) -> str:
    """404's words: the id as the caller gave it (cut short), the same whether it does not
    exist or is another's."""
    shown = request_id if len(request_id) <= 64 else request_id[:64] + "..."
    return f"no such request {shown!r}"


def _quota_json(quota: Any) -> dict[str, Any]:
    """A quota's set limits (and its ``per_user`` ones), as the catalog shows them."""
    shown = {k: v for k, v in vars(quota).items() if v is not None and k != "per_user"}
    if quota.per_user is not None:
        shown["per_user"] = _quota_json(quota.per_user)
    return shown


def _plus(usage: QuotaUsage, record: RequestRecord) -> QuotaUsage:
    return QuotaUsage(usage.vms + 1, usage.cpus + record.cpus,
                      usage.memory + record.memory_kib, usage.storage_gb + record.storage_gb)
