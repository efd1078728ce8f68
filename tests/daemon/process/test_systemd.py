"""systemd integration: the notify protocol, socket activation, and the unit files."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from daemon.process import systemd
from daemon.store import Store
from harness.daemon import Daemon, ME, REPO, spawn_daemon, wait_for_log, wait_healthy

UNITS = REPO / "systemd"
SERVICE = UNITS / "provisiond.service"
SOCKET = UNITS / "provisiond.socket"
MAX_EXPOSURE = 1.0  # systemd-analyze security's figure for provisiond.service: 0.4 today


def systemd_binary(name: str) -> str:
    """Path of one of systemd's tools (Debian package ``systemd``, see scripts/setup)."""
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/lib/systemd") / name, Path("/usr/lib/systemd") / name)
         if p.exists()), None)
    if found is None:
        pytest.skip(f"{name} not found (Debian package systemd; scripts/setup installs it)")
    return found


class Notifications:
    """A stand-in for systemd's notify socket: collects what the daemon sends."""

    def __init__(self, path: str) -> None:
        self.address = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path if not path.startswith("@") else "\0" + path[1:])
        self.received: list[dict[str, str]] = []

    def next(self, timeout: float = 20) -> dict[str, str]:
        """The next message, as its assignments."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        message = dict(line.split("=", 1) for line in data.split("\n") if line)
        self.received.append(message)
        return message

    def until(self, key: str, timeout: float = 20) -> list[dict[str, str]]:
        """Messages up to and including the first one carrying ``key``."""
        deadline = time.monotonic() + timeout
        seen = []
        while True:
            message = self.next(max(0.01, deadline - time.monotonic()))
            seen.append(message)
            if key in message:
                return seen

    def drain(self, seconds: float) -> list[dict[str, str]]:
        """Every message that arrives within ``seconds``."""
        seen = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                seen.append(self.next(left))
            except TimeoutError:
                break
        return seen

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notifications(daemon_dir: Path) -> Iterator[Notifications]:
    """A notify socket under the test's directory."""
    n = Notifications(str(daemon_dir / "notify.sock"))
    yield n
    n.close()


def env_for(n: Notifications, **extra: str) -> dict[str, str]:
    return {"NOTIFY_SOCKET": n.address, **extra}


# --------------------------------------------------------------------------- helpers, in-process


