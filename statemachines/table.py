"""What every state table declares, and what is derived from any of them.

A table module (``provisioning.py``, and the VM lifecycle's next) declares its states (a
``StrEnum`` whose members carry a docstring), its triggers, its transitions and the sets
the engine reads, and wraps them in one ``StateTable``. The engine drives any
``StateTable``; the docs render any of them. No I/O here, no imports from ``daemon``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

from transitions import Machine

S = TypeVar("S", bound=enum.StrEnum)


class DocumentedState(enum.StrEnum):
    """A state whose members are declared as ``NAME = ("value", "what it means")``."""

    def __new__(cls, value: str, doc: str) -> "DocumentedState":
        member = str.__new__(cls, value)
        member._value_ = value
        member.__doc__ = doc
        return member


@dataclass(frozen=True)
class Transition(Generic[S]):
    """One edge of a table: a trigger moving a record from ``source`` to ``dest``."""

    trigger: enum.StrEnum
    source: S
    dest: S
    fired_by: str
    """Which step's outcome (or which engine path) fires it, as Ironic's table comments do."""


@dataclass(frozen=True)
class StateTable(Generic[S]):
    """A complete state table: the single source of truth for one kind of record."""

    name: str
    """Short name of the table (``provisioning``)."""
    noun: str
    """What its records are called in log lines (``request``)."""
    title: str
    """Heading of its generated document."""
    source: str
    """The module declaring it, named in the generated document."""
    states: type[S]
    triggers: type[enum.StrEnum]
    transitions: tuple[Transition[S], ...]
    initial: S
    terminal: frozenset[S]
    """States a record never leaves."""
    acts_outside: frozenset[S]
    """States whose step acts outside the database: the state is on disk before it runs."""
    fail: enum.StrEnum
    """The trigger the engine fires when a step fails; every in-progress state has it."""
    resting: frozenset[S] = frozenset()
    """Non-terminal states with no step: a record waits there for an operation or an
    event to fire one of their triggers (a VM that is running)."""

    def __post_init__(self) -> None:
        for state in self.in_progress:
            if self.destination(state, self.fail) is None:
                raise ValueError(f"{self.name}: {state} has no '{self.fail}' transition")
        for t in self.transitions:
            if t.source in self.terminal:
                raise ValueError(f"{self.name}: terminal state {t.source} has a transition")

    @property
    def in_progress(self) -> frozenset[S]:
        """States with a step: the engine drives a record in one until it rests or ends."""
        return frozenset(self.states) - self.terminal - self.resting

    def transitions_from(self, state: S) -> list[Transition[S]]:
        """The edges leaving ``state``, in table order."""
        return [t for t in self.transitions if t.source == state]

    def destination(self, state: S, trigger: enum.StrEnum) -> S | None:
        """Where ``trigger`` takes a record in ``state``, or None if the table forbids it."""
        for t in self.transitions:
            if t.source == state and t.trigger == trigger:
                return t.dest
        return None

    def build_machine(self, before_state_change: Callable[[Any], None] | None = None
                      ) -> Machine:
        """Build the one shared machine of this table; records are moved with ``fire``.

        ``before_state_change`` receives transitions' ``EventData``; if it raises, the
        record's state does not move. The engine passes the function that persists.
        """
        return Machine(
            model=None,
            states=list(self.states),
            initial=self.initial,
            transitions=[{"trigger": str(t.trigger), "source": t.source, "dest": t.dest}
                         for t in self.transitions],
            auto_transitions=False,
            ignore_invalid_triggers=False,
            send_event=True,
            before_state_change=[before_state_change] if before_state_change else [],
        )

    def render_mermaid(self) -> str:
        """The table as a Markdown document with a Mermaid state diagram."""
        name = {s: s.name.lower() for s in self.states}
        lines = [
            f"<!-- Generated from {self.source} by `python -m statemachines`. -->",
            "<!-- Do not edit: tests/statemachines/ fail when it is stale. -->",
            f"# {self.title}",
            "",
            "```mermaid",
            "stateDiagram-v2",
        ]
        lines += [f"    state \"{s.value}\" as {name[s]}" for s in self.states]
        lines.append(f"    [*] --> {name[self.initial]}")
        lines += [f"    {name[t.source]} --> {name[t.dest]}: {t.trigger.value}"
                  for t in self.transitions]
        lines += [f"    {name[s]} --> [*]" for s in self.states if s in self.terminal]
        lines += ["```", "", "| state | meaning | its step acts outside the database "
                  "(durable first) |", "| --- | --- | --- |"]
        lines += [f"| `{s.value}` | {s.__doc__} | "
                  f"{'yes' if s in self.acts_outside else 'no step' if s in self.resting else ''} |"
                  for s in self.states]
        lines += ["", "| trigger | from | to | fired by |", "| --- | --- | --- | --- |"]
        lines += [f"| `{t.trigger.value}` | `{t.source.value}` | `{t.dest.value}` | "
                  f"{t.fired_by} |" for t in self.transitions]
        return "\n".join(lines) + "\n"


def fire(machine: Machine, model: Any, trigger: enum.StrEnum, **kwargs: Any) -> None:
    """Move ``model`` (any object with a ``state`` attribute) by ``trigger``.

    Raises transitions' ``MachineError`` if the table forbids ``trigger`` from the model's
    state. The model is not added to the machine: adding binds a method per trigger and
    per state to each model, which cost 5% of the daemon's CPU under load.
    """
    machine.events[str(trigger)].trigger(model, **kwargs)
