"""The VM lifecycle workflow: one step per operation of ``statemachines.vm``.

Each operation's state is durable before its step acts (they are all in the table's
``acts_outside``), and each step is safe to run again: it looks at the domain's power
state and does only what is left (starting a running domain, or destroying a stopped
one, is a no-op). libvirt's events move the resting states (``on_event``); after a start
or a reconnect the real states are looked up (``resync``), since events in a gap are lost.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ContextManager, Protocol

from daemon.config import Config
from daemon.engine.workflow import Outcome, Workflow
from daemon.errors import ForceOffAsked, HostUnreachable, ProvisiondError, VirtError
from daemon.placement.shared import StorageMap
from daemon.store import VmRecord
from daemon.virt.calls import CANNOT_WIPE, GONE, POOL_INACTIVE, POOL_MISSING, WIPED
from daemon.virt.connection import DomainEvent, HostConnection
from statemachines.vm import TABLE, VmState, VmTrigger

log = logging.getLogger("provisiond.vm")

STOPPED_CRASHED_DETAILS = frozenset({2, 5})
"""libvirt's VIR_DOMAIN_EVENT_STOPPED_CRASHED and _FAILED: the guest crashed or the
emulator died (not a stop)."""

EVENT_TRIGGERS = {"STARTED": VmTrigger.STARTED, "RESUMED": VmTrigger.RESUMED,
                  "SUSPENDED": VmTrigger.PAUSED, "CRASHED": VmTrigger.CRASHED,
                  "UNDEFINED": VmTrigger.VANISHED}
"""A libvirt lifecycle event -> the trigger it fires on a resting VM (STOPPED: see
``trigger_of``)."""

POWER_TRIGGERS = {"running": VmTrigger.STARTED, "paused": VmTrigger.PAUSED,
                  "shutoff": VmTrigger.STOPPED, "crashed": VmTrigger.CRASHED}
"""A power state found by looking -> the trigger that brings a resting VM to it."""


class VmStore(Protocol):
    """The store's methods the VM steps use (the ``Store`` has them all)."""

    def atomic(self) -> ContextManager[None]: ...
    def release_storage(self, request_id: str) -> list[tuple[str, str, str]]: ...
    def append_log(self, request_id: str, kind: str, state: Any, trigger: str,
                   detail: str | None = None) -> None: ...
    def find_by_domain_uuid(self, domain_uuid: str) -> Any: ...
    def get_vm(self, request_id: str) -> VmRecord | None: ...
    def vms(self, *, states: Any, host: str | None = None) -> list[VmRecord]: ...


class VmContext(Protocol):
    """What a VM step may see and do; nothing here moves a state."""

    @property
    def config(self) -> Config:
        """The configuration in force."""

    @property
    def store(self) -> VmStore:
        """Claims and notes."""

    @property
    def storage(self) -> StorageMap:
        """Which hosts' pools are the same storage; claims held on all of them."""

    def host(self, name: str | None) -> HostConnection:
        """A configured host's connection."""

    def expect_domain_event(self, host: str, uuid: str, event: str,
                            request_id: str) -> asyncio.Future[DomainEvent]:
        """A future resolved by the domain's next ``event``."""

    def forget_domain_event(self, host: str, uuid: str, event: str) -> None:
        """Drop the waiter of ``expect_domain_event``."""

    def move(self, vm: VmRecord, trigger: VmTrigger, detail: str) -> None:
        """Fire an event's trigger on a resting VM (through the engine)."""

    def driven(self, request_id: str) -> bool:
        """Whether an operation of this VM is in progress."""

    def after_operation(self, request_id: str, callback: Any) -> None:
        """Call ``callback`` once the VM's operation in progress has ended."""

    def forced_off_by(self, request_id: str) -> str | None:
        """Who asked for a forced stop of this stopping VM, if anyone did."""

    def now(self) -> float:
        """The clock the records' ``updated_at`` are on."""

    def look_again(self, host: str) -> None:
        """Look at the host's VMs soon, as after a reconnect (one look at a time per
        host; one asked meanwhile runs after it)."""


# --------------------------------------------------------------------------- the steps


_ALREADY = {"start": ("running", "paused"), "shutdown": ("shutoff", "crashed"),
            "destroy": ("shutoff", "crashed")}
"""Power states in which an action is a no-op (``HostConnection.power`` leaves the
domain alone): no event will come, e.g. when a step resumes after a crash."""


