"""The provisioning request state table: the single source of truth.

Everything else (the engine's driving, the docs, the diagram in ``docs/``) is derived
from the declarations in this module. It does no I/O and imports nothing from ``daemon``.

The engine (``daemon.engine``) is the only code that fires these triggers: each state's
step in ``daemon.workflows.provisioning`` returns an outcome naming the trigger, and the
engine persists the change before the record moves. A transition validates and records
and does nothing else.
"""

from __future__ import annotations

import enum
from typing import Any, Callable

from transitions import Machine

from statemachines.table import DocumentedState, StateTable, Transition, fire

class State(DocumentedState):
    """A provisioning request's state; each member's docstring says what it means."""

    REQUESTED = (
        "requested",
        "Accepted and stored; nothing checked beyond the names of template, size and pool.",
    )
    AUTHORIZED = (
        "authorized",
        "The owner holds CLOUD_CREATE on the resource pool and its quota holds this request.",
    )
    STORAGE_SEARCHING = (
        "storage-searching",
        "Choosing a host and its storage together: a free volume of the right size on a "
        "host that can hold the VM, else a pool with room for a new one; the host is bound "
        "with the claim.",
    )
    STORAGE_CREATING = (
        "storage-creating",
        "Space is reserved in a pool; the request's own volume is being created there.",
    )
    SEEDING = (
        "seeding",
        "The request's disk exists; its cloud-init seed (an ISO labelled cidata) is being "
        "written into a volume of the same pool (appliance templates).",
    )
    DEFINING = (
        "defining",
        "A volume is held; the domain is being defined and its DEFINED event awaited.",
    )
    DONE = (
        "done",
        "The domain is defined in libvirt with the request's volume and template. Terminal.",
    )
    FAILED = (
        "failed",
        "The request cannot complete; the reason is in its log and what it held is released. "
        "Terminal.",
    )


TERMINAL: frozenset[State] = frozenset({State.DONE, State.FAILED})
"""States a request never leaves."""

IN_PROGRESS: frozenset[State] = frozenset(State) - TERMINAL
"""States of a live request: the engine has work to do (or is waiting) for it."""

HOLDS_QUOTA: frozenset[State] = frozenset(
    {State.AUTHORIZED, State.STORAGE_SEARCHING, State.STORAGE_CREATING, State.SEEDING,
     State.DEFINING, State.DONE}
)
"""States whose requests count against their resource pool's quota (they passed it)."""

ON_HOST: frozenset[State] = HOLDS_QUOTA - {State.AUTHORIZED, State.STORAGE_SEARCHING}
"""States whose requests take room (vCPUs, memory) on the host they are bound to: from
the transaction that leaves storage-searching, which chooses the host."""

ACTS_OUTSIDE: frozenset[State] = frozenset(
    {State.STORAGE_CREATING, State.SEEDING, State.DEFINING})
"""States whose step acts on libvirt: the state is on disk before the step starts.

The steps of the other states only read memory and write the store, in the transaction
of the transition they fire; a crash before that commit replays them from the last state
on disk, with nothing outside the database to undo. So they need not wait for a commit.
"""

INITIAL: State = State.REQUESTED


class Trigger(enum.StrEnum):
    """The names of the events that move a request."""

    AUTHORIZE = "authorize"
    SEARCH_STORAGE = "search_storage"
    CREATE_STORAGE = "create_storage"
    REUSE_VOLUME = "reuse_volume"
    SEED = "seed"
    DEFINE = "define"
    FINISH = "finish"
    FAIL = "fail"


TRANSITIONS: tuple[Transition[State], ...] = (
    Transition(Trigger.AUTHORIZE, State.REQUESTED, State.AUTHORIZED,
               "step authorize: owner holds CLOUD_CREATE and the quota holds"),
    Transition(Trigger.SEARCH_STORAGE, State.AUTHORIZED, State.STORAGE_SEARCHING,
               "step start_storage_search"),
    Transition(Trigger.REUSE_VOLUME, State.STORAGE_SEARCHING, State.DEFINING,
               "step search_storage: a free volume of the right size "
               "was claimed on a host that can hold the VM"),
    Transition(Trigger.CREATE_STORAGE, State.STORAGE_SEARCHING, State.STORAGE_CREATING,
               "step search_storage: room was reserved in a pool that can "
               "create volumes, on a host that can hold the VM"),
    Transition(Trigger.DEFINE, State.STORAGE_CREATING, State.DEFINING,
               "step create_storage: the request's volume exists"),
    Transition(Trigger.SEED, State.STORAGE_CREATING, State.SEEDING,
               "step create_storage: the request's disk exists (an overlay on, or a copy "
               "of, an appliance's image) and takes a cloud-init seed"),
    Transition(Trigger.DEFINE, State.SEEDING, State.DEFINING,
               "step create_seed: the seed volume exists, its content uploaded"),
    Transition(Trigger.FINISH, State.DEFINING, State.DONE,
               "step define: libvirt's DEFINED event for the request's "
               "domain UUID"),
    *(
        Transition(Trigger.FAIL, source, State.FAILED,
                   "engine: any step's error, a timeout, or a cancel")
        for source in sorted(IN_PROGRESS, key=list(State).index)
    ),
)


TABLE: StateTable[State] = StateTable(
    name="provisioning",
    noun="request",
    title="Provisioning request states",
    source="statemachines/provisioning.py",
    states=State,
    triggers=Trigger,
    transitions=TRANSITIONS,
    initial=INITIAL,
    terminal=TERMINAL,
    acts_outside=ACTS_OUTSIDE,
    fail=Trigger.FAIL,
)
"""The provisioning table, as the engine and the docs take it."""


def transitions_from(state: State) -> list[Transition[State]]:
    """The edges leaving ``state``, in table order."""
    return TABLE.transitions_from(state)


def destination(state: State, trigger: Trigger) -> State | None:
    """Where ``trigger`` takes a request in ``state``, or None if the table forbids it."""
    return TABLE.destination(state, trigger)


def build_machine(before_state_change: Callable[[Any], None] | None = None) -> Machine:
    """The table's shared machine (see ``StateTable.build_machine``)."""
    return TABLE.build_machine(before_state_change)


def render_mermaid() -> str:
    """The state diagram as a Markdown document, made from the table."""
    return TABLE.render_mermaid()


__all__ = ["ACTS_OUTSIDE", "HOLDS_QUOTA", "INITIAL", "IN_PROGRESS", "ON_HOST", "TABLE",
           "TERMINAL", "TRANSITIONS", "State", "Transition", "Trigger", "build_machine", "destination",
           "fire", "render_mermaid", "transitions_from"]
