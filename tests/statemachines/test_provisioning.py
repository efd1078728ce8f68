"""The provisioning state table: its states, edges, machine behaviour and generated docs."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import pytest
from transitions import MachineError

from statemachines import (
    HOLDS_QUOTA,
    IN_PROGRESS,
    INITIAL,
    TERMINAL,
    TRANSITIONS,
    State,
    Trigger,
    build_machine,
    destination,
    render_docs,
    render_mermaid,
)
from statemachines.provisioning import ACTS_OUTSIDE, transitions_from

REPO = Path(__file__).resolve().parent.parent.parent
STATES_DOC = REPO / "docs" / "states.md"

EXPECTED_STATES = ["requested", "authorized", "storage-searching", "storage-creating",
                   "seeding", "defining", "done", "failed"]


class Model:
    """A request's handle on the machine, as the engine's RequestModel is."""

    def __init__(self, request_id: str = "r1") -> None:
        self.id = request_id
        self.state: State


def _reachable_from(start: State) -> set[State]:
    seen = {start}
    queue = deque([start])
    while queue:
        for t in transitions_from(queue.popleft()):
            if t.dest not in seen:
                seen.add(t.dest)
                queue.append(t.dest)
    return seen


# --------------------------------------------------------------------------- the table


def test_exactly_the_eight_states_in_order() -> None:
    assert [s.value for s in State] == EXPECTED_STATES
    assert INITIAL == State.REQUESTED


def test_every_state_has_its_own_docstring() -> None:
    docs = {}
    for s in State:
        doc = s.__doc__
        assert doc and doc.strip(), f"state {s.value} has no docstring"
        # An undocumented member would inherit the class docstring.
        assert doc != State.__doc__, f"state {s.value} only has the class docstring"
        docs[s] = doc
    assert len(set(docs.values())) == len(docs), "two states share a docstring"


def test_terminal_states_are_done_and_failed() -> None:
    assert TERMINAL == {State.DONE, State.FAILED}
    assert IN_PROGRESS == set(State) - TERMINAL


@pytest.mark.parametrize("state", sorted(IN_PROGRESS, key=list(State).index),
                         ids=lambda s: s.value)
def test_every_state_in_progress_can_fail(state: State) -> None:
    assert destination(state, Trigger.FAIL) == State.FAILED


def test_a_free_volume_goes_straight_from_searching_to_defining() -> None:
    assert destination(State.STORAGE_SEARCHING, Trigger.REUSE_VOLUME) == State.DEFINING
    assert destination(State.STORAGE_SEARCHING, Trigger.CREATE_STORAGE) == State.STORAGE_CREATING


def test_an_appliances_disk_is_seeded_before_its_domain_is_defined() -> None:
    assert destination(State.STORAGE_CREATING, Trigger.SEED) == State.SEEDING
    assert destination(State.SEEDING, Trigger.DEFINE) == State.DEFINING
    assert State.SEEDING in ACTS_OUTSIDE  # it uploads into libvirt: durable first


def test_the_happy_path_edges() -> None:
    walk = [(State.REQUESTED, Trigger.AUTHORIZE, State.AUTHORIZED),
            (State.AUTHORIZED, Trigger.SEARCH_STORAGE, State.STORAGE_SEARCHING),
            (State.STORAGE_CREATING, Trigger.DEFINE, State.DEFINING),
            (State.DEFINING, Trigger.FINISH, State.DONE)]
    for source, trigger, dest in walk:
        assert destination(source, trigger) == dest


@pytest.mark.parametrize("state", sorted(TERMINAL), ids=lambda s: s.value)
def test_terminal_states_have_no_way_out(state: State) -> None:
    assert transitions_from(state) == []
    assert all(destination(state, trigger) is None for trigger in Trigger)


def test_no_state_is_unreachable() -> None:
    assert _reachable_from(INITIAL) == set(State)


@pytest.mark.parametrize("state", sorted(IN_PROGRESS, key=list(State).index),
                         ids=lambda s: s.value)
def test_every_state_in_progress_can_still_succeed(state: State) -> None:
    assert State.DONE in _reachable_from(state)


def test_each_trigger_is_unambiguous_from_each_state() -> None:
    pairs = [(t.source, t.trigger) for t in TRANSITIONS]
    assert len(pairs) == len(set(pairs))


def test_holds_quota_is_everything_past_authorization_except_failure() -> None:
    assert HOLDS_QUOTA == set(State) - {State.REQUESTED, State.FAILED}


# --------------------------------------------------------------------------- the machine

ALL_PAIRS = [(s, t) for s in State for t in Trigger]


@pytest.mark.parametrize("state, trigger", [p for p in ALL_PAIRS if destination(*p) is None],
                         ids=lambda v: v.value)
def test_machine_refuses_a_trigger_the_table_does_not_have(state: State,
                                                           trigger: Trigger) -> None:
    calls: list[Any] = []
    machine = build_machine(calls.append)
    model = Model()
    machine.add_model(model, initial=state)

    with pytest.raises(MachineError):
        model.trigger(str(trigger))
    assert model.state == state
    assert calls == [], "nothing may be persisted for a refused trigger"


@pytest.mark.parametrize("edge", TRANSITIONS,
                         ids=lambda t: f"{t.source.value}-{t.trigger.value}")
def test_machine_follows_every_edge_of_the_table(edge: Any) -> None:
    machine = build_machine()
    model = Model()
    machine.add_model(model, initial=edge.source)

    model.trigger(str(edge.trigger))
    assert model.state == edge.dest


def test_hook_runs_before_the_state_moves_and_sees_the_states_and_arguments() -> None:
    seen: list[tuple[State, State, State, str, Any]] = []

    def persist(event: Any) -> None:
        # The engine maps these back with State[...]; the model has not moved yet.
        seen.append((State[event.transition.source], State[event.transition.dest],
                     event.model.state, event.event.name, event.kwargs.get("detail")))

    machine = build_machine(persist)
    model = Model()
    machine.add_model(model, initial=State.REQUESTED)
    model.trigger("authorize", detail="alice holds CLOUD_CREATE")

    assert seen == [(State.REQUESTED, State.AUTHORIZED, State.REQUESTED, "authorize",
                     "alice holds CLOUD_CREATE")]
    assert model.state == State.AUTHORIZED


def test_when_the_hook_raises_the_state_does_not_move() -> None:
    class DiskFull(Exception):
        pass

    def persist(_event: Any) -> None:
        raise DiskFull("cannot write")

    machine = build_machine(persist)
    model = Model()
    machine.add_model(model, initial=State.STORAGE_SEARCHING)

    with pytest.raises(DiskFull):
        model.trigger("reuse_volume")
    assert model.state == State.STORAGE_SEARCHING
    with pytest.raises(DiskFull):
        model.trigger("fail")
    assert model.state == State.STORAGE_SEARCHING


def test_one_machine_moves_each_model_on_its_own() -> None:
    machine = build_machine()
    a, b = Model("a"), Model("b")
    machine.add_model(a, initial=State.REQUESTED)
    machine.add_model(b, initial=State.REQUESTED)

    a.trigger("authorize")
    b.trigger("fail")
    assert (a.state, b.state) == (State.AUTHORIZED, State.FAILED)


# --------------------------------------------------------------------------- the docs


def test_states_doc_is_generated_from_the_table() -> None:
    current = STATES_DOC.read_text(encoding="utf-8")
    assert current == render_docs(), (
        "docs/states.md is stale: it differs from the tables in statemachines/; "
        "run `./dev docs` to regenerate it")


def test_rendered_diagram_shows_every_state_and_edge() -> None:
    text = render_mermaid()
    for s in State:
        assert f'state "{s.value}" as {s.name.lower()}' in text
        assert f"| `{s.value}` | {s.__doc__} |" in text
    for t in TRANSITIONS:
        assert f"{t.source.name.lower()} --> {t.dest.name.lower()}: {t.trigger.value}" in text
    assert "[*] --> requested" in text
    assert "done --> [*]" in text and "failed --> [*]" in text