async def _power(ctx: VmContext, vm: VmRecord, action: str, event: str,
                 timeout: float) -> tuple[str | None, bool]:
    """Ask for a power action and wait (at most ``timeout``) for its event; (the power
    state before, whether the event came). Nothing is awaited where the action did
    nothing (the domain was already there)."""
    host = ctx.host(vm.host)
    assert vm.domain_uuid is not None
    waiter = ctx.expect_domain_event(host.name, vm.domain_uuid, event, vm.id)
    try:
        before = await host.power(vm.domain_uuid, action)
        if before is None:
            raise VirtError(f"domain {vm.domain_name} ({vm.domain_uuid}) is not on host "
                            f"{host.name}")
        if before in _ALREADY.get(action, ()):
            return before, False
        try:
            await asyncio.wait_for(waiter, timeout)
            return before, True
        except asyncio.TimeoutError:
            return before, False
    finally:
        ctx.forget_domain_event(host.name, vm.domain_uuid, event)


async def start(ctx: VmContext, vm: VmRecord) -> Outcome:
    """starting: start the domain (unless it runs) and wait for STARTED."""
    before, seen = await _power(ctx, vm, "start", "STARTED",
                                ctx.config.daemon.define_event_timeout)
    if before == "running":
        return Outcome(VmTrigger.STARTED, f"domain {vm.domain_name} was already running")
    if not seen:
        raise VirtError(f"domain {vm.domain_name} was started but libvirt's STARTED event "
                        f"did not arrive within {ctx.config.daemon.define_event_timeout:g} s")
    return Outcome(VmTrigger.STARTED, f"domain {vm.domain_name} started on {vm.host}")


async def stop(ctx: VmContext, vm: VmRecord) -> Outcome:
    """stopping: ACPI shutdown; forced off if it has not stopped within stop_timeout,
    or at once when a forced stop is asked meanwhile (then through powering-off)."""
    timeout = ctx.config.daemon.stop_timeout
    try:
        asked = ctx.forced_off_by(vm.id)  # asked before this step began to wait
        if asked is not None:
            raise ForceOffAsked(asked)
        before, seen = await _power(ctx, vm, "shutdown", "STOPPED", timeout)
        if before in ("shutoff", "crashed"):
            return Outcome(VmTrigger.STOPPED, f"domain {vm.domain_name} was already off")
        if seen:
            return Outcome(VmTrigger.STOPPED, f"domain {vm.domain_name} shut down")
        await _power(ctx, vm, "destroy", "STOPPED", ctx.config.daemon.define_event_timeout)
    except ForceOffAsked as exc:  # while waiting: the wait was interrupted
        return Outcome(VmTrigger.FORCE_OFF, f"stop --force by {exc.user} while domain "
                                            f"{vm.domain_name} was shutting down")
    return Outcome(VmTrigger.STOPPED, f"domain {vm.domain_name} did not shut down within "
                                      f"{timeout:g} s: forced off")


async def power_off(ctx: VmContext, vm: VmRecord) -> Outcome:
    """powering-off: destroy the domain (forced off at once)."""
    before, _seen = await _power(ctx, vm, "destroy", "STOPPED",
                                 ctx.config.daemon.define_event_timeout)
    return Outcome(VmTrigger.STOPPED, f"domain {vm.domain_name} "
                   + ("was already off" if before in ("shutoff", "crashed") else "forced off"))


async def reboot(ctx: VmContext, vm: VmRecord) -> Outcome:
    """rebooting: ask the guest to reboot (ACPI)."""
    host = ctx.host(vm.host)
    assert vm.domain_uuid is not None
    if await host.power(vm.domain_uuid, "reboot") is None:
        raise VirtError(f"domain {vm.domain_name} ({vm.domain_uuid}) is not on {host.name}")
    return Outcome(VmTrigger.REBOOTED, f"domain {vm.domain_name} asked to reboot")


async def finish_install(ctx: VmContext, vm: VmRecord) -> Outcome:
    """installed: redefine the domain without its installer's kernel (it boots from its
    disk from now on)."""
    host = ctx.host(vm.host)
    assert vm.domain_uuid is not None
    changed = await host.remove_direct_boot(vm.domain_uuid)
    if changed is None:
        raise VirtError(f"domain {vm.domain_name} ({vm.domain_uuid}) is not on {host.name}")
    detail = (f"domain {vm.domain_name} redefined to boot from its disk (the installer's "
              "kernel, initrd and cmdline removed)" if changed else
              f"domain {vm.domain_name} already boots from its disk")
    return Outcome(VmTrigger.STOPPED, detail, {"installing": 0})


