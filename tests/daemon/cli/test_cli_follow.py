"""provctl against a real provisiond: ``log --follow``, ``list`` filters, shell completion
and ``--help``."""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import completion, contract
from daemon.cli import parser as cli_parser
from harness.daemon import Daemon, ME, OTHER_USER
from tests.conftest import LateHost

PROVCTL = str(Path(sys.executable).parent / "provctl")
PROVISIOND = str(Path(sys.executable).parent / "provisiond")
SIZES = {"small": {"cpus": 2, "memory": 262144, "storage_size_in_gb": 15},
         "big": {"cpus": 1, "memory": 1024, "storage_size_in_gb": 500}}


def provctl(*args: str, socket: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = [PROVCTL, *args] + (["--socket", socket] if socket else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def create(daemon: Daemon, pool: str = "rp", size: str = "small",
           as_user: str | None = None) -> dict[str, Any]:
    reply = daemon.call("POST", "/v1/requests", {"template": "ipxe", "size": size,
                                                 "resource_pool": pool}, as_user=as_user)
    assert reply.status == 202, reply.body
    return reply.body


def ids(daemon: Daemon, query: str = "", as_user: str | None = None) -> list[str]:
    reply = daemon.call("GET", f"/v1/requests{query}", as_user=as_user)
    assert reply.status == 200, reply.body
    return [r["id"] for r in reply.body["requests"]]


class Lines:
    """A running process's stdout, line by line, readable with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def until(self, pattern: str, timeout: float = 20) -> str:
        """Read lines until one matches ``pattern``; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if line is None:
                break
            self.lines.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))

    def rest(self, timeout: float = 30) -> list[str]:
        """Every remaining line, once the process has exited."""
        self.proc.wait(timeout)
        while (line := self._queue.get(timeout=5)) is not None:
            self.lines.append(line)
        return self.lines


def took_seconds(line: str) -> float:
    """The TOOK column of a timeline line (``+1.234s`` or ``+1m02.000s``)."""
    match = re.search(r"\+(?:(\d+)m)?(\d+\.\d+)s", line)
    assert match, line
    return int(match.group(1) or 0) * 60 + float(match.group(2))


# --------------------------------------------------------------------------- log --follow


