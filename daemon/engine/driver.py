"""The engine: the only code that changes a request's state.

One driver task per live request runs the step of the request's current state (see
``daemon.workflows.provisioning``), one after the other, until the request is terminal; a request's state
therefore changes in one place at a time, and ``set_state`` is the single choke point. It
fires a trigger on the shared ``transitions`` machine, whose ``before_state_change`` hook
persists the new state and its log row in one transaction before the model moves: the
transition validates and records, the step then does the work.

libvirt callbacks only put events into the inbox; one consumer task wakes the steps that
wait for an event (``defining`` waits for DEFINED) and records events in request logs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import libvirt
from transitions import MachineError

from daemon.workflows import provisioning as steps
from daemon.auth import CLOUD_CREATE, Identity, holds
from daemon.config import Config, HardwarePool, Host
from daemon.virt.domain_xml import domain_uuid_for
from daemon.errors import (
    HostUnreachable,
    InvalidInput,
    InvalidState,
    PermissionDenied,
    ProvisiondError,
    UnknownName,
    VirtError,
)
from daemon.process.metrics import Metrics
from daemon.placement.storage import Decision, place_storage, place_storage_fast
from daemon.store import QuotaUsage, RequestRecord, Store
from daemon.virt.connection import ConnectionClosed, DomainEvent, HostConnection, Opener, PoolEvent
from statemachines import (
    ACTS_OUTSIDE,
    HOLDS_QUOTA,
    TERMINAL,
    State,
    Trigger,
    build_machine,
    fire,
)

log = logging.getLogger("provisiond.engine")

RECONNECT_FIRST_DELAY = 0.2
RECONNECT_MAX_DELAY = 30.0
VM_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
IDEMPOTENCY_KEY_RE = re.compile(r"^[\x21-\x7e]{1,200}$")


class RequestModel:
    """A live request's handle on the shared state machine, with its stored record."""

    def __init__(self, record: RequestRecord) -> None:
        self.id = record.id
        self.state: State = record.state
        self.record = record
        """The request as stored; ``set_state`` keeps it in step with the database."""
        self.entered_at = record.updated_at
        self.repeating = False
        """The current state's step ran before (a restart or a lost connection cut it)."""


class RequestCancelled(Exception):
    """Raised into a waiting step when its request is cancelled."""


@dataclass(frozen=True)
class ProvisioningRequest:
    """What a caller asks for; validated by ``Engine.submit``."""

    template: str
    size: str
    resource_pool: str | None = None
    name: str | None = None
    idempotency_key: str | None = None


