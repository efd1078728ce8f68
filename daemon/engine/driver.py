"""The engine: the only code that changes a record's state, for any state table.

One driver task per live record runs the step of the record's current state, applies
the outcome the step returns through ``_set_state`` (the single choke point), and goes
on until the record rests (a state without a step, such as a running VM) or ends. An
operation or a libvirt event moves a resting record through ``fire``, which drives it
again if its new state has a step. ``_set_state`` fires the trigger on the table's shared
``transitions`` machine, whose ``before_state_change`` hook persists the new state, its
fields and its log row in one transaction before the record moves. Before the step of a
state in the table's ``acts_outside`` set runs, that state is on disk.

A step that fails raises a ``ProvisiondError``: the engine fires the table's ``fail``
trigger with its message. ``HostUnreachable`` first makes the record wait (bounded by
``host_wait_timeout``) for its host to come back, then the step runs again. A failed
record's cleanup (a request's rollback) that a host outage cuts short is run again when
the host is back.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping, TypeVar

from transitions import MachineError

from daemon.engine.events import EventRouter
from daemon.engine.hosts import Hosts
from daemon.engine.workflow import Outcome, Workflow
from daemon.errors import (
    HostUnreachable,
    InvalidState,
    ProvisiondError,
    RequestCancelled,
)
from daemon.process.metrics import Metrics
from daemon.store import Store
from statemachines.table import fire

log = logging.getLogger("provisiond.engine")
T = TypeVar("T")

MAX_UNREACHABLE_IN_A_ROW = 5
"""A host that comes back at once but fails the same call again this many times is not
down: the error stands (the step fails; a cleanup is left for the next start)."""


@dataclass(eq=False)
class _Live:
    """A record the engine drives: the model its table's machine moves."""

    record: Any
    workflow: Workflow[Any]
    entered_at: float
    repeating: bool = False
    """The current state's step ran before (a restart or a lost host cut it short)."""
    cancelled_by: str | None = None
    cancel_asked: asyncio.Event = field(default_factory=asyncio.Event)
    """Set with ``cancelled_by``: a wait that is not for an event ends at once too."""
    hurried_by: str | None = None
    """Who asked its step to stop waiting (``hurry``); it lives as long as the record is
    driven, so an ask never outlives its operation."""
    unreachable: int = 0
    """How many times in a row its host was reported unreachable (reset by progress)."""

    @property
    def id(self) -> str:
        return str(self.record.id)

    @property
    def state(self) -> Any:
        return self.record.state

    @state.setter
    def state(self, value: Any) -> None:
        # transitions sets the model's state once the hook has persisted it.
        self.record.state = value