def test_follow_streams_a_live_request_until_done(make_daemon, late_host: LateHost) -> None:
    daemon: Daemon = make_daemon(str(late_host.path))
    rid = create(daemon)["id"]
    proc = subprocess.Popen([PROVCTL, "log", rid, "--follow", "--socket", daemon.socket],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = Lines(proc)
    try:
        assert out.until(r"^TIME\s+KIND\s+STATE\s+TRIGGER\s+TOOK\s+DETAIL$")
        out.until(r"note\s+storage-searching\s+host-unreachable\s")
        time.sleep(1.0)  # the request waits for its host, and so does --follow
        assert proc.poll() is None
        assert daemon.call("GET", f"/v1/requests/{rid}").body["state"] == "storage-searching"
        late_host.arrive()
        lines = out.rest()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    transitions = [line for line in lines if " transition " in line]
    assert [re.findall(r"-> (\S+)", t)[0] for t in transitions] == [
        "requested", "authorized", "storage-searching", "defining", "done"]
    waited = next(t for t in transitions if "storage-searching -> defining" in t)
    assert took_seconds(waited) >= 1.0  # TOOK is the time the request spent waiting
    assert any(re.search(r"\bevent\s+defining\s+libvirt:DEFINED\b", line) for line in lines)
    assert any(re.search(r"\bnote\s+storage-searching\s+host-back\b", line) for line in lines)
    assert re.fullmatch(r"requested -> done in \+\d+\.\d{3}s", lines[-1])
    assert lines.count(lines[1]) == 1  # each entry printed once


def test_follow_exits_1_when_the_request_fails(make_daemon) -> None:
    daemon: Daemon = make_daemon(sizes=SIZES)
    rid = create(daemon, size="big")["id"]
    out = provctl("log", "-f", rid, socket=daemon.socket)
    assert out.returncode == 1
    assert out.stderr.startswith(f"provctl: request {rid} failed: no free volume")
    assert len(out.stderr.splitlines()) == 1
    assert re.search(r"storage-searching -> failed\s+fail\s", out.stdout)
    assert re.search(r"\bnote\s+failed\s+rollback\s.*rolled back", out.stdout)  # waited for it
    assert out.stdout.rstrip().splitlines()[-1].startswith("requested -> failed in +")


def test_follow_of_a_finished_request_prints_its_log_and_exits(daemon: Daemon) -> None:
    rid = create(daemon)["id"]
    assert daemon.wait_terminal(rid)["state"] == "done"
    human = provctl("log", rid, "--follow", socket=daemon.socket)
    assert human.returncode == 0 and human.stderr == ""
    assert re.search(r"\bevent\s+defining\s+libvirt:DEFINED\b", human.stdout)

    as_json = provctl("log", rid, "--follow", "--json", socket=daemon.socket)
    assert as_json.returncode == 0
    entries = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert entries == daemon.call("GET", f"/v1/requests/{rid}/log").body["log"]
    assert {e["kind"] for e in entries} == {"transition", "event"}

    assert provctl("log", "0" * 32, "--follow", socket=daemon.socket).returncode == 5


def test_log_shows_libvirt_events_in_the_timeline(daemon: Daemon) -> None:
    rid = create(daemon)["id"]
    daemon.wait_terminal(rid)
    out = provctl("log", rid, socket=daemon.socket)
    assert out.returncode == 0
    event = next(line for line in out.stdout.splitlines() if "libvirt:DEFINED" in line)
    assert re.search(r"Z\s+event\s+defining\s+libvirt:DEFINED\s+-\s+domain \S+ DEFINED", event)


# --------------------------------------------------------------------------- list filters


def test_list_filters_by_owner_and_pool_within_what_the_caller_sees(daemon: Daemon) -> None:
    in_rp = create(daemon, "rp")["id"]
    in_rp2 = create(daemon, "rp2")["id"]

    assert ids(daemon, f"?owner={ME}") == [in_rp, in_rp2]
    assert ids(daemon, "?resource_pool=rp2") == [in_rp2]
    assert ids(daemon, "?resource_pool=rp&resource_pool=rp2") == [in_rp, in_rp2]
    assert ids(daemon, f"?owner={OTHER_USER}") == []
    # OTHER_USER administers rp: the owner filter narrows that, and never widens it.
    assert ids(daemon, f"?owner={ME}", as_user=OTHER_USER) == [in_rp]
    assert ids(daemon, "?resource_pool=rp2", as_user=OTHER_USER) == []
    assert ids(daemon, f"?owner={ME}&resource_pool=rp2", as_user=OTHER_USER) == []
    bad = daemon.call("GET", "/v1/requests?pool=rp")
    assert bad.status == 400 and bad.body["error"]["field"] == "pool"

    listed = provctl("list", "--pool", "rp2", socket=daemon.socket)
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()[1:]] == [in_rp2]
    quiet = provctl("list", "-q", "--owner", ME, "-p", "rp", "-p", "rp2",
                    socket=daemon.socket)
    assert quiet.stdout.split() == [in_rp, in_rp2]
    nobody = provctl("list", "--owner", OTHER_USER, "--json", socket=daemon.socket)
    assert json.loads(nobody.stdout) == {"requests": [], "next": None}


def test_list_filters_by_age(daemon: Daemon) -> None:
    first = create(daemon)
    time.sleep(0.05)
    second = create(daemon)

    # Absolute times: the API's own created_at values are exact bounds.
    assert ids(daemon, f"?since={second['created_at']}") == [second["id"]]
    assert ids(daemon, f"?until={second['created_at']}") == [first["id"]]
    assert ids(daemon, f"?since={first['created_at']}&until={second['created_at']}") == \
        [first["id"]]
    assert ids(daemon, "?since=0&until=1") == []
    since = provctl("list", "-q", "--since", second["created_at"], socket=daemon.socket)
    assert since.stdout.split() == [second["id"]]
    older = provctl("list", "-q", "--older-than", second["created_at"], socket=daemon.socket)
    assert older.stdout.split() == [first["id"]]

    # Durations count back from now; an age only grows, so these hold however slow we are.
    time.sleep(1.2)
    assert provctl("list", "-q", "--older-than", "1s",
                   socket=daemon.socket).stdout.split() == [first["id"], second["id"]]
    assert provctl("list", "-q", "--since", "1s", socket=daemon.socket).stdout == ""
    assert provctl("list", "-q", "--since", "1h", "--state", "done", "--state", "requested",
                   "--state", "authorized", "--state", "storage-searching", "--state",
                   "defining", socket=daemon.socket).stdout.split() == \
        [first["id"], second["id"]]
    assert provctl("list", "-q", "--older-than", "1d", socket=daemon.socket).stdout == ""

    empty = provctl("list", "--since", "1m", "--older-than", "2m", socket=daemon.socket)
    assert empty.returncode == 2
    assert empty.stderr == "provctl: --older-than 2m and --since 1m leave no time between " \
                           "them\n"
    for bad in ("yesterday", "10", "5x", "1h-"):
        out = provctl("list", "--since", bad, socket=daemon.socket)
        assert out.returncode == 2 and "neither a duration" in out.stderr, bad


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("10m", 600), ("2h", 7200), ("7d", 604800), ("1h30m", 5400), ("0.5m", 30),
])
def test_durations(text: str, seconds: float) -> None:
    bound = cli_parser.parse_time_bound(text)
    assert bound.age == seconds and bound.epoch(10_000_000) == 10_000_000 - seconds


