"""provctl keeps copies of what it shares with the daemon, and imports nothing else.

The copies in ``daemon/cli/contract.py`` are checked against the daemon's own source of
each; a fresh interpreter shows what importing provctl loads.
"""

from __future__ import annotations

import json
import subprocess
import sys

from daemon.cli import contract
from harness.daemon import REPO
from daemon.config import default_socket_path
from daemon.errors import exit_codes_by_status
from statemachines.provisioning import TERMINAL, State
from statemachines.vm import TABLE as VM_TABLE
from statemachines.vm import VmState, VmTrigger


def test_the_exit_codes_are_the_error_trees() -> None:
    assert contract.EXIT_BY_STATUS == exit_codes_by_status()


def test_the_states_are_the_tables() -> None:
    assert contract.STATES == tuple(s.value for s in State)
    assert contract.TERMINAL_STATES == {s.value for s in TERMINAL}
    assert contract.VM_BUSY_STATES == {s.value for s in VM_TABLE.in_progress}
    for operation, goal in contract.VM_GOALS.items():  # each operation ends where it says
        busy = VM_TABLE.destination(VmState.RUNNING if operation != "start"
                                    else VmState.STOPPED, VmTrigger(operation))
        assert busy is not None and str(busy) in contract.VM_BUSY_STATES
        assert goal in {str(t.dest) for t in VM_TABLE.transitions_from(busy)}


def test_provctl_and_the_daemon_find_the_same_socket(monkeypatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/4242")
    assert contract.default_socket_path() == str(default_socket_path()) == \
        "/run/user/4242/provisiond/provisiond.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert contract.default_socket_path() == str(default_socket_path())


def test_provctl_imports_only_the_standard_library_and_its_own_modules() -> None:
    # -S: nothing from site-packages' start-up hooks hides what provctl itself loads.
    probe = (f"import sys; sys.path.insert(0, {str(REPO)!r}); before = set(sys.modules); "
             "import daemon.cli.commands, daemon.cli.completion; import json; "
             "print(json.dumps(sorted(set(sys.modules) - before)))")
    loaded = json.loads(subprocess.run([sys.executable, "-S", "-c", probe],
                                       capture_output=True, text=True, check=True).stdout)
    outside = [m for m in loaded
               if m.split(".")[0] not in sys.stdlib_module_names
               and m not in ("daemon", "daemon.cli") and not m.startswith("daemon.cli.")]
    assert outside == []
    # Not even the costly parts of the standard library.
    assert not {"http.client", "email", "pathlib", "typing", "dataclasses",
                "urllib.parse"} & set(loaded)