async def delete(ctx: VmContext, vm: VmRecord) -> Outcome:
    """deleting: force off, undefine, then give the storage back (see ``release``).

    The domain's UNDEFINED event is the operation's own, like start's STARTED: expected,
    so that the listener leaves it alone, but not awaited (nothing here needs it, and
    libvirt sends it after the undefine has returned). If the step fails once the domain
    is gone, the event is looked at when the operation has ended, as the listener would
    have (the VM, back to stopped, is then found vanished: delete it again)."""
    host = ctx.host(vm.host)
    uuid = vm.domain_uuid
    assert uuid is not None
    undefined = ctx.expect_domain_event(host.name, uuid, "UNDEFINED", vm.id)
    try:
        name = await host.undefine_domain(uuid, of_request=vm.id)
        if name is not None:
            done = [f"undefined domain {name}"]
        else:
            done = [f"domain {vm.domain_name} was already gone"]
        return await release(ctx, vm, host, done)
    except ProvisiondError:
        if undefined.done() and not undefined.cancelled() and undefined.exception() is None:
            event = undefined.result()
            ctx.after_operation(vm.id, lambda: on_event(ctx, event, None))
        raise
    finally:
        ctx.forget_domain_event(host.name, uuid, "UNDEFINED")


async def release(ctx: VmContext, vm: VmRecord, host: HostConnection,
                  done: list[str]) -> Outcome:
    """Give the VM's storage back: a volume it created is deleted; a volume it reused is
    wiped and free again, or as its pool's ``on_release`` says. A volume that cannot be
    wiped stays claimed (never handed to another owner unwiped), and the log says so."""
    keep_claim = False
    if vm.seed_volume and vm.volume_pool:
        if await host.delete_volume(vm.volume_pool, vm.seed_volume):
            done.append(f"deleted seed volume {vm.volume_pool}/{vm.seed_volume}")
    if vm.volume_pool and vm.volume_name:
        where = f"{vm.volume_pool}/{vm.volume_name}"
        policy = _on_release(ctx.config, vm)
        if vm.volume_owned or policy == "delete":
            if await host.delete_volume(vm.volume_pool, vm.volume_name):
                done.append(f"deleted volume {where}")
        elif policy == "keep":
            done.append(f"released volume {where} as it is (on_release: keep)")
        else:
            found = await host.wipe_volume(vm.volume_pool, vm.volume_name)
            if found == WIPED:
                done.append(f"wiped and released volume {where}")
            elif found == GONE:
                done.append(f"volume {where} was already gone (its claim released)")
            else:
                keep_claim = True
                why = {CANNOT_WIPE: f"host {host.name} cannot wipe it",
                       POOL_MISSING: f"its pool is not defined on host {host.name}",
                       POOL_INACTIVE: f"its pool is not running on host {host.name}"}[found]
                done.append(f"volume {where} kept out of the free set: {why}, and another "
                            "owner must not see this VM's data (delete it by hand, then "
                            "provctl reconcile --apply releases its claim)")
    store = ctx.store

    def give_back() -> None:
        if keep_claim or not (vm.volume_pool and vm.volume_name):
            return
        for where, pool, volume in store.release_storage(vm.id):
            ctx.storage.release(where, pool, volume)

    return Outcome(VmTrigger.DELETED, "; ".join(done), writes=give_back)


def _on_release(config: Config, vm: VmRecord) -> str:
    for hardware in config.hardware_pools.values():
        if any(h.name == vm.host for h in hardware.hosts):
            for ref in hardware.storage_pools:
                if ref.name == vm.volume_pool:
                    return ref.on_release
    return "wipe"


RESYNC_FIRST_RETRY = 1.0
RESYNC_MAX_RETRY = 60.0
"""Seconds before a refused look at a host's VMs is tried again, doubling up to the max."""
RESYNC_ATTEMPTS = 10
"""Tries of one look (about 6 minutes of them) before it is given up."""

STEPS = {
    VmState.STARTING: start,
    VmState.STOPPING: stop,
    VmState.POWERING_OFF: power_off,
    VmState.REBOOTING: reboot,
    VmState.DELETING: delete,
    VmState.INSTALLED: finish_install,
}
"""The step of each operation's state."""


# --------------------------------------------------------------------------- events


def trigger_of(event: DomainEvent) -> VmTrigger | None:
    """The trigger a libvirt lifecycle event fires on a resting VM, if any."""
    if event.event == "STOPPED":
        return (VmTrigger.CRASHED if event.detail in STOPPED_CRASHED_DETAILS
                else VmTrigger.STOPPED)
    return EVENT_TRIGGERS.get(event.event)


