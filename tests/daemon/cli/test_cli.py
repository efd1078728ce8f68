"""provctl as a user runs it: a subprocess against a real provisiond process."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from harness.daemon import Daemon

PROVCTL = str(Path(sys.executable).parent / "provctl")
PROVISIOND = str(Path(sys.executable).parent / "provisiond")


def provctl(*args: str, socket: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = [PROVCTL, *args] + (["--socket", socket] if socket else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_create_wait_walks_every_state_and_log_shows_times(make_daemon) -> None:
    # No free 7 GiB volume on the host: the walk goes through storage-creating.
    daemon: Daemon = make_daemon(sizes={"seven": {"cpus": 1, "memory": 65536,
                                                  "storage_size_in_gb": 7}})
    created = provctl("create", "--template", "ipxe", "--size", "seven", "--pool", "rp",
                      "--wait", socket=daemon.socket)
    assert created.returncode == 0, created.stderr
    lines = created.stdout.splitlines()
    reached = [line.split()[0] for line in lines if line.startswith("  ")]
    assert reached == ["requested", "authorized", "storage-searching", "storage-creating",
                       "defining", "done"]
    assert lines[-1].startswith("done: ")

    listed = json.loads(provctl("list", "--json", socket=daemon.socket).stdout)["requests"]
    rid = listed[0]["id"]
    log = provctl("log", rid, "--json", socket=daemon.socket)
    entries = [e for e in json.loads(log.stdout) if e["kind"] == "transition"]
    assert [e["to"] for e in entries][-1] == "done"
    assert all(e["at"] and "from" in e and "detail" in e for e in entries)
    human = provctl("log", rid, socket=daemon.socket).stdout
    assert re.search(r"storage-creating\s+-> defining", human) and "+0." in human


def test_create_json_prints_the_request(daemon: Daemon) -> None:
    out = provctl("create", "--json", "--template", "ipxe", "--size", "small", "--pool", "rp",
                  "--name", "db-7", socket=daemon.socket)
    assert out.returncode == 0, out.stderr
    request = json.loads(out.stdout)
    assert request["name"] == "db-7" and request["state"] == "requested" and request["id"]
    shown = json.loads(provctl("show", request["id"], "--json", socket=daemon.socket).stdout)
    assert shown["id"] == request["id"]


def test_failure_and_error_exit_codes(make_daemon) -> None:
    d: Daemon = make_daemon("host_scarce.xml", storage_pools=["pool-iscsi"],
                            sizes={"big": {"cpus": 1, "memory": 1024,
                                           "storage_size_in_gb": 500}})
    failed = provctl("create", "--template", "ipxe", "--size", "big", "--pool", "rp",
                     "--wait", socket=d.socket)
    assert failed.returncode == 1
    assert "no free volume of the right size and no pool with room" in failed.stderr

    invalid = provctl("create", "--template", "nope", "--size", "big", "--pool", "rp",
                      socket=d.socket)
    assert invalid.returncode == 2
    assert invalid.stderr.strip().startswith("provctl: unknown template 'nope'")
    assert len(invalid.stderr.strip().splitlines()) == 1

    assert provctl("show", "0" * 32, socket=d.socket).returncode == 5
    rid = json.loads(provctl("list", "--json", socket=d.socket).stdout)["requests"][0]["id"]
    again = provctl("cancel", rid, socket=d.socket)
    assert again.returncode == 1 and "already failed" in again.stderr


def test_permission_denied_exits_3(make_daemon) -> None:
    d: Daemon = make_daemon(resource_pools={"rp": {"hardware_pool": "hw", "grants": {
        "CLOUD_CREATE": {"users": ["someone-else"]}}}})
    denied = provctl("catalog", socket=d.socket)
    assert denied.returncode == 3
    assert "holds CLOUD_CREATE on no resource pool" in denied.stderr
    create = provctl("create", "--template", "ipxe", "--size", "small", "--pool", "rp",
                     socket=d.socket)
    assert create.returncode == 3
    assert "does not hold CLOUD_CREATE on resource pool rp" in create.stderr


def test_unreachable_daemon_exits_4(tmp_path: Path) -> None:
    out = provctl("list", socket=str(tmp_path / "none.sock"))
    assert out.returncode == 4
    assert out.stderr.startswith("provctl: cannot reach provisiond at ")


def test_runs_out_of_the_box_with_no_flags(tmp_path: Path) -> None:
    """`provisiond` with no arguments serves the embedded default, and `provctl` with no
    flags finds it: the README's walk-through."""
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path / "run"),
           "XDG_STATE_HOME": str(tmp_path / "state")}
    (tmp_path / "run").mkdir(mode=0o700)
    env.pop("PROVISIOND_SOCKET", None)
    proc = subprocess.Popen([PROVISIOND], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "run" / "provisiond" / "provisiond.sock").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
            time.sleep(0.05)
        catalog = provctl("catalog", "--json", env=env)
        assert catalog.returncode == 0, catalog.stderr
        template = json.loads(catalog.stdout)["templates"][0]["name"]
        created = provctl("create", "--template", template, "--size", "small", "--wait",
                          env=env)
        assert created.returncode == 0, created.stderr
        assert created.stdout.splitlines()[-1].startswith("done: ")
        assert (tmp_path / "state" / "provisiond" / "provisiond.db").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_list_follows_every_page(daemon: Daemon, monkeypatch) -> None:
    ids = [json.loads(provctl("create", "--json", "--template", "ipxe", "--size", "small",
                              "--pool", "rp", socket=daemon.socket).stdout)["id"]
           for _ in range(3)]
    from daemon.cli import client

    monkeypatch.setattr(client.Client, "call", _paged(client.Client.call))
    client = client.Client(daemon.socket)
    assert [r["id"] for r in client.list()["requests"]] == ids