class Engine:
    """Carries requests through the state table against libvirt hosts."""

    def __init__(self, config: Config, store: Store, *, opener: Opener = libvirt.open,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.metrics = Metrics(store.count_by_state)
        self.hosts: dict[str, HostConnection] = {}
        for hw in config.hardware_pools.values():
            for host in hw.hosts:
                if host.name not in self.hosts:
                    self.hosts[host.name] = HostConnection(
                        host.name, host.uri, opener=opener,
                        call_timeout=config.daemon.libvirt_call_timeout,
                        observe=self._observe_call)
        self.machine = build_machine(self._persist_transition)
        self._models: dict[str, RequestModel] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancels: dict[str, str] = {}
        self._define_waiters: dict[tuple[str, str], asyncio.Future[DomainEvent]] = {}
        self._defining: dict[str, str] = {}  # domain UUID -> id of the request defining it
        self._terminal_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._inbox: asyncio.Queue[object] | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._host_up: dict[str, asyncio.Event] = {}
        self._down_since: dict[str, float] = {}
        self._reconnects: dict[str, asyncio.Task[None]] = {}
        self._inventory_updates: set[asyncio.Task[None]] = set()
        self._usage: dict[str, QuotaUsage] = {}

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open every host (events first), then resume requests left in progress."""
        self.store.enable_group_commit()
        self._inbox = asyncio.Queue()
        self._consumer = asyncio.create_task(self._consume_events(), name="libvirt-events")
        for name, host in self.hosts.items():
            self._host_up[name] = asyncio.Event()
            for pool, volume in self.store.claims_on(name):
                host.inventory.hold(pool, volume)
            try:
                await host.open(self.enqueue_event)
                self._host_up[name].set()
            except ProvisiondError as exc:
                # Not fatal: libvirtd may start after us. Requests wait for it (bounded).
                log.warning("host %s unreachable at start: %s", name, exc.message)
                self._host_lost(name, exc.message)
        self.resume()

    def resume(self) -> None:
        """Continue every live request from its last durable state; finish rollbacks."""
        for record in self.store.live_requests():
            if record.id not in self._tasks:
                log.info("resuming request %s in state %s", record.id, record.state)
                self._spawn(record)
                self._models[record.id].repeating = True
        for record in self.store.failed_needing_cleanup():
            if record.id not in self._tasks:
                self._tasks[record.id] = asyncio.create_task(self._rollback_task(record.id))

    async def stop(self, timeout: float = 10.0) -> None:
        """Stop driving requests (each stays in its last durable state) and close hosts."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        for task in self._reconnects.values():
            task.cancel()
        if self._consumer is not None:
            self._consumer.cancel()
            await asyncio.wait([self._consumer], timeout=timeout)
        for host in self.hosts.values():
            await host.close()

    # ------------------------------------------------------------------ requests in

    def validate(self, identity: Identity, req: ProvisioningRequest) -> str:
        """Check names and the caller's right to create; return the resource pool."""
        if req.template not in self.config.templates:
            raise InvalidInput(f"unknown template {req.template!r} (known: "
                              f"{', '.join(sorted(self.config.templates))})", field="template")
        if req.size not in self.config.sizes:
            raise InvalidInput(f"unknown size {req.size!r} (known: "
                              f"{', '.join(sorted(self.config.sizes))})", field="size")
        pool_name = req.resource_pool
        if pool_name is None:
            mine = self.pools_granting(identity, CLOUD_CREATE)
            if len(mine) != 1:
                raise InvalidInput(
                    "name a resource pool: you may create in " +
                    (", ".join(mine) if mine else "none"), field="resource_pool")
            pool_name = mine[0]
        pool = self.config.resource_pools.get(pool_name)
        if pool is None:
            raise InvalidInput(f"unknown resource pool {pool_name!r}", field="resource_pool")
        if not holds(identity, pool, CLOUD_CREATE):
            raise PermissionDenied(
                f"{identity.user} does not hold CLOUD_CREATE on resource pool {pool_name}")
        if req.name is not None and not VM_NAME_RE.match(req.name):
            raise InvalidInput("name must be 1-63 letters, digits, '.', '_' or '-', starting "
                               "with a letter or digit", field="name")
        if req.idempotency_key is not None and not IDEMPOTENCY_KEY_RE.match(req.idempotency_key):
            raise InvalidInput("idempotency key must be 1-200 printable ASCII characters",
                               field="idempotency_key")
        return pool_name

    def pools_granting(self, identity: Identity, privilege: str) -> list[str]:
        """Names of the resource pools on which the caller holds ``privilege``."""
        return sorted(name for name, pool in self.config.resource_pools.items()
                      if holds(identity, pool, privilege))

    def submit(self, identity: Identity, req: ProvisioningRequest) -> RequestRecord:
        """Store a new request as ``requested`` and start driving it; return it.

        Unknown template, size or pool is refused before anything is stored. With an
        idempotency key the caller used before, the original request is returned.
        """
        pool_name = self.validate(identity, req)
        if req.idempotency_key is not None:
            earlier = self.store.find_by_idempotency_key(identity.user, req.idempotency_key)
            if earlier is not None:
                same = (earlier.template, earlier.size, earlier.resource_pool) == (
                    req.template, req.size, pool_name) and req.name in (None, earlier.name)
                if not same:
                    raise InvalidInput("this idempotency key was used for a different request "
                                       f"({earlier.id})", field="idempotency_key")
                return earlier
        size = self.config.sizes[req.size]
        request_id = uuid.uuid4().hex
        record = self.store.insert_request({
            "id": request_id,
            "name": req.name or f"{req.template}-{request_id[:8]}",
            "owner": identity.user,
            "owner_groups": sorted(identity.groups),
            "template": req.template,
            "size": req.size,
            "resource_pool": pool_name,
            "hardware_pool": self.config.resource_pools[pool_name].hardware_pool,
            "cpus": size.cpus,
            "memory_kib": size.memory,
            "storage_gb": size.storage_size_in_gb,
            "network": size.network,
            "idempotency_key": req.idempotency_key,
        }, detail=f"{identity.user} asked for {req.template} / {req.size} in {pool_name}")
        self._spawn(record)
        return record

    def cancel(self, request_id: str, by_user: str) -> RequestRecord:
        """Ask a live request to stop; it fails with 'cancelled by USER' and rolls back."""
        record = self.store.get_request(request_id)
        if record is None:
            raise UnknownName(f"no request {request_id}")
        if record.state in TERMINAL:
            raise InvalidState(f"request {request_id} is already {record.state}; "
                               "only a request in progress can be cancelled")
        self._cancels.setdefault(request_id, by_user)
        for (host, dom_uuid), waiter in list(self._define_waiters.items()):
            if dom_uuid == domain_uuid_for(request_id) and not waiter.done():
                waiter.set_exception(RequestCancelled())
        return record

    async def explain(self, identity: Identity, req: ProvisioningRequest) -> Decision:
        """The placement dry run: what would happen now, with every candidate's verdict."""
        pool_name = self.validate(identity, req)
        size = self.config.sizes[req.size]
        hardware = self.config.hardware_pool_of(pool_name)
        host = self.hosts[hardware.hosts[0].name]
        if not self.host_reachable(host.name):
            raise HostUnreachable(f"host {host.name} is unreachable")
        inventory = host.inventory.snapshot([p.name for p in hardware.storage_pools])
        return self.decide_placement(host.name, hardware, size.storage_bytes, "(dry run)",
                                     inventory)

    def decide_placement(self, host: str, hardware: HardwarePool, size_bytes: int,
                         request_id: str, inventory: Any) -> Decision:
        """Run placement against the store's current claims and reservations.

        ``hardware`` is the pool as it was when the inventory was read (a reload may have
        replaced the configuration since)."""
        templates = self.config.templates.values()
        return place_storage(
            inventory, hardware.storage_pools,
            size_bytes=size_bytes, request_id=request_id,
            tolerance_bytes=hardware.reuse_tolerance_gb * 1024**3,
            claims=self.store.claims_on(host),
            reservations=self.store.reservations_on(host),
            template_volumes=[(t.volume.pool, t.volume.name) for t in templates if t.volume],
            template_paths=[t.path for t in templates if t.path],
        )

    def place(self, host: HostConnection, hardware: HardwarePool, size_bytes: int,
              request_id: str) -> Decision:
        """Placement for a request, from the host's live inventory (no libvirt call)."""
        templates = self.config.templates.values()
        return place_storage_fast(
            host.inventory, hardware.storage_pools, size_bytes=size_bytes,
            request_id=request_id, tolerance_bytes=hardware.reuse_tolerance_gb * 1024**3,
            reservations=self.store.reservations_on(host.name),
            template_volumes=[(t.volume.pool, t.volume.name) for t in templates if t.volume],
            template_paths=[t.path for t in templates if t.path])

    async def wait_terminal(self, request_id: str, timeout: float | None = None) -> RequestRecord:
        """Wait until the request is terminal (and rolled back if it failed), or until the
        daemon stops; return it. Raises ``asyncio.TimeoutError`` after ``timeout`` s."""
        record = self.store.get_request(request_id)
        if record is None:
            raise UnknownName(f"no request {request_id}")
        if request_id in self._tasks:
            waiter = asyncio.get_running_loop().create_future()
            waiters = self._terminal_waiters.setdefault(request_id, [])
            waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, timeout)
            finally:
                if waiter in waiters:
                    waiters.remove(waiter)
            record = self.store.get_request(request_id)
            assert record is not None
        return record

    def release_waiters(self) -> None:
        """Let every ``wait_terminal`` return now, ended or not (the daemon is stopping)."""
        for waiters in self._terminal_waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # ------------------------------------------------------------------ the choke point

    def set_state(self, request_id: str, trigger: Trigger, detail: str | None = None,
                  **updates: Any) -> State:
        """Move a live request along the table; persisted before this returns.

        ``updates`` are request fields written in the same transaction.
        """
        model = self._models[request_id]
        left = model.state
        try:
            fire(self.machine, model, trigger, detail=detail, updates=updates)
        except MachineError:
            raise InvalidState(f"request {request_id}: '{trigger}' is not allowed from "
                               f"{model.state}") from None
        now = self.clock()
        self.metrics.state_seconds.labels(left.value).observe(max(0.0, now - model.entered_at))
        model.entered_at = now
        record = model.record
        record.state, record.updated_at = model.state, now
        for key, value in updates.items():
            setattr(record, key, bool(value) if key in ("volume_owned", "cleaned_up")
                    else value)
        if (left in HOLDS_QUOTA) != (model.state in HOLDS_QUOTA):
            self._count_usage(record, +1 if model.state in HOLDS_QUOTA else -1)
        log.info("request %s: %s", request_id, model.state,
                 extra={"request_id": request_id, "state": str(model.state)})
        return model.state

    def _persist_transition(self, event: Any) -> None:
        # transitions' before_state_change hook: raising here leaves the model unmoved.
        source = State[event.transition.source]
        dest = State[event.transition.dest]
        self.store.record_transition(event.model.id, source, dest, event.event.name,
                                     event.kwargs.get("detail"), event.kwargs.get("updates"))

    def quota_usage(self, resource_pool: str) -> QuotaUsage:
        """What the pool's quota-holding requests add up to (counted in memory)."""
        if resource_pool not in self._usage:
            self._usage[resource_pool] = self.store.quota_usage(resource_pool)
        return self._usage[resource_pool]

    def _count_usage(self, record: RequestRecord, sign: int) -> None:
        usage = self.quota_usage(record.resource_pool)
        self._usage[record.resource_pool] = QuotaUsage(
            usage.vms + sign, usage.cpus + sign * record.cpus,
            usage.memory + sign * record.memory_kib, usage.storage_gb + sign * record.storage_gb)

    def fail(self, request_id: str, reason: str) -> None:
        """Move a live request to ``failed`` with ``reason`` (its rollback follows)."""
        self.set_state(request_id, Trigger.FAIL, reason, reason=reason)

    # ------------------------------------------------------------------ driving

    def _spawn(self, record: RequestRecord) -> None:
        model = RequestModel(dataclasses.replace(record))  # its own copy, moved by set_state
        self._models[record.id] = model
        self._tasks[record.id] = asyncio.create_task(self._drive(record.id),
                                                     name=f"request-{record.id}")

    def _observe_call(self, host: str, call: str, seconds: float, ok: bool) -> None:
        self.metrics.libvirt_call_seconds.labels(host, call).observe(seconds)
        if not ok:
            self.metrics.libvirt_call_errors.labels(host, call).inc()

    def repeating(self, request_id: str) -> bool:
        """Whether the request's current step ran before and may have acted already."""
        model = self._models.get(request_id)
        return model is None or model.repeating

    def host_config(self, name: str) -> Host:
        """The configured ``Host`` of this name."""
        for hw in self.config.hardware_pools.values():
            for host in hw.hosts:
                if host.name == name:
                    return host
        raise VirtError(f"host {name!r} is not configured")

    def host_of(self, record: RequestRecord) -> HostConnection:
        """The host a request is placed on."""
        if record.host is None or record.host not in self.hosts:
            raise VirtError(f"host {record.host!r} of request {record.id} is not configured")
        return self.hosts[record.host]

    async def _drive(self, request_id: str) -> None:
        model = self._models[request_id]
        try:
            while model.state not in TERMINAL:
                if model.state in ACTS_OUTSIDE:
                    await self.store.durable()  # on disk before its step acts on libvirt
                # Else no await: the steps up to the next one that acts run in one pass of
                # the loop, and one commit covers their transitions.
                by = self._cancels.get(request_id)
                if by is not None:
                    self.fail(request_id, f"cancelled by {by}")
                    break
                state = model.state
                try:
                    await steps.STEPS[state](self, model.record)
                    model.repeating = model.repeating and model.state == state
                except RequestCancelled:
                    continue
                except HostUnreachable as exc:
                    model.repeating = True  # the step may have acted before the loss
                    if not await self._wait_for_host(request_id, exc):
                        self.fail(request_id, exc.message + f" (host unreachable for more "
                                  f"than {self.config.daemon.host_wait_timeout:g} s)")
                except ProvisiondError as exc:
                    self.fail(request_id, exc.message)
                except (asyncio.CancelledError, GeneratorExit):
                    raise
                except Exception as exc:  # a bug must fail one request, not the daemon
                    log.exception("request %s: step for %s crashed", request_id, model.state)
                    self.fail(request_id, f"internal error in {model.state}: "
                                          f"{type(exc).__name__}: {exc}")
            await self.store.durable()  # whoever waits for the end is told a durable one
            if model.state == State.FAILED:
                await self._rollback_until_done(request_id)
        finally:
            self._models.pop(request_id, None)
            self._tasks.pop(request_id, None)
            self._cancels.pop(request_id, None)
            for waiter in self._terminal_waiters.pop(request_id, []):
                if not waiter.done():
                    waiter.set_result(None)

    async def _rollback_until_done(self, request_id: str) -> None:
        """Roll back; if the host is unreachable, wait for it (bounded) and try again."""
        while True:
            try:
                await steps.rollback(self, request_id)
                return
            except HostUnreachable as exc:
                if not await self._wait_for_host(request_id, exc):
                    return  # left for the next start; the log says so

    async def _wait_for_host(self, request_id: str, exc: HostUnreachable) -> bool:
        """Wait (bounded) until the request's host is reachable again; False on timeout."""
        record = self.store.get_request(request_id)
        if record is None or record.host not in self._host_up:
            return False
        self._host_lost(record.host, exc.message)
        state = self._models[request_id].state if request_id in self._models else State.FAILED
        self.store.append_log(request_id, "note", state, "host-unreachable",
                              f"{exc.message}; waiting for host {record.host}")
        try:
            await asyncio.wait_for(self._host_up[record.host].wait(),
                                   self.config.daemon.host_wait_timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ reconnect

    def host_reachable(self, name: str) -> bool:
        """Whether the engine currently holds a working connection to the host."""
        return name in self._host_up and self._host_up[name].is_set()

    def _host_lost(self, name: str, why: str) -> None:
        """Mark a host down and start reconnecting (once)."""
        task = self._reconnects.get(name)
        if task is not None and not task.done():
            return
        self._host_up[name].clear()
        self._down_since[name] = self.clock()
        for request_id in self._live_on(name):
            self.store.append_log(request_id, "note", self._models[request_id].state,
                                  "connection-lost", f"connection to host {name} lost: {why}")
        self._reconnects[name] = asyncio.create_task(self._reconnect(name),
                                                     name=f"reconnect-{name}")

    def _live_on(self, host: str) -> list[str]:
        out = []
        for request_id in list(self._models):
            record = self.store.get_request(request_id)
            if record is not None and record.host == host:
                out.append(request_id)
        return out

    async def _reconnect(self, name: str) -> None:
        """Reopen the host with capped exponential backoff and jitter, then resync."""
        host = self.hosts[name]
        attempt = 0
        while True:
            delay = min(RECONNECT_MAX_DELAY, RECONNECT_FIRST_DELAY * 2 ** attempt)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            try:
                await host.reopen()
                break
            except ProvisiondError as exc:
                attempt += 1
                log.warning("reconnect to %s failed (attempt %d): %s", name, attempt,
                            exc.message)
        gap = self.clock() - self._down_since.get(name, self.clock())
        log.info("reconnected to %s after %.1f s", name, gap)
        self.metrics.reconnects.labels(name).inc()
        self._host_up[name].set()
        await self._resync(name, gap)

    async def _resync(self, name: str, gap: float) -> None:
        """Look at what events may have been missed while disconnected."""
        host = self.hosts[name]
        for request_id in self._live_on(name):
            self.store.append_log(request_id, "note", self._models[request_id].state, "resync",
                                  f"reconnected to host {name} after {gap:.1f} s; events of "
                                  "that gap are lost, so the request's resources are looked "
                                  "at again")
        for (host_name, dom_uuid), waiter in list(self._define_waiters.items()):
            if host_name != name or waiter.done():
                continue
            try:
                found = await host.find_domain(dom_uuid)
            except ProvisiondError as exc:
                waiter.set_exception(HostUnreachable(exc.message))
                continue
            if found is not None:
                # DEFINED happened while we were away: the look stands in for the event.
                waiter.set_result(DomainEvent(name, dom_uuid, found.name, "DEFINED", -1,
                                              self.clock()))
            else:
                waiter.set_exception(HostUnreachable(
                    f"connection to {name} lost while defining; the domain is not there"))

    async def _rollback_task(self, request_id: str) -> None:
        try:
            await self._rollback_until_done(request_id)
        finally:
            self._tasks.pop(request_id, None)
            for waiter in self._terminal_waiters.pop(request_id, []):
                if not waiter.done():
                    waiter.set_result(None)

    # ------------------------------------------------------------------ events

    def _update_inventory(self, event: PoolEvent | DomainEvent) -> None:
        host = self.hosts[event.host]
        update = (host.note_pool_event(event.pool, event.event) if isinstance(event, PoolEvent)
                  else host.note_domain_event(event.uuid, event.event, event.detail))

        async def run() -> None:
            try:
                await update
            except ProvisiondError as exc:  # a reconnect reloads the inventory anyway
                log.warning("inventory of %s not updated after %s: %s", event.host,
                            event.event, exc.message)

        task = asyncio.create_task(run())
        self._inventory_updates.add(task)
        task.add_done_callback(self._inventory_updates.discard)

    def enqueue_event(self, event: object) -> None:
        """libvirt's callbacks land here: enqueue and return at once."""
        if self._inbox is not None:
            self._inbox.put_nowait(event)

    def expect_defined(self, host: str, domain_uuid: str,
                       request_id: str) -> asyncio.Future[DomainEvent]:
        """A future resolved by the DEFINED event of the domain the request is defining
        (register before defining)."""
        waiter: asyncio.Future[DomainEvent] = asyncio.get_running_loop().create_future()
        self._define_waiters[(host, domain_uuid)] = waiter
        self._defining[domain_uuid] = request_id
        return waiter

    def forget_defined(self, host: str, domain_uuid: str) -> None:
        """Drop the DEFINED waiter of a domain."""
        self._define_waiters.pop((host, domain_uuid), None)
        self._defining.pop(domain_uuid, None)

    async def _consume_events(self) -> None:
        assert self._inbox is not None
        while True:
            event = await self._inbox.get()
            try:
                self._handle_event(event)
            except Exception:
                log.exception("cannot handle libvirt event %r", event)

    def _handle_event(self, event: object) -> None:
        kind = type(event).__name__
        self.metrics.events.labels(getattr(event, "host", "?"), kind,
                                   getattr(event, "event", "CLOSED")).inc()
        if isinstance(event, ConnectionClosed):
            log.warning("libvirt connection to %s closed (reason %d)", event.host, event.reason)
            self._host_lost(event.host, f"libvirt closed the connection (reason {event.reason})")
            return
        if isinstance(event, (PoolEvent, DomainEvent)) and event.host in self.hosts:
            self._update_inventory(event)
        if isinstance(event, PoolEvent):
            for record in self.store.requests_on_pool(event.host, event.pool):
                self.store.append_log(record.id, "event", record.state,
                                      f"libvirt:pool-{event.event}",
                                      f"storage pool {event.pool} of this request's volume "
                                      f"{event.event}")
            return
        if not isinstance(event, DomainEvent):
            return
        if event.event == "DEFINED":
            waiter = self._define_waiters.get((event.host, event.uuid))
            if waiter is not None and not waiter.done():
                waiter.set_result(event)
        model = self._models.get(self._defining.get(event.uuid, ""))
        record = (model.record if model is not None
                  else self.store.find_by_domain_uuid(event.uuid))
        if record is not None and record.host == event.host:
            self.store.append_log(record.id, "event", record.state, f"libvirt:{event.event}",
                                  f"domain {event.name} {event.event} (detail {event.detail})")
