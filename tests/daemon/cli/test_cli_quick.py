"""provctl's short cut for the VM operations (``daemon.cli.quick``): every command line it
reads means what argparse makes of it, and the rest is left to argparse."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from daemon.cli import commands, quick

REPO = Path(__file__).resolve().parents[3]

WORDS = ["start", "stop", "reboot", "delete", "show", "ID", "other", "--wait", "-w",
         "--force", "-f", "--json", "--socket", "/s.sock", "--socket=/t.sock", "--socket=",
         "--wai", "--js", "-wf", "--", "-h", "--help", "-x", ""]


def argparse_reads(words: list[str]) -> tuple | None:
    """What the full command line reader makes of ``words``, as quick's tuple; None when
    it refuses them (a usage error) or they are not a VM operation."""
    try:
        args = commands.parse_args(words)
    except SystemExit:
        return None
    if args.command not in ("start", "stop", "reboot", "delete"):
        return None
    socket = args.socket if any(w == "--socket" or w.startswith("--socket=")
                                for w in words) else None
    return (args.command, args.id, args.wait, getattr(args, "force", False), args.json,
            socket)


def command_lines() -> list[list[str]]:
    lines = [list(combo) for n in range(1, 4) for combo in itertools.permutations(WORDS, n)]
    lines += [["--json", "--socket", "/s.sock", "stop", "ID", "--force", "--wait"],
              ["stop", "--wait", "ID", "-f", "--socket=/t.sock", "--json"],
              ["delete", "ID", "--wait", "--wait"], ["--json", "--json", "reboot", "ID"],
              ["delete", "start"], ["start", "ID", "--socket", "/a", "--socket", "/b"],
              ["--socket", "start", "delete", "ID"], ["stop", "ID", "-f", "-f"]]
    return lines


def test_what_it_reads_is_what_argparse_reads(capsys):
    read = declined = 0
    for words in command_lines():
        ours = quick.read_operation(words)
        if ours is None:
            declined += 1
            continue
        read += 1
        assert ours == argparse_reads(words), words
    capsys.readouterr()  # argparse's usage messages
    assert read > 300 and declined > 10000  # both sides of the line were exercised


@pytest.mark.parametrize("words, expected", [
    (["delete", "ID", "--wait"], ("delete", "ID", True, False, False, None)),
    (["--socket", "/s", "stop", "-f", "ID", "--json"], ("stop", "ID", False, True, True, "/s")),
    (["reboot", "--socket=/r", "ID", "-w"], ("reboot", "ID", True, False, False, "/r")),
])
def test_plain_command_lines_are_read(words, expected):
    assert quick.read_operation(words) == expected


@pytest.mark.parametrize("words", [
    ["start"], ["start", "--help"], ["delete", "--wai", "ID"], ["stop", "-wf", "ID"],
    ["start", "-f", "ID"], ["delete", "ID", "ID2"], ["delete", "--", "ID"],
    ["--socket", "start", "ID"], ["show", "ID"], ["start", "ID", "--socket="],
])
def test_anything_else_is_left_to_argparse(words):
    assert quick.read_operation(words) is None


def test_a_vm_operation_imports_neither_argparse_nor_json(tmp_path):
    probe = ("import sys\nfrom daemon.cli import main\n"
             "code = main(['--socket', sys.argv[1], 'delete', 'ID', '--wait'])\n"
             "heavy = sorted({'argparse', 'json', 're', 'enum', 'socket', 'typing'} & "
             "set(sys.modules))\nprint(code, heavy)\n")
    result = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "none.sock")],
                            cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.stdout.strip() == "4 []", result.stderr  # unreachable, and light
    assert "cannot reach provisiond" in result.stderr