class Engine:
    """Drives records through their workflows' state tables."""

    def __init__(self, store: Store, hosts: Hosts, events: EventRouter, metrics: Metrics, *,
                 host_wait_timeout: Callable[[], float],
                 clock: Callable[[], float]) -> None:
        self.store = store
        self.hosts = hosts
        self.events = events
        self.metrics = metrics
        self._host_wait_timeout = host_wait_timeout
        self._clock = clock
        self._workflows: list[Workflow[Any]] = []
        self._machines: dict[str, Any] = {}
        self._live: dict[str, _Live] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._finish_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._waiters_released = False
        self._after: dict[str, list[Callable[[], None]]] = {}
        """Callbacks run once a record's task has ended (``after_finished``)."""

    def add(self, workflow: Workflow[Any]) -> None:
        """Drive the records of this workflow too."""
        self._workflows.append(workflow)
        self._machines[workflow.table.name] = workflow.table.build_machine(self._persist)
        if workflow.on_event is not None:
            listener = workflow.on_event
            self.events.listen(lambda event, waiting: listener(workflow.context, event,
                                                               waiting))

    # -- lifecycle

    def resume(self) -> None:
        """Continue every live record from its last durable state; finish cleanups."""
        for workflow in self._workflows:
            for record in workflow.records.live():
                if record.id not in self._tasks:
                    log.info("resuming %s %s in state %s", workflow.table.noun, record.id,
                             record.state)
                    self.drive(workflow, record, repeating=True)
            for record in workflow.records.needing_cleanup():
                if record.id not in self._tasks:
                    task = asyncio.create_task(self._cleanup_task(workflow, record),
                                               name=f"cleanup-{record.id}")
                    task.add_done_callback(self._task_ended)
                    self._tasks[record.id] = task

    async def stop(self, timeout: float) -> None:
        """Stop driving (each record stays in its last durable state)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    # -- records in

    def drive(self, workflow: Workflow[Any], record: Any, *, repeating: bool = False) -> None:
        """Start driving a stored record from its state (a new one: its initial state)."""
        live = _Live(record, workflow, record.updated_at, repeating=repeating)
        self._live[record.id] = live
        task = asyncio.create_task(self._drive(live), name=f"{workflow.table.name}-{record.id}")
        task.add_done_callback(self._task_ended)
        self._tasks[record.id] = task

    def fire(self, workflow: Workflow[Any], record: Any, outcome: Outcome) -> None:
        """Move a resting record by an operation or a libvirt event, then drive it if its
        new state has a step. InvalidState if the table forbids the trigger from its
        state, or if the record is being driven (an operation is in progress)."""
        driven = self._live.get(record.id)
        if driven is not None:
            raise InvalidState(f"{workflow.table.noun} {record.id} is {driven.state}: "
                               "wait until that is over")
        live = _Live(record, workflow, record.updated_at)
        self._set_state(live, outcome)
        if live.state in workflow.table.in_progress:
            self._live[record.id] = live
            task = asyncio.create_task(self._drive(live),
                                       name=f"{workflow.table.name}-{record.id}")
            task.add_done_callback(self._task_ended)
            self._tasks[record.id] = task

    def cancel(self, record_id: str, by_user: str) -> None:
        """Make a live record fail with 'cancelled by USER' at its next step boundary,
        or now if its step is waiting for an event."""
        live = self._live.get(record_id)
        if live is None:
            raise InvalidState(f"{record_id} is not in progress; only a request in progress "
                               "can be cancelled")
        if live.cancelled_by is None:
            live.cancelled_by = by_user
        live.cancel_asked.set()
        self.events.interrupt(record_id, RequestCancelled(f"cancelled by {by_user}"))

    def hurry(self, record_id: str, by_user: str, error: BaseException) -> None:
        """Ask a live record's step to stop waiting (a forced stop of a shutting-down VM):
        ``error`` is raised into its wait now, and a step not waiting yet finds the ask
        in ``hurried_by``."""
        live = self._live.get(record_id)
        if live is None:
            return
        live.hurried_by = by_user
        self.events.interrupt(record_id, error)

    def hurried_by(self, record_id: str) -> str | None:
        """Who asked the live record's step to stop waiting, if anyone did."""
        live = self._live.get(record_id)
        return live.hurried_by if live is not None else None

    async def unless_cancelled(self, record_id: str, awaitable: Awaitable[T]) -> T:
        """Await ``awaitable`` (a step's wait for a host, say); RequestCancelled, and the
        wait given up, as soon as the record is cancelled."""
        live = self._live.get(record_id)
        if live is None:
            return await awaitable
        waiting = asyncio.ensure_future(awaitable)
        asked = asyncio.ensure_future(live.cancel_asked.wait())
        try:
            await asyncio.wait((waiting, asked), return_when=asyncio.FIRST_COMPLETED)
            if live.cancelled_by is not None:
                raise RequestCancelled(f"cancelled by {live.cancelled_by}")
            return waiting.result()
        finally:
            waiting.cancel()
            asked.cancel()

    def cancelled_by(self, record_id: str) -> str | None:
        """Who cancelled this live record, if anyone did."""
        live = self._live.get(record_id)
        return live.cancelled_by if live is not None else None

    def is_live(self, record_id: str) -> bool:
        """Whether the engine is driving (or cleaning up after) this record."""
        return record_id in self._tasks

    def live_record(self, record_id: str) -> Any | None:
        """The in-memory record of a live record (current with the store), or None."""
        live = self._live.get(record_id)
        return live.record if live is not None else None

    def live_records(self) -> list[Any]:
        """Every record the engine drives now (in progress, or cleaning up)."""
        return [live.record for live in self._live.values()]

    def live_on(self, host: str) -> list[Any]:
        """The live records whose steps act on this host."""
        return [live.record for live in list(self._live.values())
                if live.workflow.host_of(live.record) == host]

    def repeating(self, record_id: str) -> bool:
        """Whether the record's current step ran before and may have acted already."""
        live = self._live.get(record_id)
        return live is None or live.repeating

    async def wait_finished(self, record_id: str, timeout: float | None = None) -> None:
        """Return once the record is terminal with its cleanup done (or the daemon
        stops); ``asyncio.TimeoutError`` after ``timeout`` seconds."""
        if record_id not in self._tasks or self._waiters_released:
            return
        waiter = asyncio.get_running_loop().create_future()
        waiters = self._finish_waiters.setdefault(record_id, [])
        waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):  # (wait_for: one more pass of the loop)
                await waiter
        finally:
            if waiter in waiters:
                waiters.remove(waiter)

    def release_waiters(self) -> None:
        """Let every ``wait_finished`` return now, and any later one at once (the daemon
        is stopping)."""
        self._waiters_released = True
        for waiters in self._finish_waiters.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # -- the choke point

    def _set_state(self, live: _Live, outcome: Outcome) -> None:
        """Apply an outcome: its writes and the transition in one transaction."""
        record, workflow = live.record, live.workflow
        left = record.state
        if outcome.writes is None:
            self._fire(live, outcome)  # the hook's write is one transaction of its own
        else:
            with self.store.atomic():
                outcome.writes()
                self._fire(live, outcome)
        now = self._clock()
        self.metrics.state_seconds.labels(str(left)).observe(max(0.0, now - live.entered_at))
        live.entered_at = record.updated_at = now
        for key, value in outcome.fields.items():
            setattr(record, key, value)
        if workflow.on_transition is not None:
            workflow.on_transition(record, left, record.state)
        log.info("%s %s: %s", workflow.table.noun, live.id, record.state,
                 extra={"request_id": live.id, "state": str(record.state)})

    def _fire(self, live: _Live, outcome: Outcome) -> None:
        try:
            fire(self._machines[live.workflow.table.name], live, outcome.trigger,
                 detail=outcome.detail, fields=outcome.fields)
        except MachineError:
            raise InvalidState(f"{live.workflow.table.noun} {live.id}: '{outcome.trigger}' "
                               f"is not allowed from {live.state}") from None

    def _persist(self, event: Any) -> None:
        # transitions' before_state_change hook: raising here leaves the record unmoved.
        live: _Live = event.model
        transition = event.transition
        states = live.workflow.table.states
        fields: Mapping[str, Any] = event.kwargs.get("fields") or {}
        live.workflow.records.record_transition(
            live.id, states[transition.source], states[transition.dest], event.event.name,
            event.kwargs.get("detail"), fields)

    def _fail(self, live: _Live, reason: str) -> None:
        self._set_state(live, Outcome(live.workflow.table.fail, reason, {"reason": reason}))
        if live.workflow.on_failed is not None:
            live.workflow.on_failed(live.workflow.context, live.record)

    # -- driving

    async def _drive(self, live: _Live) -> None:
        table = live.workflow.table
        try:
            while live.state in table.in_progress:
                if live.state in table.acts_outside:
                    await self.store.durable()  # on disk before its step acts outside
                # Else no await: the steps up to the next one that acts run in one pass
                # of the loop, and one commit covers their transitions.
                if live.cancelled_by is not None:
                    self._fail(live, f"cancelled by {live.cancelled_by}")
                    break
                await self._run_step(live)
            await self.store.durable()  # whoever waits for the end is told a durable one
            if live.state in table.terminal and live.workflow.needs_cleanup(live.record):
                await self._cleanup_until_done(live.workflow, live.record)
        finally:
            self._live.pop(live.id, None)
            self._finished(live.id)

    async def _run_step(self, live: _Live) -> None:
        state = live.state
        step = live.workflow.steps[state]
        try:
            outcome = await step(live.workflow.context, live.record)
            # No await between the step's return and its transition: nothing another
            # record decides can come in between.
            self._set_state(live, outcome)
            live.repeating = False
            live.unreachable = 0
        except RequestCancelled:
            return  # the loop fails it with the canceller's name
        except HostUnreachable as exc:
            live.repeating = True  # the step may have acted before the loss
            live.unreachable += 1
            if live.unreachable > MAX_UNREACHABLE_IN_A_ROW:
                self._fail(live, exc.message + f" (the same error {live.unreachable} times "
                           "in a row, each time with the host reachable again)")
            elif not await self._wait_for_host(live, exc):
                self._fail(live, exc.message + " (host unreachable for more than "
                           f"{self._host_wait_timeout():g} s)")
        except ProvisiondError as exc:
            self._fail(live, exc.message)
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:  # a bug must fail one record, not the daemon
            log.exception("%s %s: step for %s crashed", live.workflow.table.noun, live.id,
                          state)
            self._fail(live, f"internal error in {state}: {type(exc).__name__}: {exc}")

    async def _wait_for_host(self, live: _Live, exc: HostUnreachable, *,
                             forever: bool = False) -> bool:
        """Wait until the record's host is back; False after ``host_wait_timeout`` (or,
        ``forever``, only if the host is not configured)."""
        host = live.workflow.host_of(live.record)
        if host is None or host not in self.hosts:
            return False
        self.hosts.lost(host, exc.message)
        live.workflow.records.append_log(live.id, "note", live.state, "host-unreachable",
                                         f"{exc.message}; waiting for host {host}")
        if forever:  # a cleanup (a cancelled request's rollback too) waits for its host
            return await self.hosts.wait_up(host, None)
        try:
            return await self.unless_cancelled(live.id, self.hosts.wait_up(
                host, self._host_wait_timeout()))
        except RequestCancelled:
            return True  # no more waiting: the loop fails it with the canceller's name

    async def _cleanup_until_done(self, workflow: Workflow[Any], record: Any) -> None:
        """Clean up; each time the host is unreachable, wait for it and try again."""
        assert workflow.cleanup is not None
        live = self._live.get(record.id) or _Live(record, workflow, record.updated_at)
        while True:
            try:
                await workflow.cleanup(workflow.context, record)
                return
            except HostUnreachable as exc:
                live.unreachable += 1
                if live.unreachable > MAX_UNREACHABLE_IN_A_ROW or \
                        not await self._wait_for_host(live, exc, forever=True):
                    workflow.records.append_log(
                        record.id, "note", record.state, "cleanup",
                        f"cleanup incomplete, will retry at next start: {exc.message}")
                    return

    async def _cleanup_task(self, workflow: Workflow[Any], record: Any) -> None:
        try:
            await self._cleanup_until_done(workflow, record)
        finally:
            self._finished(record.id)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        # A record's task ends by itself only when its record is done with; anything it
        # raised is a bug worth a traceback, not a silent stall.
        if not task.cancelled() and task.exception() is not None:
            log.error("%s stopped on an unexpected error; its record resumes at the next "
                      "start", task.get_name(), exc_info=task.exception())

    def after_finished(self, record_id: str, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the record's task has ended (at once if none runs)."""
        if record_id not in self._tasks:
            callback()
            return
        self._after.setdefault(record_id, []).append(callback)

    def _finished(self, record_id: str) -> None:
        self._tasks.pop(record_id, None)
        for waiter in self._finish_waiters.pop(record_id, []):
            if not waiter.done():
                waiter.set_result(None)
        for callback in self._after.pop(record_id, []):
            try:
                callback()
            except Exception:  # one record's late event must not break the others
                log.exception("a deferred callback of %s failed", record_id)

    # -- hosts

    def host_lost(self, name: str, why: str) -> None:
        """A host went down: say so in the log of each live record on it, and let each
        workflow mark its resting records there."""
        for record in self.live_on(name):
            self._live[record.id].workflow.records.append_log(
                record.id, "note", record.state, "connection-lost",
                f"connection to host {name} lost: {why}")
        for workflow in self._workflows:
            if workflow.host_lost is not None:
                try:
                    workflow.host_lost(workflow.context, name, why)
                except Exception:  # the store's error is logged; the resync will correct
                    log.exception("marking the records on %s after its loss failed", name)

    async def host_back(self, name: str, gap: float) -> None:
        """A host is back: note the gap in each live record's log, then look again."""
        for record in self.live_on(name):
            self._live[record.id].workflow.records.append_log(
                record.id, "note", record.state, "resync",
                f"reconnected to host {name} after {gap:.1f} s; events of that gap are "
                "lost, so the request's resources are looked at again")
        await self.events.resync(name)
        await self.resync(name)

    async def resync(self, host: str) -> None:
        """Let every workflow look at the host's real state (after a start or a gap)."""
        for workflow in self._workflows:
            if workflow.resync is not None:
                await workflow.resync(workflow.context, host)