def test_notify_sends_one_datagram_to_a_path_or_an_abstract_socket(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False  # not under systemd: a no-op

    for address in (str(tmp_path / "n.sock"), f"@provisiond-test-{os.getpid()}"):
        n = Notifications(address)
        try:
            monkeypatch.setenv("NOTIFY_SOCKET", address)
            assert systemd.notify("READY=1", "STATUS=serving") is True
            assert n.next(5) == {"READY": "1", "STATUS": "serving"}
        finally:
            n.close()

    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    assert systemd.notify("READY=1") is False  # logged, never raised


def test_watchdog_interval_is_half_of_watchdog_usec_and_only_for_us(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert systemd.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # another process's watchdog
    assert systemd.watchdog_interval() is None


def test_sockets_passed_to_another_process_are_not_ours(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_PID", str(os.getpid() + 1))
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert systemd.listening_socket() is None
    assert "LISTEN_PID" not in os.environ and "LISTEN_FDS" not in os.environ
    assert systemd.listening_socket() is None  # nothing passed at all


# --------------------------------------------------------------------------- the notify protocol


def test_ready_comes_after_resume_and_the_socket_then_watchdog_and_stopping(
        make_daemon, notifications: Notifications) -> None:
    d: Daemon = make_daemon(start=False)
    store = Store(d.database)  # a request left in progress by an earlier run
    store.migrate()
    left = store.insert_request({
        "id": "0" * 32, "name": "left-over", "owner": ME, "owner_groups": [],
        "template": "ipxe", "size": "small", "resource_pool": "rp", "hardware_pool": "hw",
        "cpus": 2, "memory_kib": 262144, "storage_gb": 15, "network": None,
        "idempotency_key": None})
    store.close()

    spawn_daemon(d, env=env_for(notifications, WATCHDOG_USEC="200000"))
    before_ready = notifications.until("READY")
    assert d.call("GET", "/v1/health").status == 200  # READY=1 means serving, at once
    log = d.log()
    assert f"resuming request {left.id} in state requested" in log
    assert "provisiond serving on" in log
    assert before_ready[-1]["STATUS"].startswith("serving on ")
    assert d.wait_terminal(left.id)["state"] == "done"

    pings = [m for m in notifications.drain(1.0) if m.get("WATCHDOG") == "1"]
    assert len(pings) >= 4, pings  # every 0.1 s (half of WATCHDOG_USEC); slack for load

    assert d.stop(signal.SIGTERM) == 0, d.log()
    stopping = [m for m in notifications.drain(0.5) if "STOPPING" in m]
    assert stopping and stopping[0]["STOPPING"] == "1"
    assert not any("READY" in m for m in notifications.received[len(before_ready):])


def test_watchdog_pid_naming_the_daemon_gets_pings_and_another_gets_none(
        make_daemon, notifications: Notifications) -> None:
    d: Daemon = make_daemon(start=False)
    # The shell's pid is the daemon's after exec: WATCHDOG_PID names the daemon itself.
    spawn_daemon(d, prefix=("sh", "-c", 'export WATCHDOG_PID=$$; exec "$@"', "sh"),
                 env=env_for(notifications, WATCHDOG_USEC="200000"))
    notifications.until("READY")
    assert len([m for m in notifications.drain(1.0) if "WATCHDOG" in m]) >= 4
    assert d.stop() == 0

    other: Daemon = make_daemon(start=False)
    spawn_daemon(other, env=env_for(notifications, WATCHDOG_USEC="200000", WATCHDOG_PID="1"))
    notifications.until("READY")
    assert not [m for m in notifications.drain(1.0) if "WATCHDOG" in m]


def test_sighup_is_framed_by_reloading_and_ready(make_daemon,
                                                 notifications: Notifications) -> None:
    d: Daemon = make_daemon(start=False)
    spawn_daemon(d, env=env_for(notifications))
    notifications.until("READY")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    reloading = notifications.next(10)
    assert reloading["RELOADING"] == "1"
    assert int(reloading["MONOTONIC_USEC"]) > 0
    assert notifications.next(10)["READY"] == "1"
    wait_for_log(d, "configuration reloaded from")


# --------------------------------------------------------------------------- socket activation


def test_socket_activation_serves_on_the_inherited_socket(make_daemon) -> None:
    activate = systemd_binary("systemd-socket-activate")
    d: Daemon = make_daemon(start=False)
    own = Path(d.socket)
    activated = d.directory / "activated.sock"
    spawn_daemon(d, prefix=(activate, "-l", str(activated)))
    deadline = time.monotonic() + 10
    while not activated.exists():  # systemd-socket-activate listens before any daemon runs
        assert time.monotonic() < deadline and d.proc.poll() is None, d.log()
        time.sleep(0.05)
    assert "Execing" not in d.log()  # nothing started yet

    d.socket = str(activated)
    wait_healthy(d)  # the first connection starts provisiond, which answers it
    assert d.call("GET", "/v1/catalog").body["user"] == ME  # peer credentials still work
    log = d.log()
    assert f"provisiond serving on {activated} (socket activation" in log
    assert not own.exists()  # daemon.socket was not bound

    assert d.stop() == 0, d.log()
    assert activated.exists()  # the socket belongs to whoever passed it: never unlinked


def test_a_passed_socket_that_is_not_listening_is_refused(make_daemon) -> None:
    activate = systemd_binary("systemd-socket-activate")
    d: Daemon = make_daemon(start=False)
    activated = d.directory / "activated.sock"
    # --datagram passes a datagram socket: not what provisiond serves HTTP on.
    spawn_daemon(d, prefix=(activate, "--datagram", "-l", str(activated)))
    deadline = time.monotonic() + 10
    while not activated.exists():
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.05)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    client.sendto(b"wake up", str(activated))
    client.close()
    assert d.proc is not None
    assert d.proc.wait(20) == 1
    assert "is not an AF_UNIX stream socket" in d.log()


# --------------------------------------------------------------------------- the unit files


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = systemd_binary("systemd-analyze")
    service = SERVICE.read_text()
    exec_start = re.search(r"^ExecStart=(\S+)", service, re.M)
    assert exec_start and exec_start.group(1) == "/opt/provisiond/bin/provisiond"
    # verify checks that ExecStart's program exists: point it at this checkout's one.
    (tmp_path / SERVICE.name).write_text(service.replace(
        "ExecStart=/opt/provisiond/bin/provisiond", f"ExecStart={REPO}/.venv/bin/provisiond"))
    shutil.copy(SOCKET, tmp_path / SOCKET.name)
    result = subprocess.run([analyze, "verify", str(tmp_path / SERVICE.name),
                             str(tmp_path / SOCKET.name)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stderr.strip() == "", result.stderr


def test_service_exposure_stays_low() -> None:
    analyze = systemd_binary("systemd-analyze")
    result = subprocess.run([analyze, "security", "--offline=true", "--no-pager",
                             str(SERVICE)], capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for provisiond\.service: ([\d.]+)",
                      result.stdout)
    assert found, result.stdout + result.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout


def test_service_settings_the_daemon_relies_on() -> None:
    lines = set(SERVICE.read_text().splitlines())
    for setting in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30",
                    "ExecReload=/bin/kill -HUP $MAINPID", "Requires=provisiond.socket",
                    "User=provisiond", "SupplementaryGroups=libvirt",
                    "RuntimeDirectory=provisiond", "RuntimeDirectoryPreserve=yes",
                    "StateDirectory=provisiond", "RestrictAddressFamilies=AF_UNIX",
                    "LimitNOFILE=65536"):
        assert setting in lines, setting
    assert not any(line.startswith("PrivateUsers=yes") for line in lines)  # SO_PEERCRED
    assert "ExecStart=/opt/provisiond/bin/provisiond --config /etc/provisiond/provisiond.yml" \
        in lines
    socket_lines = set(SOCKET.read_text().splitlines())
    for setting in ("ListenStream=/run/provisiond/provisiond.sock", "SocketMode=0660",
                    "SocketGroup=provisiond"):
        assert setting in socket_lines, setting


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd-sysusers --root needs root")
def test_sysusers_and_tmpfiles_entries_apply(tmp_path: Path) -> None:
    sysusers = systemd_binary("systemd-sysusers")
    tmpfiles = systemd_binary("systemd-tmpfiles")
    (tmp_path / "etc").mkdir()
    subprocess.run([sysusers, f"--root={tmp_path}", str(UNITS / "sysusers.d" /
                                                         "provisiond.conf")],
                   check=True, capture_output=True, timeout=60)
    passwd = (tmp_path / "etc" / "passwd").read_text()
    user = next(line for line in passwd.splitlines() if line.startswith("provisiond:"))
    uid, gid, home = user.split(":")[2], user.split(":")[3], user.split(":")[5]
    assert home == "/var/lib/provisiond"
    assert f"provisiond:x:{gid}:" in (tmp_path / "etc" / "group").read_text()

    subprocess.run([tmpfiles, f"--root={tmp_path}", "--create",
                    str(UNITS / "tmpfiles.d" / "provisiond.conf")],
                   check=True, capture_output=True, timeout=60)
    st = (tmp_path / "run" / "provisiond").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (int(uid), int(gid), 0o755)