def test_absolute_times_are_utc_unless_they_say_otherwise() -> None:
    assert cli_parser.parse_time_bound("1970-01-02").epoch(0) == 86400
    assert cli_parser.parse_time_bound("1970-01-02T00:00:00Z").epoch(0) == 86400
    assert cli_parser.parse_time_bound("1970-01-02T02:00:00+02:00").epoch(0) == 86400


# --------------------------------------------------------------------------- completion


def complete(words: list[str], script: str = "bash") -> list[str]:
    """What provctl's bash completion offers for ``words`` (the last one being typed)."""
    program = (f'source <("{PROVCTL}" completion {script}); '
               'COMP_WORDS=("$@"); COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); _provctl; '
               'printf "%s\\n" "${COMPREPLY[@]}"')
    out = subprocess.run(["bash", "-c", program, "bash", PROVCTL, *words],
                         capture_output=True, text=True, timeout=30, check=True)
    return out.stdout.split()


def test_bash_completion_loads_and_registers() -> None:
    out = subprocess.run(["bash", "-c", f'source <("{PROVCTL}" completion bash) && '
                                        "complete -p provctl"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "complete -F _provctl provctl"
    assert out.stderr == ""


def test_bash_completion_offers_commands_options_and_states() -> None:
    commands = list(completion._subcommands(cli_parser.build_parser()))
    assert complete([""]) == commands
    assert "log" in commands and "completion" in commands
    assert complete(["l"]) == ["list", "log"]
    assert sorted(complete(["--json", "ca"])) == ["cancel", "catalog"]
    assert set(complete(["list", "--"])) >= {"--state", "--owner", "--pool", "--since",
                                             "--older-than", "--quiet", "--json", "--help"}
    assert complete(["list", "--state", ""]) == list(contract.STATES)
    assert complete(["--socket", "/x", "list", "--state", "s"]) == [
        "storage-searching", "storage-creating", "seeding"]
    assert "--follow" in complete(["log", "-"])
    assert complete(["create", "--template", ""]) == []  # free text
    assert complete(["completion", ""]) == ["bash", "zsh"]


def test_bash_completion_offers_request_ids(daemon: Daemon) -> None:
    rid = create(daemon)["id"]
    daemon.wait_terminal(rid)
    assert complete(["--socket", daemon.socket, "show", ""]) == [rid]
    assert complete(["--socket", daemon.socket, "log", rid[:4]]) == [rid]
    # No id to offer (one given already, none cancellable, no daemon): the options are.
    for words in (["show", rid, ""], ["cancel", ""]):
        offered = complete(["--socket", daemon.socket, *words])
        assert offered and all(w.startswith("-") for w in offered), (words, offered)
    assert all(w.startswith("-") for w in complete(["--socket", "/nonexistent.sock", "show",
                                                    ""]))


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh missing: scripts/setup installs it")
def test_zsh_completion_loads() -> None:
    # bashcompinit runs the function as sh would (ksharrays); zsh filters what it offers.
    program = (f'autoload -U compinit && compinit -u -D; source <("{PROVCTL}" completion zsh) && '
               "print -r -- $_comps[provctl] && emulate sh -c 'setopt ksharrays; "
               'COMP_WORDS=(provctl list --state ""); COMP_CWORD=3; _provctl; '
               "echo ${COMPREPLY[@]}'")
    out = subprocess.run(["zsh", "-f", "-c", program], capture_output=True, text=True,
                         timeout=30, env={**os.environ, "HOME": "/tmp"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["_bash_complete -F _provctl", " ".join(contract.STATES)]


# --------------------------------------------------------------------------- help


def all_parsers() -> list[tuple[str, argparse.ArgumentParser]]:
    parser = cli_parser.build_parser()
    return [("provctl", parser), *((f"provctl {n}", p)
                                   for n, p in completion._subcommands(parser).items())]


@pytest.mark.parametrize("name, parser", all_parsers(), ids=[n for n, _ in all_parsers()])
def test_every_command_explains_itself(name: str, parser: argparse.ArgumentParser) -> None:
    assert parser.description and len(parser.description) > 40, name
    for action in parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, (name, action.dest)
    out = subprocess.run([PROVCTL, *name.split()[1:], "--help"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith(f"usage: {name}"), out.stderr
    assert "--socket PATH" in out.stdout


def test_provisiond_has_help() -> None:
    out = subprocess.run([PROVISIOND, "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("usage: provisiond")
    assert "--config" in out.stdout and "--check-config" in out.stdout
