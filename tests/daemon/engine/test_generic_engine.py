"""The engine drives any state table: a small test-only table plugs in with no copy of it.

The table here (a "job": queued -> running -> finished, or failed) has its own states,
triggers, steps, records and cleanup. It runs on the real engine, the real store (for
transactions and group commit) and a real test-driver host, and shows what every workflow
gets: outcomes applied and persisted before the next step, durable-before-acting from the
table, failures with the step's message, a bug failing one record, cancel, waits for an
unreachable host, and a cleanup retried when the host is back.
"""

from __future__ import annotations

import asyncio
import enum
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

import pytest

from daemon.engine import Engine, EventRouter, Hosts, Outcome, Workflow
from daemon.errors import HostUnreachable, VirtError
from daemon.process.metrics import Metrics
from daemon.store import Store
from daemon.virt.connection import HostConnection
from statemachines.table import DocumentedState, StateTable, Transition
from harness.daemon import DATA


class JobState(DocumentedState):
    """A job's state."""

    QUEUED = ("queued", "Waiting to run.")
    RUNNING = ("running", "Acting on the host.")
    FINISHED = ("finished", "Done. Terminal.")
    FAILED = ("failed", "Could not finish. Terminal.")


class JobTrigger(enum.StrEnum):
    """What moves a job."""

    START = "start"
    FINISH = "finish"
    FAIL = "fail"


JOB_TABLE = StateTable(
    name="job", noun="job", title="Jobs", source="tests/daemon/engine/test_generic_engine.py",
    states=JobState, triggers=JobTrigger,
    transitions=(
        Transition(JobTrigger.START, JobState.QUEUED, JobState.RUNNING, "step start"),
        Transition(JobTrigger.FINISH, JobState.RUNNING, JobState.FINISHED, "step run"),
        Transition(JobTrigger.FAIL, JobState.QUEUED, JobState.FAILED, "engine"),
        Transition(JobTrigger.FAIL, JobState.RUNNING, JobState.FAILED, "engine"),
    ),
    initial=JobState.QUEUED, terminal=frozenset({JobState.FINISHED, JobState.FAILED}),
    acts_outside=frozenset({JobState.RUNNING}), fail=JobTrigger.FAIL)


@dataclass
class Job:
    """A record of the test table."""

    id: str
    state: JobState = JobState.QUEUED
    updated_at: float = 0.0
    host: str = "testhost"
    result: str | None = None
    reason: str | None = None
    cleaned: bool = False


