"""``provctl start|stop|reboot|delete``: a VM operation, and following it until it is over.

Light on imports (no ``argparse``, no ``json``): these commands are what people run most
and what is measured against ``virsh`` (``bench/vm_ops.py``), so their command lines are
read by ``daemon.cli.quick`` and run from here without the rest of provctl.
"""

from __future__ import annotations

import sys

from daemon.cli.client import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, PROG, Client, one_line
from daemon.cli.contract import VM_BUSY_STATES, VM_GOALS
from daemon.cli.jsontext import pretty

OPERATIONS = ("start", "stop", "reboot", "delete")
"""The VM operations; ``stop`` alone takes ``--force``."""

FIRST_WAIT = 2.0
"""Seconds ``--wait`` lets the operation's own call wait for its end: most are over by
then (a start, a forced stop, a delete), in one call; a longer one is announced then and
followed. An ACPI shutdown (``stop`` without ``--force``) takes the guest's time, seconds
to minutes: it is announced at once instead."""


def operate(client: Client, request_id: str, operation: str, *, force: bool = False,
            wait: bool = False, as_json: bool = False) -> int:
    """Ask for a VM operation; with ``wait``, follow it until the VM rests (exit 0 when it
    got where the operation goes, 1 otherwise)."""
    try:
        first_wait = FIRST_WAIT if wait and (operation != "stop" or force) else 0
        req = client.operate(request_id, operation, force, wait=first_wait)
    except KeyboardInterrupt:
        if not wait:
            raise
        print(f"{PROG}: interrupted; the operation may go on (see: {PROG} show {request_id})",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    vm = req.get("vm") or {}
    if not wait:
        if as_json:
            print(pretty(req))
        elif operation == "delete" and vm.get("state") == "deleted":
            print(f"VM {req.get('name')} was already deleted (request "
                  f"{req.get('id', request_id)})")  # nothing asked: not "accepted"
        else:
            print(f"{operation}{' --force' if force else ''} accepted for VM {req.get('name')}"
                  f" (request {req.get('id', request_id)}; VM now {vm.get('state')})")
        return EXIT_OK
    if not as_json and vm.get("state") in VM_BUSY_STATES:  # still going: say so
        print(f"{operation}: VM {req.get('name')} ({vm.get('state')}) ...", flush=True)
    try:
        while vm.get("state") in VM_BUSY_STATES or vm.get("state") is None:
            req = client.get(request_id, wait=30)  # answered when the operation is over
            vm = req.get("vm") or {}
            if vm.get("state") is None:
                break
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the operation goes on (see: {PROG} show {request_id})",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    if as_json:
        print(pretty(req))
    state = vm.get("state")
    if state == VM_GOALS[operation]:
        if not as_json:
            print(f"{state}: VM {req.get('name')}")
        return EXIT_OK
    reason = one_line(vm.get("reason") or "no reason given")
    print(f"{PROG}: VM {req.get('name')} is {state}: {reason}", file=sys.stderr)
    return EXIT_FAILED


