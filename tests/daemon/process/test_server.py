"""The daemon process: start-up, its socket, shutdown and resume."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

from harness.daemon import Daemon, REPO, wait_for_request_log

LIVE = ("requested", "authorized", "storage-searching", "storage-creating", "defining")


def test_a_stale_socket_is_replaced(make_daemon) -> None:
    d: Daemon = make_daemon(start=False)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(d.socket)  # a socket file nobody listens on: a dead daemon's leftover
    stale.close()
    d.start()
    assert d.call("GET", "/v1/health").status == 200


def test_a_live_socket_is_not_stolen(make_daemon) -> None:
    first: Daemon = make_daemon()
    second = subprocess.run([sys.executable, "-m", "daemon", "--config", str(first.main)],
                            capture_output=True, text=True, timeout=30, cwd=REPO)
    assert second.returncode == 1
    assert f"another provisiond is already serving on {first.socket}" in second.stderr
    assert first.call("GET", "/v1/health").status == 200


def test_sigterm_leaves_no_request_half_written_and_restart_resumes(make_daemon) -> None:
    d: Daemon = make_daemon(sizes={"tiny": {"cpus": 1, "memory": 1024,
                                            "storage_size_in_gb": 1}})
    ids = [d.call("POST", "/v1/requests", {"template": "ipxe", "size": "tiny",
                                            "resource_pool": "rp"}).body["id"]
           for _ in range(40)]
    assert d.stop(signal.SIGTERM) == 0, d.log()
    assert "Traceback" not in d.log()

    db = sqlite3.connect(d.database)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for rid in ids:
        state, = db.execute("SELECT state FROM requests WHERE id = ?", [rid]).fetchone()
        last, = db.execute("SELECT to_state FROM state_log WHERE request_id = ? AND "
                           "kind = 'transition' ORDER BY id DESC LIMIT 1", [rid]).fetchone()
        assert state == last  # the state and its log row were written together
    db.close()

    d.start()  # a fresh test-driver host; every request left in progress continues
    finals = [d.wait_terminal(rid) for rid in ids]
    assert all(f["state"] == "done" for f in finals), [f["reason"] for f in finals]


def test_an_unreachable_host_does_not_stop_the_daemon_and_requests_fail_clearly(
        make_daemon) -> None:
    d: Daemon = make_daemon(start=False, daemon={"host_wait_timeout": 1})
    pools = d.main.parent / "pools.yml"
    pools.write_text(pools.read_text().replace(str(REPO / "tests" / "data" / "host_basic.xml"),
                                               "/nonexistent/host.xml"))
    d.start()  # libvirtd may come up after provisiond (boot order): not fatal

    assert d.call("GET", "/v1/health").body["hosts"] == {"testhost": "disconnected"}
    assert "host testhost unreachable at start: cannot connect to test:///nonexistent" in \
        d.log()
    rid = d.call("POST", "/v1/requests", {"template": "ipxe", "size": "small",
                                           "resource_pool": "rp"}).body["id"]
    final = d.wait_terminal(rid, timeout=30)
    assert final["state"] == "failed"
    assert "host unreachable for more than 1 s" in final["reason"]
    notes = [e["trigger"] for e in d.call("GET", f"/v1/requests/{rid}/log").body["log"]]
    assert "host-unreachable" in notes


def test_sigterm_answers_a_client_waiting_on_a_request_at_once(make_daemon, late_host) -> None:
    d: Daemon = make_daemon(str(late_host.path))  # its host never comes: requests wait
    rid = d.call("POST", "/v1/requests", {"template": "ipxe", "size": "small",
                                          "resource_pool": "rp"}).body["id"]
    answers: list = []
    waiter = threading.Thread(target=lambda: answers.append(
        d.call("GET", f"/v1/requests/{rid}?wait=120")))
    waiter.start()
    time.sleep(0.5)  # the client is waiting now
    started = time.monotonic()
    assert d.stop(signal.SIGTERM) == 0, d.log()
    waiter.join(30)
    # Answered with the request as it is, not held for aiohttp's shutdown timeout (10 s).
    assert time.monotonic() - started < 5
    assert answers and answers[0].status == 200
    assert answers[0].body["state"] in LIVE


def test_a_request_waiting_for_its_host_is_cancelled_at_once(make_daemon, late_host) -> None:
    d: Daemon = make_daemon(str(late_host.path), daemon={"host_wait_timeout": 600})
    rid = d.call("POST", "/v1/requests", {"template": "ipxe", "size": "small",
                                          "resource_pool": "rp"}).body["id"]
    wait_for_request_log(d, rid, "host-unreachable")
    assert d.call("POST", f"/v1/requests/{rid}/cancel").status == 202
    final = d.wait_terminal(rid, timeout=10)  # not after host_wait_timeout (600 s)
    assert final["state"] == "failed" and final["reason"].startswith("cancelled by "), final