@dataclass
class JobRecords:
    """The test table's RecordStore, in SQLite through the real store's connection."""

    store: Store
    log: list[tuple[str, str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.store.db.execute("CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, "
                              "state TEXT, result TEXT)")

    def add(self, job: Job) -> None:
        with self.store.atomic():
            self.store.db.conn.execute("INSERT INTO jobs VALUES (?, ?, NULL)",
                                       (job.id, str(job.state)))

    def stored_state(self, job_id: str) -> str:
        """What another process would read now (committed data only)."""
        db = sqlite3.connect(self.store.path)
        try:
            return db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        finally:
            db.close()

    def live(self) -> list[Job]:
        return []

    def needing_cleanup(self) -> list[Job]:
        return []

    def record_transition(self, record_id: str, source: Any, dest: Any, trigger: str,
                          detail: str | None, fields: Mapping[str, Any]) -> None:
        with self.store.atomic():  # a RecordStore's writes join the group commit
            self.store.db.conn.execute("UPDATE jobs SET state = ?, result = ? WHERE id = ?",
                                       (str(dest), fields.get("result"), record_id))
        self.log.append((str(source), str(dest), detail or ""))

    def append_log(self, record_id: str, kind: str, state: Any, trigger: str,
                   detail: str | None = None) -> None:
        self.log.append((str(state), trigger, detail or ""))


@dataclass
class JobContext:
    """The narrow context the test table's steps see."""

    hosts: Hosts
    events: EventRouter
    records: JobRecords
    behaviour: dict[str, Any] = field(default_factory=dict)
    seen_on_disk: list[str] = field(default_factory=list)
    cleanups: int = 0


async def start(ctx: JobContext, job: Job) -> Outcome:
    if ctx.behaviour.get("refuse"):
        raise VirtError("the host refused the job")
    if ctx.behaviour.get("crash"):
        raise KeyError("a bug in a step")
    return Outcome(JobTrigger.START, "started")


async def run(ctx: JobContext, job: Job) -> Outcome:
    ctx.seen_on_disk.append(ctx.records.stored_state(job.id))
    if ctx.behaviour.get("wait_for_event"):
        # An event that never comes: only a cancel ends this wait.
        await ctx.events.expect(job.host, "0" * 32, "DEFINED", job.id)
    if ctx.behaviour.pop("unreachable", False):
        raise HostUnreachable("the host went away")
    domains = await ctx.hosts[job.host].tagged_domains()  # a real libvirt call
    return Outcome(JobTrigger.FINISH, "ran", {"result": f"{len(domains)} tagged domains"})


async def cleanup(ctx: JobContext, job: Job) -> None:
    ctx.cleanups += 1
    if ctx.behaviour.pop("cleanup_unreachable", False):
        raise HostUnreachable("the host went away during cleanup")
    job.cleaned = True


@pytest.fixture
async def jobs(tmp_path: Path) -> AsyncIterator[tuple[Engine, JobContext, JobRecords]]:
    store = Store(tmp_path / "jobs.db")
    store.migrate()
    store.enable_group_commit()
    metrics = Metrics(lambda: {})
    connection = HostConnection("testhost", f"test://{DATA / 'host_basic.xml'}")
    engine_ref: list[Engine] = []
    hosts = Hosts({"testhost": connection}, clock=asyncio.get_running_loop().time,
                  on_lost=lambda name, why: None,
                  on_back=lambda name, gap: engine_ref[0].host_back(name, gap),
                  on_reconnect=lambda name: None)
    events = EventRouter(hosts, metrics, clock=lambda: 0.0)
    engine = Engine(store, hosts, events, metrics, host_wait_timeout=lambda: 5.0,
                    clock=lambda: 0.0)
    engine_ref.append(engine)
    records = JobRecords(store)
    ctx = JobContext(hosts, events, records)
    engine.add(Workflow(
        table=JOB_TABLE, steps={JobState.QUEUED: start, JobState.RUNNING: run},
        records=records, context=ctx, host_of=lambda job: job.host,
        needs_cleanup=lambda job: job.state == JobState.FAILED and not job.cleaned,
        cleanup=cleanup))
    events.start()
    await hosts.open_all(events.enqueue, lambda host: {})
    yield engine, ctx, records
    await engine.stop(5)
    await events.stop(5)
    await hosts.close_all()
    store.close()


def submit(engine: Engine, records: JobRecords, job_id: str) -> Job:
    job = Job(job_id)
    records.add(job)
    engine.drive(engine._workflows[0], job)
    return job


async def test_a_second_table_runs_on_the_same_engine(jobs) -> None:
    engine, ctx, records = jobs
    job = submit(engine, records, "j1")
    await engine.wait_finished("j1", 5)

    assert job.state == JobState.FINISHED
    assert job.result == "0 tagged domains"  # the outcome's fields reach the record
    assert records.stored_state("j1") == "finished"
    assert records.log == [("queued", "running", "started"), ("running", "finished", "ran")]
    # running acts outside: its state was committed before its step ran.
    assert ctx.seen_on_disk == ["running"]


async def test_a_step_error_fails_the_record_with_its_message_and_cleans_up(jobs) -> None:
    engine, ctx, records = jobs
    ctx.behaviour["refuse"] = True
    job = submit(engine, records, "j2")
    await engine.wait_finished("j2", 5)

    assert job.state == JobState.FAILED and job.reason == "the host refused the job"
    assert records.log[-1] == ("queued", "failed", "the host refused the job")
    assert job.cleaned and ctx.cleanups == 1


async def test_a_bug_in_a_step_fails_that_record_only(jobs) -> None:
    engine, ctx, records = jobs
    ctx.behaviour["crash"] = True
    broken = submit(engine, records, "j3")
    await engine.wait_finished("j3", 5)
    ctx.behaviour.clear()
    fine = submit(engine, records, "j4")
    await engine.wait_finished("j4", 5)

    assert broken.state == JobState.FAILED
    assert broken.reason == "internal error in queued: KeyError: 'a bug in a step'"
    assert fine.state == JobState.FINISHED


async def test_cancel_interrupts_a_step_waiting_for_an_event(jobs) -> None:
    engine, ctx, records = jobs
    ctx.behaviour["wait_for_event"] = True
    job = submit(engine, records, "j5")
    await asyncio.sleep(0.05)
    assert job.state == JobState.RUNNING
    engine.cancel("j5", "carol")
    await engine.wait_finished("j5", 5)

    assert job.state == JobState.FAILED and job.reason == "cancelled by carol"
    assert records.stored_state("j5") == "failed"


async def test_an_unreachable_host_is_waited_for_then_the_step_runs_again(jobs) -> None:
    engine, ctx, records = jobs
    ctx.behaviour["unreachable"] = True
    job = submit(engine, records, "j6")
    await engine.wait_finished("j6", 10)

    assert job.state == JobState.FINISHED, job.reason
    assert ("running", "host-unreachable", "the host went away; waiting for host testhost") \
        in records.log
    assert ctx.seen_on_disk == ["running", "running"]  # the step ran twice


async def test_a_cleanup_cut_short_by_the_host_runs_again_when_it_is_back(jobs) -> None:
    engine, ctx, records = jobs
    ctx.behaviour.update(refuse=True, cleanup_unreachable=True)
    job = submit(engine, records, "j7")
    await engine.wait_finished("j7", 10)

    assert job.state == JobState.FAILED and job.cleaned
    assert ctx.cleanups == 2
    assert any(entry[1] == "host-unreachable" for entry in records.log)
    assert engine.hosts.reachable("testhost")


def test_a_table_without_a_fail_edge_from_a_live_state_is_refused() -> None:
    with pytest.raises(ValueError, match="no 'fail' transition"):
        StateTable(
            name="bad", noun="bad", title="Bad", source="here", states=JobState,
            triggers=JobTrigger,
            transitions=(Transition(JobTrigger.START, JobState.QUEUED, JobState.RUNNING,
                                    "x"),),
            initial=JobState.QUEUED, terminal=frozenset({JobState.FINISHED, JobState.FAILED}),
            acts_outside=frozenset(), fail=JobTrigger.FAIL)


def test_a_workflow_without_a_step_for_a_live_state_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no step for running"):
        Workflow(table=JOB_TABLE, steps={JobState.QUEUED: start}, records=None,
                 context=None, host_of=lambda job: None)
