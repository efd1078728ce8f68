"""The API socket under connection pressure, on a real daemon process: the cap per uid,
1,100 idle connections under a 1,024-descriptor limit, the descriptor limit at start-up
(issue 12, point 4)."""

from __future__ import annotations

import contextlib
import http.client
import socket
import time
from typing import Iterator

from harness.daemon import Daemon, OTHER_USER, UnixHTTPConnection, spawn_daemon, wait_healthy

CAP = 32  # daemon.max_connections_per_user's default (the harness lifts it: set it back)
LIMITS = {"max_connections_per_user": CAP}


def served(d: Daemon) -> UnixHTTPConnection:
    """A kept-alive connection that has been answered once (so it was admitted)."""
    conn = UnixHTTPConnection(d.socket, timeout=10)
    conn.request("GET", "/v1/health")
    response = conn.getresponse()
    response.read()
    assert response.status == 200
    return conn


def try_served(d: Daemon) -> UnixHTTPConnection | None:
    """``served``, or None when the daemon closes the connection instead."""
    try:
        return served(d)
    except (http.client.RemoteDisconnected, ConnectionError):
        return None


def closed_by_daemon(sock: socket.socket) -> bool:
    """True when the daemon closes ``sock`` without being sent anything (10 s at most)."""
    sock.settimeout(10)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@contextlib.contextmanager
def idle_connections(path: str, n: int) -> Iterator[list[socket.socket]]:
    """``n`` connections to ``path`` that send nothing; closed on exit. A full listen
    backlog is waited out (20 s at most), as a blocking connect would."""
    socks: list[socket.socket] = []
    deadline = time.monotonic() + 20
    try:
        for _ in range(n):
            sock = socket.socket(socket.AF_UNIX)
            socks.append(sock)
            sock.settimeout(10)
            while True:
                try:
                    sock.connect(path)
                    break
                except BlockingIOError:  # EAGAIN: the backlog is full
                    assert time.monotonic() < deadline, f"{len(socks) - 1} connected, then none"
                    time.sleep(0.01)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def test_a_uid_past_its_cap_is_closed_at_once_and_other_uids_are_served(make_daemon) -> None:
    d: Daemon = make_daemon(daemon=LIMITS)
    held = [served(d) for _ in range(CAP)]
    try:
        for _ in range(5):
            with idle_connections(d.socket, 1) as (extra,):
                assert closed_by_daemon(extra)  # before it sent a single byte
        assert try_served(d) is None
        for conn in held:  # the first 32 stay open and served
            conn.request("GET", "/v1/health")
            response = conn.getresponse()
            response.read()
            assert response.status == 200
        assert d.call("GET", "/v1/requests", as_user=OTHER_USER).status == 200

        held.pop().close()  # one place free again: the next connection is admitted
        deadline = time.monotonic() + 10
        while (again := try_served(d)) is None:
            assert time.monotonic() < deadline, "a freed place was never given back"
            time.sleep(0.05)
        held.append(again)
    finally:
        for conn in held:
            conn.close()
    warnings = [line for line in d.log().splitlines() if "connections: closing new ones" in line]
    assert len(warnings) == 1, warnings  # one per uid per minute, not one per connection
    assert f"holds {CAP} connections" in warnings[0]
    assert "more closed since" not in warnings[0]


def test_1100_idle_connections_under_1024_descriptors_leave_other_users_served(
        make_daemon) -> None:
    d: Daemon = make_daemon(start=False, daemon=LIMITS)
    spawn_daemon(d, "--log-format", "text", prefix=("prlimit", "--nofile=1024:1024"))
    wait_healthy(d)
    # Before the cap, the daemon ran out of descriptors near 1,000 and accepted nothing
    # more: these connects then hung, and so did every other user's.
    with idle_connections(d.socket, 1100):
        reply = d.call("GET", "/v1/requests", as_user=OTHER_USER)
        assert reply.status == 200, reply
    assert d.call("GET", "/v1/health").status == 200
    log = d.log()
    assert "out of system resource" not in log
    assert "cannot accept connections" not in log
    assert len(log.splitlines()) < 50, log[-3000:]


def test_a_low_descriptor_limit_is_raised_to_the_hard_limit(make_daemon) -> None:
    d: Daemon = make_daemon(start=False)
    spawn_daemon(d, "--log-format", "text", prefix=("prlimit", "--nofile=1024:8192"))
    wait_healthy(d)
    assert "descriptor limit raised from 1024 to 8192 (the hard limit)" in d.log()
    assert "descriptor limit is low" not in d.log()


def test_a_descriptor_limit_that_stays_low_is_warned_of(make_daemon) -> None:
    d: Daemon = make_daemon(start=False)
    spawn_daemon(d, "--log-format", "text", prefix=("prlimit", "--nofile=1024:1024"))
    wait_healthy(d)
    assert "the descriptor limit is low: 1024 (hard 1024)" in d.log()
    assert "LimitNOFILE=" in d.log()
