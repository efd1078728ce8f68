"""State tables of provisiond; pure declarations, no I/O."""

from statemachines.provisioning import (
    ACTS_OUTSIDE,
    HOLDS_QUOTA,
    IN_PROGRESS,
    INITIAL,
    TERMINAL,
    TRANSITIONS,
    State,
    Transition,
    Trigger,
    build_machine,
    destination,
    fire,
    render_mermaid,
)

__all__ = [
    "ACTS_OUTSIDE", "HOLDS_QUOTA", "IN_PROGRESS", "INITIAL", "TERMINAL", "TRANSITIONS", "State", "Transition",
    "Trigger", "build_machine", "destination", "fire", "render_mermaid",
]
