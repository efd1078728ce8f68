"""State tables of provisiond; pure declarations, no I/O."""

from statemachines.provisioning import (
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
    render_mermaid,
)

__all__ = [
    "HOLDS_QUOTA", "IN_PROGRESS", "INITIAL", "TERMINAL", "TRANSITIONS", "State", "Transition",
    "Trigger", "build_machine", "destination", "render_mermaid",
]
