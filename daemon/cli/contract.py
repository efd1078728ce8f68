"""What provctl must agree on with the daemon, kept here so provctl imports no daemon code.

provctl starts once per command: importing the daemon's modules (YAML, the state
machine library) would be its latency. Each copy below is checked against the daemon's
own source of it by ``tests/daemon/cli/test_cli_contract.py``.
"""

from __future__ import annotations

import os

SOCKET_ENV = "PROVISIOND_SOCKET"
"""The environment variable naming the socket (``--socket`` wins over it)."""

SYSTEM_SOCKET = "/run/provisiond/provisiond.sock"
"""Where the systemd units put the socket of the system's provisiond."""

STATES: tuple[str, ...] = ("requested", "authorized", "storage-searching",
                           "storage-creating", "seeding", "defining", "done", "failed")
"""A provisioning request's states, in table order (``statemachines.provisioning``)."""

TERMINAL_STATES: frozenset[str] = frozenset({"done", "failed"})
"""The states a request never leaves (``statemachines.provisioning.TERMINAL``)."""

VM_BUSY_STATES: frozenset[str] = frozenset(
    {"starting", "stopping", "powering-off", "rebooting", "deleting", "installed"})
"""A VM's states while an operation runs (``statemachines.vm.TABLE.in_progress``)."""

VM_GOALS: dict[str, str] = {"start": "running", "stop": "stopped", "reboot": "running",
                            "delete": "deleted"}
"""The state each VM operation ends in when it succeeds."""

EXIT_BY_STATUS: dict[int, int] = {400: 2, 403: 3, 404: 5, 409: 1, 429: 1, 500: 1, 501: 1,
                                  502: 1, 503: 1, 504: 1, 507: 1}
"""HTTP status of an API error -> provctl's exit code (``daemon.errors``' tree)."""


def default_socket_path() -> str:
    """A user's own daemon's socket: ``$XDG_RUNTIME_DIR/provisiond/provisiond.sock``,
    else under /tmp (the daemon's default ``daemon.socket``)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return os.path.join(runtime, "provisiond", "provisiond.sock")
    return f"/tmp/provisiond-{os.geteuid()}/provisiond.sock"