def _paged(call):
    """Client.call, asking for pages of one request so that paging is exercised."""
    def paged(self, method, url, *args, **kwargs):
        path, _, query = url.partition("?")
        if method == "GET" and path == "/v1/requests":
            url = f"{path}?{query}&limit=1" if query else f"{path}?limit=1"
        return call(self, method, url, *args, **kwargs)
    return paged


def test_a_vm_is_started_stopped_and_deleted_with_provctl(make_daemon) -> None:
    daemon: Daemon = make_daemon()
    created = provctl("create", "-t", "ipxe", "-s", "small", "--pool", "rp", "--start",
                      "--wait", socket=daemon.socket)
    assert created.returncode == 0, created.stderr
    assert created.stdout.splitlines()[-1].startswith("running: VM ipxe-")
    rid = re.search(r"request ([0-9a-f]{32})", created.stdout).group(1)

    running = provctl("show", rid, socket=daemon.socket).stdout
    assert re.search(r"^vm: +running$", running, re.M), running  # no NIC: no addresses
    stopped = provctl("stop", rid, "--wait", socket=daemon.socket)
    assert (stopped.returncode, stopped.stdout.splitlines()[-1].split(":")[0]) == \
        (0, "stopped"), stopped.stderr
    assert provctl("stop", rid, socket=daemon.socket).returncode == 1  # already stopped
    shown = provctl("show", rid, socket=daemon.socket).stdout
    assert re.search(r"^vm: +stopped$", shown, re.M), shown
    gone = json.loads(provctl("delete", rid, "--wait", "--json", socket=daemon.socket).stdout)
    assert gone["vm"] == {"state": "deleted", "reason": None}
    refused = provctl("start", rid, socket=daemon.socket)
    assert refused.returncode == 1
    assert refused.stderr.startswith("provctl: VM ipxe-") and "is deleted" in refused.stderr
    log = provctl("log", rid, socket=daemon.socket).stdout
    assert re.search(r"deleting +-> deleted", log) and "libvirt:STARTED" in log
    assert log.splitlines()[-1].startswith("requested -> deleted in ")


def test_create_with_an_ssh_key_file_on_an_appliance(make_daemon, tmp_path: Path) -> None:
    templates = {"debian": {"kind": "appliance",
                            "volume": {"pool": "pool-dir", "name": "debian-12-cloud.qcow2"}},
                 "ipxe": {"kind": "iso", "volume": {"pool": "pool-dir", "name": "ipxe.iso"}}}
    daemon: Daemon = make_daemon("host_appliance.xml", templates=templates)
    key = tmp_path / "id_ed25519.pub"
    key.write_text("# my laptop\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDsDWE4PU+LBMh1vozmklZxs"
                   "KJacuWC2Plkzzr1hND46 alice@laptop\n")
    created = provctl("create", "-t", "debian", "-s", "small", "-p", "rp", "--ssh-key",
                      str(key), "--json", "--wait", socket=daemon.socket)
    assert created.returncode == 0, created.stderr
    log = json.loads(provctl("log", json.loads(created.stdout)["id"], "--json",
                             socket=daemon.socket).stdout)
    assert [e["to"] for e in log if e["kind"] == "transition"][-3:] == [
        "seeding", "defining", "done"]

    refused = provctl("create", "-t", "ipxe", "-s", "small", "-p", "rp", "--ssh-key",
                      str(key), socket=daemon.socket)
    assert refused.returncode == 2 and "takes no cloud-init" in refused.stderr
    missing = provctl("create", "-t", "debian", "-s", "small", "--ssh-key",
                      str(tmp_path / "nope.pub"), socket=daemon.socket)
    assert missing.returncode == 2
    assert "cannot read SSH key file" in missing.stderr and "nope.pub" in missing.stderr
