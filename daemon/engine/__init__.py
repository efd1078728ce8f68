"""The engine: drives records of any state table through their workflow's steps.

``driver`` (the only code that fires transitions), ``workflow`` (what a workflow gives
the engine: table, steps, records; what a step returns), ``hosts`` (one connection and
reconnect loop per libvirt host), ``events`` (libvirt's callbacks in, routed out).
"""

from daemon.engine.driver import Engine
from daemon.engine.events import EventRouter
from daemon.engine.hosts import Hosts
from daemon.engine.workflow import Outcome, Record, RecordStore, Step, Workflow

__all__ = ["Engine", "EventRouter", "Hosts", "Outcome", "Record", "RecordStore", "Step",
           "Workflow"]
