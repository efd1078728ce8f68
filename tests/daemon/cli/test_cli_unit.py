"""provctl without the daemon: arguments, rendering, and exit codes against a fake server.

The fake daemon is a plain ``socketserver`` HTTP server on a Unix socket in a thread (no
asyncio: the suite shares one event loop, which these tests leave alone). It answers from
a table of scripted routes and records every call.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from daemon.cli import client, commands, contract, render
from daemon.cli import main as provctl
from daemon.config import default_socket_path
from daemon.errors import ProvisiondError

REPO = Path(__file__).resolve().parents[3]
RID = "3f2a9c0d1e2b4a5f8c7d6e5f4a3b2c1d"

REQUEST: dict[str, Any] = {
    "id": RID, "name": "web1", "owner": "alice", "template": "ipxe", "size": "small",
    "resource_pool": "rp", "hardware_pool": "hw", "host": "testhost", "cpus": 2,
    "memory_kib": 262144, "storage_gb": 15, "state": "requested", "reason": None,
    "volume": None, "domain": None,
    "created_at": "2026-11-24T01:02:03.456Z", "updated_at": "2026-11-24T01:02:03.456Z",
}
DONE_REQUEST = {**REQUEST, "state": "done",
                "volume": {"pool": "pool-dir", "name": "free-15g.qcow2",
                           "path": "/var/lib/pools/dir/free-15g.qcow2", "owned": False},
                "domain": {"uuid": "0b9e5c3a-1111-2222-3333-444455556666", "name": "web1"},
                "updated_at": "2026-11-24T01:02:03.612Z"}
FAILED_REQUEST = {**REQUEST, "state": "failed",
                  "reason": "no storage: pool-dir: 3 GiB free, 15 GiB needed",
                  "updated_at": "2026-11-24T01:02:03.500Z"}


def transition(src: str | None, dst: str, trigger: str, at: str,
               detail: str | None = None) -> dict[str, Any]:
    return {"kind": "transition", "from": src, "to": dst, "trigger": trigger,
            "at": f"2026-11-24T01:02:{at}Z", "detail": detail}


DONE_LOG = [
    transition(None, "requested", "submit", "03.456"),
    transition("requested", "authorized", "authorize", "03.468", "quota holds"),
    transition("authorized", "storage-searching", "search_storage", "03.470"),
    transition("storage-searching", "defining", "reuse_volume", "03.500",
               "reusing pool-dir/free-15g.qcow2"),
    {"kind": "event", "from": "defining", "to": "defining", "trigger": "libvirt:DEFINED",
     "at": "2026-11-24T01:02:03.600Z", "detail": "domain 0b9e5c3a defined"},
    transition("defining", "done", "finish", "03.612"),
]
FAILED_LOG = [
    transition(None, "requested", "submit", "03.456"),
    transition("requested", "authorized", "authorize", "03.468"),
    transition("authorized", "storage-searching", "search_storage", "03.470"),
    transition("storage-searching", "failed", "fail", "03.500", FAILED_REQUEST["reason"]),
    {"kind": "note", "from": "failed", "to": "failed", "trigger": "rollback",
     "at": "2026-11-24T01:02:03.510Z", "detail": "nothing to release"},
]


# --------------------------------------------------------------------------- fake daemon

Route = Callable[[Any, dict[str, str]], tuple[int, Any]]


def error(status: int, code: str, message: str, field: str | None = None) -> tuple[int, Any]:
    body: dict[str, Any] = {"code": code, "message": message}
    if field:
        body["field"] = field
    return status, {"error": body}


class FakeDaemon:
    """A scripted provisiond on a Unix socket: ``routes[(method, path)]`` answers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.routes: dict[tuple[str, str], tuple[int, Any] | Route] = {}
        self.calls: list[tuple[str, str, dict[str, str], Any]] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                headers = dict(self.headers)
                fake.calls.append((self.command, self.path, headers, body))
                route = fake.routes.get((self.command, self.path)) or fake.routes.get(
                    (self.command, self.path.split("?")[0]))  # a route for any query
                if route is None:
                    status, payload = error(404, "not_found", f"no route {self.path}")
                elif callable(route):
                    status, payload = route(body, headers)
                else:
                    status, payload = route
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, *args: Any) -> None:  # quiet (and no peer address)
                pass

        self.server = socketserver.ThreadingUnixStreamServer(str(path), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       kwargs={"poll_interval": 0.02})

    def paths(self, method: str | None = None) -> list[str]:
        return [p for m, p, _h, _b in self.calls if method is None or m == method]

    def growing_log(self, entries: list[dict[str, Any]], per_poll: int = 1) -> Route:
        """A log route that shows ``per_poll`` more entries at each read (a live request)."""
        shown = [0]

        def route(_body: Any, _headers: dict[str, str]) -> tuple[int, Any]:
            shown[0] = min(len(entries), shown[0] + per_poll)
            return 200, {"request_id": RID, "log": entries[:shown[0]]}
        return route


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path (AF_UNIX paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="provctl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fake(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeDaemon]:
    daemon = FakeDaemon(short_dir / "fake.sock")
    daemon.thread.start()
    monkeypatch.setenv(contract.SOCKET_ENV, str(daemon.path))
    monkeypatch.setattr(commands, "POLL_INTERVAL", 0.005)
    yield daemon
    daemon.server.shutdown()
    daemon.server.server_close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = provctl(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("argv", [
    ["--json", "--socket", "/x/p.sock", "list"],
    ["list", "--json", "--socket", "/x/p.sock"],
    ["--socket", "/x/p.sock", "list", "--json"],
    ["--json", "list", "--socket", "/x/p.sock"],
])
def test_global_options_go_before_or_after_the_command(argv):
    args = commands.parse_args(argv)

    assert args.command == "list"
    assert args.json is True
    assert args.socket == "/x/p.sock"


def test_socket_defaults_to_the_environment_then_the_per_user_path(monkeypatch):
    monkeypatch.setenv(contract.SOCKET_ENV, "/env/provisiond.sock")
    assert commands.parse_args(["catalog"]).socket == "/env/provisiond.sock"
    assert commands.parse_args(["catalog", "--socket", "/cli.sock"]).socket == "/cli.sock"

    monkeypatch.delenv(contract.SOCKET_ENV)
    args = commands.parse_args(["catalog"])
    assert args.socket == str(default_socket_path())
    assert args.json is False


def test_create_and_list_options():
    args = commands.parse_args(["create", "-t", "ipxe", "-s", "small", "--pool", "rp",
                           "--name", "web1", "--idempotency-key", "k1", "--wait"])
    assert (args.template, args.size, args.pool, args.name, args.idempotency_key, args.wait) \
        == ("ipxe", "small", "rp", "web1", "k1", True)
    assert commands.parse_args(["list", "--state", "failed", "--state", "done"]).state \
        == ["failed", "done"]
    assert commands.parse_args(["list"]).state is None


@pytest.mark.parametrize("argv", [
    [],                                       # no command
    ["create", "--template", "ipxe"],         # --size missing
    ["list", "--state", "sleeping"],          # not a state
    ["show"],                                 # ID missing
    ["frobnicate"],
])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        commands.main(argv)
    assert exc.value.code == 2
    assert "usage: provctl" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["create", "-t", "ipxe", "-s", "small", "--bogus"],
    ["list", "--json", "--bogus"],
])
def test_an_unknown_option_is_told_with_the_commands_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        commands.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err.startswith(f"usage: provctl {argv[0]} "), err
    assert err.endswith(f"provctl {argv[0]}: error: unrecognized arguments: --bogus\n")


