"""provctl keeps copies of what it shares with the daemon, and imports nothing else.

The copies in ``daemon/cli/contract.py`` are checked against the daemon's own source of
each; a fresh interpreter shows what importing provctl loads.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

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


PROBE = """
import json, os, sys
before = set(sys.modules)
import daemon.cli
from daemon.cli import main
imported = sorted(set(sys.modules) - before)
out = os.dup(1)
quiet = os.open(os.devnull, os.O_WRONLY)
os.dup2(quiet, 1)
os.dup2(quiet, 2)
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit:
        pass
os.write(out, json.dumps([imported, sorted(set(sys.modules) - before)]).encode())
"""
"""Imports provctl, then runs it on command lines that take each path of its code."""

RUNS = [["--help"], ["log", "--help"], ["completion", "bash"], ["completion", "zsh"],
        ["--socket", "/nonexistent/p.sock", "create", "-t", "ipxe", "-s", "small", "--wait"],
        ["--socket", "/nonexistent/p.sock", "list", "--since", "2026-01-31T12:00:00Z"],
        ["--socket", "/nonexistent/p.sock", "log", "--follow", "ID"],
        ["list", "--state", "no-such-state"]]
DAEMON_SIDE = {"yaml", "transitions", "aiohttp", "libvirt", "sqlite_utils", "prometheus_client",
               "statemachines", "daemon.config", "daemon.errors", "daemon.api", "daemon.store"}
COSTLY = {"http.client", "email", "pathlib", "typing", "dataclasses", "urllib.parse", "shutil",
          "socket", "selectors"}
"""Parts of the standard library provctl does without: each costs milliseconds a run."""


@pytest.mark.parametrize("flags", [[], ["-S"]], ids=["as installed", "without site"])
def test_provctl_loads_only_the_standard_library_and_its_own_modules(flags: list[str]) -> None:
    # A fresh interpreter in the checkout: what this process imported does not count, and
    # without site (-S) no start-up hook of site-packages hides what provctl loads.
    run = subprocess.run([sys.executable, *flags, "-c", PROBE, json.dumps(RUNS)], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=True)
    imported, loaded = json.loads(run.stdout)
    assert "daemon.cli" in imported and "daemon.cli.commands" in loaded
    outside = [m for m in loaded
               if m.split(".")[0] not in sys.stdlib_module_names
               and m not in ("daemon", "daemon.cli") and not m.startswith("daemon.cli.")]
    assert outside == []
    assert not DAEMON_SIDE & set(loaded)
    assert not COSTLY & set(loaded)
    # Help, completion and dates are loaded by the commands that need them, not by import.
    assert not {"daemon.cli.completion", "datetime", "shlex", "textwrap"} & set(imported)
    assert {"daemon.cli.completion", "datetime", "shlex", "textwrap"} <= set(loaded)
