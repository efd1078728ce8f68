"""What a workflow gives the engine: a state table, a step per state, and its records.

A step is ``async def step(ctx, record) -> Outcome``: it reads the narrow context its
workflow defines (a Protocol, never the engine), may act on libvirt, and returns what
happened. It never fires a transition: the engine applies the outcome, persists it and
runs the next step. A step that cannot go on raises a ``ProvisiondError``; the engine
then fires the table's ``fail`` trigger with the error's message.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generic, Mapping, Protocol, TypeVar

from statemachines.table import StateTable


class Record(Protocol):
    """What the engine needs of a record: an id and a state it keeps current."""

    id: str
    state: Any
    updated_at: float


R = TypeVar("R", bound=Record)


@dataclass(frozen=True)
class Outcome:
    """What a step did: the trigger to fire, a line for the log, fields to record.

    ``writes`` are store writes that belong to the transition (a claim, a reservation):
    the engine runs them in the transition's transaction, so both land or neither does.
    """

    trigger: enum.StrEnum
    detail: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    writes: Callable[[], None] | None = None


class RecordStore(Protocol[R]):
    """Where a workflow's records live (the store's methods for that kind of record)."""

    def live(self) -> list[R]:
        """Records not in a terminal state, oldest first."""

    def needing_cleanup(self) -> list[R]:
        """Terminal records whose cleanup has not finished."""

    def record_transition(self, record_id: str, source: Any, dest: Any, trigger: str,
                          detail: str | None, fields: Mapping[str, Any]) -> None:
        """Persist a state change, its fields and its log row in one transaction."""

    def append_log(self, record_id: str, kind: str, state: Any, trigger: str,
                   detail: str | None = None) -> None:
        """A note or an event in the record's log; its state does not change."""


Step = Callable[[Any, R], Awaitable[Outcome]]


@dataclass(frozen=True)
class Workflow(Generic[R]):
    """One state table with everything the engine needs to drive its records."""

    table: StateTable[Any]
    steps: Mapping[Any, Step[R]]
    """The step of each in-progress state."""
    records: RecordStore[R]
    context: Any
    """Passed to every step, every cleanup and every event listener."""
    host_of: Callable[[R], str | None]
    """The libvirt host a record's steps act on (None before one is chosen)."""
    needs_cleanup: Callable[[R], bool] = lambda _record: False
    """Whether a terminal record still has something to undo (a failed request's claims)."""
    cleanup: Callable[[Any, R], Awaitable[None]] | None = None
    """Undo what a record held; idempotent. Raising ``HostUnreachable`` makes the engine
    wait for the host and run it again."""
    on_transition: Callable[[R, Any, Any], None] | None = None
    """In-memory bookkeeping after a transition is recorded: (record, left, entered)."""
    on_event: Callable[[Any, object, str | None], None] | None = None
    """A libvirt event, with the id of the live record that waited for it (if any)."""
    resync: Callable[[Any, str], Awaitable[None]] | None = None
    """Look at a host's real state after a start or a reconnect (events of a gap are
    lost) and move the resting records that changed."""
    host_lost: Callable[[Any, str, str], None] | None = None
    """(context, host, why): a host became unreachable; mark its resting records."""
    on_failed: Callable[[Any, R], None] | None = None
    """(context, record): a step failed and the table's fail edge moved the record where
    it says, which need not be where the real thing is (look again, say)."""

    def __post_init__(self) -> None:
        missing = self.table.in_progress - set(self.steps)
        if missing:
            raise ValueError(f"workflow {self.table.name}: no step for "
                             f"{', '.join(sorted(missing))}")
