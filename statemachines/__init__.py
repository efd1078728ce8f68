"""State tables of provisiond; pure declarations, no I/O.

``table`` holds what every table declares and what is derived from any of them;
``provisioning`` is the provisioning request's table, ``vm`` the VM's lifecycle after it. ``TABLES`` lists them all, for the
generated docs.
"""

from statemachines.provisioning import (
    ACTS_OUTSIDE,
    HOLDS_QUOTA,
    IN_PROGRESS,
    INITIAL,
    TABLE,
    TERMINAL,
    TRANSITIONS,
    State,
    Trigger,
    build_machine,
    destination,
    render_mermaid,
)
from statemachines.table import StateTable, Transition, fire
from statemachines.vm import TABLE as VM_TABLE

TABLES: tuple[StateTable, ...] = (TABLE, VM_TABLE)
"""Every state table of provisiond, in the order the docs show them."""


def render_docs() -> str:
    """``docs/states.md``: every table's diagram and tables, generated."""
    return "\n".join(table.render_mermaid() for table in TABLES)


__all__ = [
    "ACTS_OUTSIDE", "HOLDS_QUOTA", "IN_PROGRESS", "INITIAL", "TABLE", "TABLES", "TERMINAL",
    "VM_TABLE",
    "TRANSITIONS", "State", "StateTable", "Transition", "Trigger", "build_machine",
    "destination", "fire", "render_docs", "render_mermaid",
]