def on_event(ctx: VmContext, event: object, waiting: str | None) -> None:
    """A lifecycle event of a provisiond VM at rest moves it (an operation in progress
    waits for its own events)."""
    if not isinstance(event, DomainEvent) or waiting is not None:
        return
    if event.event == "DEFINED":
        # A vanished VM's domain defined again (virsh define, the end of a rename): it
        # may be running (undefined while it ran, it went on as a transient domain), so
        # its host is looked at rather than the VM taken to be shut off.
        found = ctx.store.find_by_domain_uuid(event.uuid)
        if found is not None and found.host == event.host and \
                found.vm_state == VmState.VANISHED:
            ctx.look_again(event.host)
        return
    trigger = trigger_of(event)
    if trigger is None:
        return
    record = ctx.store.find_by_domain_uuid(event.uuid)
    if record is None or record.host != event.host or record.vm_state is None:
        return
    if ctx.driven(record.id):
        # Not the operation's own event (it has a waiter for those): look again once the
        # operation has ended, with the VM where the operation left it. An event in the
        # moment between its last step and the end of its task is not lost.
        ctx.after_operation(record.id, lambda: on_event(ctx, event, None))
        return
    if record.installing and trigger == VmTrigger.STOPPED:
        trigger = VmTrigger.INSTALLER_DONE  # its first power-off ends the install
    if TABLE.destination(VmState(record.vm_state), trigger) is None:
        return  # it changes nothing (a deleted VM's UNDEFINED, say): no second read
    vm = ctx.store.get_vm(record.id)  # the same row (no await since), as the VM's record
    if vm is None:
        return
    try:
        ctx.move(vm, trigger, f"libvirt: domain {event.name} {event.event} (detail "
                              f"{event.detail})")
    except ProvisiondError as exc:  # moved meanwhile; the next look (resync) settles it
        log.info("VM %s not moved by %s: %s", vm.id, event.event, exc.message)


async def resync(ctx: VmContext, host_name: str) -> None:
    """Look at the real power state of every resting VM on the host (events of a gap
    are lost) and move those that changed. A look libvirt refuses is tried again (its
    VMs would stay ``unknown``, refusing every operation, with the host connected); a
    lost host is looked at again when it is back."""
    try:
        host = ctx.host(host_name)
    except ProvisiondError as exc:  # no longer configured: nothing to look at
        log.warning("cannot look at the VMs on %s: %s", host_name, exc.message)
        return
    delay = RESYNC_FIRST_RETRY
    for attempt in range(1, RESYNC_ATTEMPTS + 1):
        asked_at = ctx.now()
        try:
            states = await host.power_states()
            break
        except HostUnreachable as exc:
            log.warning("cannot look at the VMs on %s: %s", host_name, exc.message)
            return
        except VirtError as exc:
            if attempt == RESYNC_ATTEMPTS:
                log.warning("cannot look at the VMs on %s: %s; given up after %d tries "
                            "(the next reconnect or failed operation looks again)",
                            host_name, exc.message, attempt)
                return
            log.warning("cannot look at the VMs on %s: %s; trying again in %g s",
                        host_name, exc.message, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESYNC_MAX_RETRY)
    for vm in ctx.store.vms(states=sorted(TABLE.resting), host=host_name):
        if ctx.driven(vm.id) or vm.domain_uuid is None:
            continue
        if vm.updated_at > asked_at:
            continue  # moved (by an event) since the look was asked: newer than the look
        power = states.get(vm.domain_uuid)
        trigger = VmTrigger.VANISHED if power is None else POWER_TRIGGERS[power]
        if vm.installing and vm.state == VmState.RUNNING and trigger == VmTrigger.STOPPED:
            trigger = VmTrigger.INSTALLER_DONE
        if TABLE.destination(vm.state, trigger) is None:
            continue  # as recorded
        seen = "not defined any more" if power is None else power
        try:
            ctx.move(vm, trigger, "looked at after a start, a reconnect or a failed "
                                  f"operation: the domain is {seen}")
        except ProvisiondError as exc:  # moved meanwhile by an operation or an event
            log.info("VM %s not resynced: %s", vm.id, exc.message)


def host_lost(ctx: VmContext, host_name: str, why: str) -> None:
    """The host went away: its resting VMs are ``unknown`` until it is back (then
    ``resync`` looks at each)."""
    for vm in ctx.store.vms(states=sorted(TABLE.resting - {VmState.UNKNOWN}),
                            host=host_name):
        if ctx.driven(vm.id):
            continue
        try:
            ctx.move(vm, VmTrigger.HOST_LOST, f"host {host_name} unreachable: {why}")
        except ProvisiondError as exc:  # moved meanwhile
            log.info("VM %s not marked unknown: %s", vm.id, exc.message)


def failed(ctx: VmContext, vm: VmRecord) -> None:
    """An operation failed: its fail edge put the VM where the table says (a start that
    timed out waiting for STARTED: stopped), not necessarily where its domain is. Once
    the operation has ended, the host is looked at as after a reconnect."""
    if vm.host is None:
        return
    host = vm.host
    ctx.after_operation(vm.id, lambda: ctx.look_again(host))


def vm_workflow(ctx: VmContext, records: Any, on_transition: Any) -> Workflow[VmRecord]:
    """The VM lifecycle table with its steps, records and event listener."""
    return Workflow(table=TABLE, steps=STEPS, records=records, context=ctx,
                    host_of=lambda vm: vm.host, on_event=on_event, resync=resync,
                    host_lost=host_lost, on_transition=on_transition, on_failed=failed)