@pytest.mark.parametrize("command, text", [
    ("catalog", "resource"),
    ("create", "--wait"),
    ("show", "request"),
    ("list", "--state"),
    ("log", "TOOK"),
    ("cancel", "cannot be cancelled"),
    ("explain", "Dry run"),
])
def test_every_command_has_help_with_the_global_options(command, text, capsys):
    with pytest.raises(SystemExit) as exc:
        commands.main([command, "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert text in out
    assert "--socket PATH" in out and "--json" in out


def test_exit_code_table_agrees_with_the_error_hierarchy():
    def all_classes(cls: type) -> list[type]:
        return [cls] + [c for sub in cls.__subclasses__() for c in all_classes(sub)]

    for cls in all_classes(ProvisiondError):
        assert client.exit_code_for_status(cls.http_status) == cls.exit_code, cls.__name__
    assert client.exit_code_for_status(418) == 1


# --------------------------------------------------------------------------- unreachable


def provctl_command() -> list[str]:
    script = Path(sys.executable).parent / "provctl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "daemon.cli"]


def test_missing_socket_exits_4_with_one_line(short_dir):
    sock = short_dir / "nowhere" / "provisiond.sock"
    env = {**os.environ, contract.SOCKET_ENV: str(sock)}

    result = subprocess.run([*provctl_command(), "list"], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=30)

    assert result.returncode == 4
    assert result.stdout == ""
    assert result.stderr == (f"provctl: cannot reach provisiond at {sock}: No such file or "
                             f"directory (is the daemon running? see --socket)\n")


def test_provctl_runs_as_its_script_and_as_python_m_daemon_cli(short_dir):
    import importlib
    import tomllib

    entry = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["provctl"]
    module, _, function = entry.partition(":")
    assert callable(getattr(importlib.import_module(module), function))
    env = {**os.environ, contract.SOCKET_ENV: str(short_dir / "nowhere.sock")}
    for command in ([str(Path(sys.executable).parent / "provctl")],
                    [sys.executable, "-m", "daemon.cli"]):
        if not Path(command[0]).exists():
            continue
        result = subprocess.run([*command, "catalog"], capture_output=True, text=True,
                                env=env, cwd=REPO, timeout=30)
        assert (result.returncode, result.stdout) == (4, ""), command
        assert result.stderr.startswith("provctl: cannot reach provisiond at "), command


@pytest.mark.parametrize("closed", [1, 2])
def test_a_closed_stdout_or_stderr_changes_no_exit_code(short_dir, closed):
    sock = short_dir / "nowhere.sock"
    for words in (["start", "ID", "--wait"], ["list"]):  # the short cut and argparse's path
        result = subprocess.run([*provctl_command(), "--socket", str(sock), *words],
                                capture_output=True, text=True, cwd=REPO, timeout=30,
                                preexec_fn=lambda: os.close(closed))
        assert result.returncode == 4, (words, result.stderr)
        assert "Traceback" not in result.stdout + result.stderr


def test_output_that_cannot_be_written_is_said_once(short_dir):
    with open("/dev/full", "w") as full:
        result = subprocess.run([*provctl_command(), "completion", "zsh"], stdout=full,
                                stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=30)

    assert result.returncode == 1
    assert result.stderr == "provctl: cannot write the output: No space left on device\n"


def test_refused_connection_exits_4(short_dir):
    sock = short_dir / "dead.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock))  # the file exists, nobody listens: a daemon that died
    s.close()

    result = subprocess.run([*provctl_command(), "--socket", str(sock), "catalog"],
                            capture_output=True, text=True, cwd=REPO, timeout=30)

    assert result.returncode == 4
    assert result.stderr.count("\n") == 1
    assert f"cannot reach provisiond at {sock}: Connection refused" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_daemon_that_does_not_answer_times_out(short_dir):
    sock = short_dir / "mute.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock))
    s.listen(1)  # accepts into the backlog, never answers
    try:
        with pytest.raises(client.Unreachable) as exc:
            client.Client(sock, timeout=0.2).health()
    finally:
        s.close()
    assert exc.value.exit_code == 4
    assert exc.value.message.startswith(f"cannot reach provisiond at {sock}: no answer "
                                        "within 0.2s")


# --------------------------------------------------------------------------- rendering


def test_table_columns_are_aligned_and_numbers_right_aligned():
    text = render.render_table(["NAME", "CPUS", "NOTE"],
                            [["small", 2, "x"], ["enormous", 16, None]], right={1})
    assert text.splitlines() == [
        "NAME      CPUS  NOTE",
        "small        2  x",
        "enormous    16  -",
    ]


CATALOG = {
    "user": "alice",
    "templates": [{"name": "ipxe", "kind": "iso", "description": "iPXE boot image",
                   "accepts": []},
                  {"name": "debian", "kind": "appliance", "description": "cloud image",
                   "accepts": ["ssh_keys", "user_data", "network_config"]}],
    "sizes": [
        {"name": "small", "cpus": 2, "memory": 262144, "storage_size_in_gb": 15,
         "network": None},
        {"name": "large", "cpus": 8, "memory": 8388608, "storage_size_in_gb": 100,
         "network": "default"},
    ],
    "resource_pools": [
        {"name": "rp", "description": "team pool", "hardware_pool": "hw",
         "quota": {"vms": 10, "memory": 16777216, "storage_gb": 500}},
        {"name": "lab", "description": "", "hardware_pool": "hw", "quota": {}},
    ],
}


def test_catalog_shows_three_tables_with_memory_in_mib():
    text = render.render_catalog(CATALOG)
    lines = text.splitlines()

    assert lines[0] == "Catalog for user alice"
    assert lines[2].split() == ["TEMPLATE", "KIND", "CREATE", "MAY", "ADD", "DESCRIPTION"]
    assert lines[3].split() == ["ipxe", "iso", "-", "iPXE", "boot", "image"]
    assert lines[4].split()[:5] == ["debian", "appliance", "--ssh-key", "--user-data",
                                    "--network-config"]
    header = next(line for line in lines if line.startswith("SIZE"))
    assert header.split() == ["SIZE", "CPUS", "MEMORY", "KiB", "MEMORY", "MiB", "STORAGE",
                              "GiB", "NETWORK"]
    assert next(line for line in lines if line.startswith("small")).split() == \
        ["small", "2", "262144", "256", "15", "-"]
    assert next(line for line in lines if line.startswith("large")).split() == \
        ["large", "8", "8388608", "8192", "100", "default"]
    rp = next(line for line in lines if line.startswith("rp "))
    assert "vms=10 memory=16384MiB storage=500GiB" in rp and "team pool" in rp
    assert "unlimited" in next(line for line in lines if line.startswith("lab "))


def test_list_shows_full_ids_and_aligned_columns():
    second = {**FAILED_REQUEST, "id": "ab" * 16, "name": "db-primary"}
    gone = {**REQUEST, "id": "cd" * 16, "state": "done", "vm": {"state": "deleted"}}
    lines = render.render_list([REQUEST, second, gone]).splitlines()

    assert lines[0].split() == ["ID", "NAME", "STATE", "VM", "TEMPLATE", "SIZE", "POOL",
                                "CREATED"]
    assert lines[1].split() == [RID, "web1", "requested", "-", "ipxe", "small", "rp",
                                "2026-11-24", "01:02:03Z"]
    assert lines[2].startswith("ab" * 16 + "  db-primary  failed")
    assert lines[3].split()[2:4] == ["done", "deleted"]  # done, but its VM is gone
    assert {line.index("STATE") if i == 0 else line.index(s)
            for i, (line, s) in enumerate(zip(lines, ["", "requested", "failed"]))} \
        == {lines[0].index("STATE")}
    assert render.render_list([]) == "No requests."


def test_show_is_key_value_lines():
    lines = render.render_request(DONE_REQUEST).splitlines()

    assert lines[0] == f"id:            {RID}"
    assert "state:         done" in lines
    assert "reason:        -" in lines
    assert "memory:        262144 KiB (256 MiB)" in lines
    assert "storage:       15 GiB" in lines
    assert ("volume:        pool-dir/free-15g.qcow2 (/var/lib/pools/dir/free-15g.qcow2), "
            "reused") in lines
    assert "domain:        web1 (0b9e5c3a-1111-2222-3333-444455556666)" in lines
    assert "reason:        no storage: pool-dir: 3 GiB free, 15 GiB needed" in \
        render.render_request(FAILED_REQUEST).splitlines()


def test_log_shows_one_line_per_entry_and_the_time_spent_in_each_state():
    lines = render.render_log(DONE_LOG).splitlines()

    assert lines[0].split() == ["TIME", "KIND", "STATE", "TRIGGER", "TOOK", "DETAIL"]
    rows = lines[1:7]
    assert rows[0].split() == ["2026-11-24T01:02:03.456Z", "transition", "->", "requested",
                               "submit", "-", "-"]
    assert rows[1].split() == ["2026-11-24T01:02:03.468Z", "transition", "requested", "->",
                               "authorized", "authorize", "+0.012s", "quota", "holds"]
    assert "storage-searching -> defining" in rows[3] and "+0.030s" in rows[3]
    assert rows[3].rstrip().endswith("reusing pool-dir/free-15g.qcow2")
    # An event happens within one state; it takes no time of its own.
    assert rows[4].split()[:4] == ["2026-11-24T01:02:03.600Z", "event", "defining",
                                   "libvirt:DEFINED"]
    assert "+0.112s" in rows[5]  # defining lasted from 03.500 to 03.612
    # The arrows line up.
    assert len({row.index("->") for row in rows if "transition" in row}) == 1
    assert lines[-1] == "requested -> done in +0.156s"


def test_duration_format():
    assert render.format_duration(0.012) == "+0.012s"
    assert render.format_duration(12.3456) == "+12.346s"
    assert render.format_duration(185) == "+3m05.000s"


def test_explain_shows_the_decision_then_every_candidate():
    result = {"action": "create", "pool": "pool-dir", "volume": None,
              "reason": "no free volume of 15 GiB; pool-dir has room",
              "candidates": [
                  {"stage": "reuse", "pool": "pool-dir", "volume": "free-10g.qcow2",
                   "verdict": "refused", "reason": "10 GiB, need 15 GiB"},
                  {"stage": "create", "pool": "pool-iscsi", "volume": None,
                   "verdict": "refused", "reason": "iscsi pools cannot create volumes"},
                  {"stage": "create", "pool": "pool-dir", "volume": None, "verdict": "ok",
                   "reason": "40 GiB free"}]}
    lines = render.render_explain(result).splitlines()

    assert lines[0] == "create: no free volume of 15 GiB; pool-dir has room"
    assert lines[2].split() == ["STAGE", "POOL", "VOLUME", "VERDICT", "REASON"]
    assert lines[3].split()[:4] == ["reuse", "pool-dir", "free-10g.qcow2", "refused"]
    assert lines[5].split() == ["create", "pool-dir", "-", "ok", "40", "GiB", "free"]
    assert render.render_explain({"action": "none", "pool": None, "volume": None,
                               "reason": "no pool has room", "candidates": []}) \
        .startswith("none: no pool has room\n\nNo candidates.")
    assert render.render_explain({"action": "reuse", "pool": "pool-dir", "volume": "v1",
                               "reason": "", "candidates": []}) \
        .startswith("reuse: free volume pool-dir/v1")


# --------------------------------------------------------------------------- fake daemon


def test_create_wait_prints_each_state_and_exits_0_on_done(fake, capsys):
    fake.routes[("POST", "/v1/requests")] = (202, REQUEST)
    fake.routes[("GET", f"/v1/requests/{RID}/log")] = fake.growing_log(DONE_LOG)
    fake.routes[("GET", f"/v1/requests/{RID}")] = (200, DONE_REQUEST)

    code, out, err = run(capsys, "create", "--template", "ipxe", "--size", "small",
                         "--pool", "rp", "--name", "web1", "--idempotency-key", "k-1",
                         "--wait")

    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"request {RID} (web1) accepted: ipxe/small in rp",
        "  requested",
        "  authorized         (quota holds)",
        "  storage-searching",
        "  defining           (reusing pool-dir/free-15g.qcow2)",
        "  done",
        "done: web1 defined on testhost (domain 0b9e5c3a-1111-2222-3333-444455556666), "
        "volume pool-dir/free-15g.qcow2",
    ]
    method, path, headers, body = fake.calls[0]
    assert (method, path) == ("POST", "/v1/requests")
    assert body == {"template": "ipxe", "size": "small", "resource_pool": "rp", "name": "web1"}
    assert headers["Idempotency-Key"] == "k-1"
    assert headers["Content-Type"] == "application/json"
    assert fake.paths().count(f"/v1/requests/{RID}/log") == len(DONE_LOG)  # it polled
    # Between two reads it waits on the daemon, which answers at once when the request ends.
    assert f"/v1/requests/{RID}?wait={commands.POLL_INTERVAL:g}" in fake.paths()


def test_create_wait_exits_1_on_failed_with_the_reason_on_stderr(fake, capsys):
    fake.routes[("POST", "/v1/requests")] = (202, REQUEST)
    fake.routes[("GET", f"/v1/requests/{RID}/log")] = fake.growing_log(FAILED_LOG, 2)
    fake.routes[("GET", f"/v1/requests/{RID}")] = (200, FAILED_REQUEST)

    code, out, err = run(capsys, "create", "-t", "ipxe", "-s", "small", "--wait")

    assert code == 1
    assert out.splitlines()[1:] == [
        "  requested",
        "  authorized",
        "  storage-searching",
        "  failed             (no storage: pool-dir: 3 GiB free, 15 GiB needed)",
    ]
    assert err == (f"provctl: request {RID} failed: no storage: pool-dir: 3 GiB free, "
                   "15 GiB needed\n")
    assert fake.calls[0][3] == {"template": "ipxe", "size": "small"}
    assert "Idempotency-Key" not in fake.calls[0][2]


def test_create_wait_json_prints_only_the_final_request(fake, capsys):
    fake.routes[("POST", "/v1/requests")] = (202, REQUEST)
    fake.routes[("GET", f"/v1/requests/{RID}/log")] = fake.growing_log(DONE_LOG, 3)
    fake.routes[("GET", f"/v1/requests/{RID}")] = (200, DONE_REQUEST)

    code, out, err = run(capsys, "--json", "create", "-t", "ipxe", "-s", "small", "--wait")

    assert (code, err) == (0, "")
    assert json.loads(out) == DONE_REQUEST


def test_create_without_wait(fake, capsys):
    fake.routes[("POST", "/v1/requests")] = (202, REQUEST)

    code, out, _ = run(capsys, "create", "-t", "ipxe", "-s", "small", "--json")
    assert code == 0
    assert json.loads(out)["id"] == RID and json.loads(out)["state"] == "requested"

    fake.routes[("POST", "/v1/requests")] = (200, DONE_REQUEST)  # idempotent replay
    code, out, _ = run(capsys, "create", "-t", "ipxe", "-s", "small",
                       "--idempotency-key", "k-1")
    assert code == 0
    assert out.startswith("An earlier request had this idempotency key")
    assert f"id:            {RID}" in out and "state:         done" in out


@pytest.mark.parametrize("argv, route, answer, code, message", [
    (["catalog"], ("GET", "/v1/catalog"),
     error(403, "forbidden", "alice holds CLOUD_CREATE on no resource pool"), 3,
     "provctl: alice holds CLOUD_CREATE on no resource pool\n"),
    (["show", "f" * 32], ("GET", f"/v1/requests/{'f' * 32}?addresses=true"),
     error(404, "not_found", f"no such request '{'f' * 32}'"), 5,
     f"provctl: no such request '{'f' * 32}'\n"),
    (["create", "-t", "nope", "-s", "small"], ("POST", "/v1/requests"),
     error(400, "invalid", "unknown template 'nope'", "template"), 2,
     "provctl: unknown template 'nope' (field: template)\n"),
    (["cancel", RID], ("POST", f"/v1/requests/{RID}/cancel"),
     error(409, "wrong_state", "request is done; only a request in progress can be "
                               "cancelled"), 1,
     "provctl: request is done; only a request in progress can be cancelled\n"),
    (["create", "-t", "ipxe", "-s", "small"], ("POST", "/v1/requests"),
     error(409, "quota_exceeded", "quota of rp: vms 10/10"), 1,
     "provctl: quota of rp: vms 10/10\n"),
    (["explain", "-t", "ipxe", "-s", "small"], ("POST", "/v1/placement/explain"),
     (502, b"<html>Bad Gateway</html>"), 1,
     "provctl: HTTP 502 Bad Gateway: <html>Bad Gateway</html>\n"),
])
def test_api_errors_map_to_exit_codes_with_one_line(fake, capsys, argv, route, answer,
                                                    code, message):
    fake.routes[route] = answer

    got, out, err = run(capsys, *argv)

    assert (got, out, err) == (code, "", message)


def test_list_sends_each_state_and_prints_the_table_or_raw_json(fake, capsys):
    fake.routes[("GET", "/v1/requests?state=failed&state=done")] = \
        (200, {"requests": [FAILED_REQUEST, DONE_REQUEST]})

    code, out, _ = run(capsys, "list", "--state", "failed", "--state", "done")
    assert code == 0
    assert [line.split()[2] for line in out.splitlines()[1:]] == ["failed", "done"]

    code, out, _ = run(capsys, "list", "--state", "failed", "--state", "done", "--json")
    assert json.loads(out) == {"requests": [FAILED_REQUEST, DONE_REQUEST], "next": None}


def test_whoami_prints_the_caller_and_the_pools_of_each_privilege(fake, capsys):
    me = {"user": "alice", "groups": ["staff"],
          "privileges": {"CLOUD_CREATE": ["rp", "lab"], "CLOUD_ADMIN": []}}
    fake.routes[("GET", "/v1/whoami")] = (200, me)

    code, out, _ = run(capsys, "whoami")
    assert code == 0 and out.splitlines() == [
        "user:          alice", "groups:        staff", "CLOUD_CREATE:  rp, lab",
        "CLOUD_ADMIN:   none"]
    code, out, _ = run(capsys, "whoami", "--json")
    assert code == 0 and json.loads(out) == me


def test_list_quiet_with_json_is_a_json_list_of_ids(fake, capsys):
    fake.routes[("GET", "/v1/requests")] = (200, {"requests": [FAILED_REQUEST, DONE_REQUEST]})

    code, out, _ = run(capsys, "list", "-q", "--json")
    assert code == 0 and json.loads(out) == [FAILED_REQUEST["id"], DONE_REQUEST["id"]]


def test_an_age_older_than_the_epoch_is_the_epoch():
    from daemon.cli.parser import parse_time_bound

    # --older-than 99999d: nothing is that old; not a negative time the daemon refuses
    assert parse_time_bound("99999d").epoch(1_800_000_000.0) == 0.0
    assert parse_time_bound("1h").epoch(1_800_000_000.0) == 1_800_000_000.0 - 3600


def test_log_json_prints_the_entries(fake, capsys):
    fake.routes[("GET", f"/v1/requests/{RID}/log")] = (200, {"request_id": RID,
                                                             "log": DONE_LOG})
    code, out, _ = run(capsys, "log", RID, "--json")

    assert code == 0
    entries = json.loads(out)
    assert entries == DONE_LOG
    assert {"from", "to", "at", "detail", "kind", "trigger"} <= entries[1].keys()


def test_what_is_not_an_id_is_a_vm_name_asked_for_as_a_query_value(fake, capsys):
    fake.routes[("GET", "/v1/requests?name=..%2Fcatalog")] = (200, {"requests": [],
                                                                   "next": None})
    code, _out, err = run(capsys, "show", "../catalog")

    assert code == 5
    assert fake.paths() == ["/v1/requests?name=..%2Fcatalog"]  # never in a path
    assert err == ("provctl: no such request '../catalog': neither a request id (32 hex "
                   "digits) nor the name of a VM you see (see: provctl list)\n")


def test_a_vm_name_stands_for_its_request_as_in_virsh(fake, capsys):
    gone = {**DONE_REQUEST, "id": "ab" * 16, "vm": {"state": "deleted", "reason": None}}
    live = {**DONE_REQUEST, "vm": {"state": "running", "reason": None}}
    fake.routes[("GET", "/v1/requests?name=web1")] = (200, {"requests": [gone, live],
                                                            "next": None})
    fake.routes[("GET", f"/v1/requests/{RID}?addresses=true")] = (200, live)

    code, out, _err = run(capsys, "show", "web1")  # the one not deleted
    assert code == 0 and f"id:            {RID}" in out

    other = {**live, "id": "cd" * 16, "owner": "bob"}  # an admin sees bob's web1 too
    fake.routes[("GET", "/v1/requests?name=web1")] = (200, {"requests": [gone, live, other],
                                                            "next": None})
    code, _out, err = run(capsys, "show", "web1")
    assert code == 2
    assert err == (f"provctl: 2 requests are named 'web1': {RID} (alice, done/running), "
                   f"{'cd' * 16} (bob, done/running); give the id\n")


def test_interrupt_exits_130_without_a_traceback(fake, capsys, monkeypatch):
    fake.routes[("POST", "/v1/requests")] = (202, REQUEST)

    def interrupted(*_args: Any, **_kwargs: Any) -> Any:
        raise KeyboardInterrupt
    monkeypatch.setattr(client.Client, "get", interrupted)  # Ctrl-C while it waits
    monkeypatch.setattr(client.Client, "log", interrupted)

    code, _out, err = run(capsys, "create", "-t", "ipxe", "-s", "small", "--wait")

    assert code == 130
    assert err == (f"provctl: interrupted; request {RID} goes on "
                   f"(see: provctl show {RID})\n")


def test_socket_falls_back_to_the_system_service(tmp_path, monkeypatch) -> None:
    system = tmp_path / "system.sock"
    monkeypatch.setattr(client, "SYSTEM_SOCKET", system)
    monkeypatch.setattr(client, "default_socket_path", lambda: tmp_path / "mine.sock")
    assert client.find_socket() == tmp_path / "mine.sock"  # neither exists: the user's own
    system.touch()
    assert client.find_socket() == system  # only the system service's exists
    (tmp_path / "mine.sock").touch()
    assert client.find_socket() == tmp_path / "mine.sock"  # the user's own daemon first


def test_show_gives_the_vm_state_and_its_addresses() -> None:
    base = {"id": RID, "name": "web1", "state": "done"}
    running = {**base, "vm": {"state": "running", "reason": None, "addresses": [
        {"interface": "vnet0", "mac": "52:54:00:aa:bb:cc", "address": "192.168.122.43",
         "prefix": 24, "source": "lease"}]}}
    lines = render.render_request(running).splitlines()
    assert "vm:            running, addresses 192.168.122.43/24 (vnet0, lease)" in lines
    unknown = {**base, "vm": {"state": "running", "reason": None, "addresses": None}}
    assert "addresses unknown (its host could not be asked)" in render.render_request(unknown)
    failed = {**base, "vm": {"state": "stopped", "reason": "libvirt said no"}}
    assert "stopped (last operation: libvirt said no)" in render.render_request(failed)


def test_explain_shows_each_host_when_there_are_several():
    text = render.render_explain({
        "action": "create", "pool": "pool-dir", "volume": None,
        "reason": "creating a 1.0 GiB volume in pool pool-dir", "host": "h1",
        "hosts": [{"host": "h1", "verdict": "ok", "reason": "chosen (spread): 4.0 GiB free"},
                  {"host": "h0", "verdict": "refused", "reason": "unreachable"}],
        "candidates": [{"stage": "create", "pool": "pool-dir", "volume": None,
                        "verdict": "ok", "reason": "has room"}]})
    lines = text.splitlines()
    assert lines[0] == "create: creating a 1.0 GiB volume in pool pool-dir (on host h1)"
    assert lines[2].split() == ["HOST", "VERDICT", "REASON"]
    assert lines[4].split()[:3] == ["h0", "refused", "unreachable"]


# --------------------------------------------------------------------------- VM operations

VM_REQUEST = {**DONE_REQUEST, "vm": {"state": "stopped", "reason": None}}


def with_vm(state: str, reason: str | None = None) -> dict[str, Any]:
    return {**VM_REQUEST, "vm": {"state": state, "reason": reason}}


def test_an_operation_over_within_its_call_takes_one_call_and_says_where_the_vm_is(
        fake, capsys):
    fake.routes[("POST", f"/v1/requests/{RID}/delete")] = (200, with_vm("deleted"))

    code, out, err = run(capsys, "delete", RID, "--wait")

    assert (code, out, err) == (0, "deleted: VM web1\n", "")
    assert fake.paths() == [f"/v1/requests/{RID}/delete?wait=2"]


def test_a_longer_operation_is_announced_then_followed(fake, capsys):
    fake.routes[("POST", f"/v1/requests/{RID}/reboot")] = (202, with_vm("rebooting"))
    fake.routes[("GET", f"/v1/requests/{RID}")] = (200, with_vm("running"))

    code, out, err = run(capsys, "reboot", RID, "--wait")

    assert (code, out, err) == (0, "reboot: VM web1 (rebooting) ...\nrunning: VM web1\n", "")
    assert fake.paths() == [f"/v1/requests/{RID}/reboot?wait=2",
                            f"/v1/requests/{RID}?wait=30"]


def test_an_acpi_shutdown_is_announced_at_once(fake, capsys):
    fake.routes[("POST", f"/v1/requests/{RID}/stop")] = (202, with_vm("stopping"))
    fake.routes[("GET", f"/v1/requests/{RID}")] = (200, with_vm("stopped"))

    code, out, err = run(capsys, "stop", RID, "--wait")

    assert (code, out, err) == (0, "stop: VM web1 (stopping) ...\nstopped: VM web1\n", "")
    assert fake.paths() == [f"/v1/requests/{RID}/stop", f"/v1/requests/{RID}?wait=30"]


def test_an_operation_that_ends_elsewhere_exits_1_with_the_reason(fake, capsys):
    fake.routes[("POST", f"/v1/requests/{RID}/start")] = (
        200, with_vm("stopped", "libvirt: internal error: qemu unexpectedly closed\nthe monitor"))

    code, out, err = run(capsys, "start", RID, "--wait")

    assert (code, out) == (1, "")
    assert err == ("provctl: VM web1 is stopped: libvirt: internal error: qemu unexpectedly "
                   "closed; the monitor\n")


def test_an_operation_without_wait_prints_what_was_accepted(fake, capsys):
    fake.routes[("POST", f"/v1/requests/{RID}/stop")] = (202, with_vm("powering-off"))

    code, out, _ = run(capsys, "stop", "--force", RID)
    assert (code, out) == (0, f"stop --force accepted for VM web1 (request {RID}; VM now "
                              "powering-off)\n")
    assert fake.calls[-1][1:4:2] == (f"/v1/requests/{RID}/stop", {"force": True})

    code, out, _ = run(capsys, "stop", "-f", RID, "--json")
    assert code == 0 and json.loads(out) == with_vm("powering-off")
    assert out == json.dumps(with_vm("powering-off"), indent=2) + "\n"


def test_deleting_a_deleted_vm_says_so_rather_than_accepted(fake, capsys):
    fake.routes[("POST", f"/v1/requests/{RID}/delete")] = (202, with_vm("deleted"))

    code, out, _ = run(capsys, "delete", RID)
    assert (code, out) == (0, f"VM web1 was already deleted (request {RID})\n")


@pytest.mark.parametrize("status, code", [(409, 1), (404, 5), (403, 3), (503, 1)])
def test_a_refused_operation_exits_with_the_statuses_code(fake, capsys, status, code):
    fake.routes[("POST", f"/v1/requests/{RID}/start")] = error(
        status, "some_code", "VM web1 is deleted: it cannot be started now", "state")

    got, out, err = run(capsys, "start", RID, "--wait")

    assert (got, out) == (code, "")
    assert err == "provctl: VM web1 is deleted: it cannot be started now (field: state)\n"


def test_interrupting_an_operations_wait_says_it_goes_on(fake, capsys, monkeypatch):
    def interrupted(*_args: Any, **_kwargs: Any) -> Any:
        raise KeyboardInterrupt
    monkeypatch.setattr(client.Client, "operate", interrupted)

    code, _out, err = run(capsys, "delete", RID, "--wait")

    assert code == 130
    assert err == (f"provctl: interrupted; the operation may go on "
                   f"(see: provctl show {RID})\n")
