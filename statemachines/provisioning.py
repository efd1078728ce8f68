"""The provisioning request state table: the single source of truth.

Everything else (the engine, the docs, the diagram in ``docs/``) is derived from the
declarations in this module. It does no I/O and imports nothing from ``daemon``.

The engine owns the only place where a request changes state (``Engine.set_state``); it
fires the triggers below on the shared machine, whose ``before_state_change`` hook
persists the change *before* the model's state moves, so a transition validates and
records and does nothing else. Each state's work is done by a step function in
``daemon.workflows.provisioning``, outside the machine's callbacks.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable

from transitions import Machine


class State(enum.StrEnum):
    """A provisioning request's state; each member's docstring says what it means."""

    def __new__(cls, value: str, doc: str) -> "State":
        member = str.__new__(cls, value)
        member._value_ = value
        member.__doc__ = doc
        return member

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
        "Looking for a free volume of the right size, else a pool with room for a new one.",
    )
    STORAGE_CREATING = (
        "storage-creating",
        "Space is reserved in a pool; the request's own volume is being created there.",
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
    {State.AUTHORIZED, State.STORAGE_SEARCHING, State.STORAGE_CREATING, State.DEFINING, State.DONE}
)
"""States whose requests count against their resource pool's quota (they passed it)."""

ACTS_OUTSIDE: frozenset[State] = frozenset({State.STORAGE_CREATING, State.DEFINING})
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
    DEFINE = "define"
    FINISH = "finish"
    FAIL = "fail"


@dataclass(frozen=True)
class Transition:
    """One edge of the table: a trigger moving a request from ``source`` to ``dest``."""

    trigger: Trigger
    source: State
    dest: State
    fired_by: str
    """Which code fires it, as Ironic's table comments do."""


TRANSITIONS: tuple[Transition, ...] = (
    Transition(Trigger.AUTHORIZE, State.REQUESTED, State.AUTHORIZED,
               "steps.authorize: owner holds CLOUD_CREATE and the quota holds"),
    Transition(Trigger.SEARCH_STORAGE, State.AUTHORIZED, State.STORAGE_SEARCHING,
               "steps.start_storage_search"),
    Transition(Trigger.REUSE_VOLUME, State.STORAGE_SEARCHING, State.DEFINING,
               "steps.search_storage: a free volume of the right size was claimed"),
    Transition(Trigger.CREATE_STORAGE, State.STORAGE_SEARCHING, State.STORAGE_CREATING,
               "steps.search_storage: room was reserved in a pool that can create volumes"),
    Transition(Trigger.DEFINE, State.STORAGE_CREATING, State.DEFINING,
               "steps.create_storage: the request's volume exists"),
    Transition(Trigger.FINISH, State.DEFINING, State.DONE,
               "engine: libvirt's DEFINED lifecycle event for the request's domain UUID"),
    *(
        Transition(Trigger.FAIL, source, State.FAILED,
                   "any step's error, a timeout, or a cancel")
        for source in sorted(IN_PROGRESS, key=list(State).index)
    ),
)


def transitions_from(state: State) -> list[Transition]:
    """The edges leaving ``state``, in table order."""
    return [t for t in TRANSITIONS if t.source == state]


def destination(state: State, trigger: Trigger) -> State | None:
    """Where ``trigger`` takes a request in ``state``, or None if the table forbids it."""
    for t in TRANSITIONS:
        if t.source == state and t.trigger == trigger:
            return t.dest
    return None


def build_machine(before_state_change: Callable[[Any], None] | None = None) -> Machine:
    """Build the one shared machine; models are moved with ``fire``.

    ``before_state_change`` receives transitions' ``EventData``; if it raises, the model's
    state does not move. The engine passes the function that persists the change.
    """
    return Machine(
        model=None,
        states=list(State),
        initial=INITIAL,
        transitions=[
            {"trigger": str(t.trigger), "source": t.source, "dest": t.dest} for t in TRANSITIONS
        ],
        auto_transitions=False,
        ignore_invalid_triggers=False,
        send_event=True,
        before_state_change=[before_state_change] if before_state_change else [],
    )


def fire(machine: Machine, model: Any, trigger: Trigger, **kwargs: Any) -> None:
    """Move ``model`` (any object with a ``state`` attribute) by ``trigger``.

    Raises transitions' ``MachineError`` if the table forbids ``trigger`` from the model's
    state. The model need not be added to the machine: adding binds a method per trigger
    and per state to each model, which cost 5% of the daemon's CPU under load.
    """
    machine.events[str(trigger)].trigger(model, **kwargs)


def render_mermaid() -> str:
    """The state diagram as a Markdown document with a Mermaid block, made from the table."""
    name = {s: s.name.lower() for s in State}
    lines = [
        "<!-- Generated from statemachines/provisioning.py by `python -m statemachines`. -->",
        "<!-- Do not edit: tests/statemachines/test_provisioning.py fails when it is stale. -->",
        "# Provisioning request states",
        "",
        "```mermaid",
        "stateDiagram-v2",
    ]
    for s in State:
        lines.append(f"    state \"{s.value}\" as {name[s]}")
    lines.append(f"    [*] --> {name[INITIAL]}")
    for t in TRANSITIONS:
        lines.append(f"    {name[t.source]} --> {name[t.dest]}: {t.trigger.value}")
    for s in State:
        if s in TERMINAL:
            lines.append(f"    {name[s]} --> [*]")
    lines += ["```", "", "| state | meaning | its step acts on libvirt (durable first) |",
              "| --- | --- | --- |"]
    lines += [f"| `{s.value}` | {s.__doc__} | {'yes' if s in ACTS_OUTSIDE else ''} |"
              for s in State]
    lines += ["", "| trigger | from | to | fired by |", "| --- | --- | --- | --- |"]
    lines += [
        f"| `{t.trigger.value}` | `{t.source.value}` | `{t.dest.value}` | {t.fired_by} |"
        for t in TRANSITIONS
    ]
    return "\n".join(lines) + "\n"
