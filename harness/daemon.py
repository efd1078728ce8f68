"""A real provisiond process for tests and benchmarks: its configuration, its client.

``write_config`` and ``daemon_config`` write a complete configuration over a test-driver
node XML in ``tests/data/`` (or a real libvirtd's URI); ``Daemon`` runs ``python -m
daemon`` on it and talks HTTP over its Unix socket, as this uid or as another one.
"""

from __future__ import annotations

import getpass
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"

SIZES = {
    "small": {"cpus": 2, "memory": 262144, "storage_size_in_gb": 15},
    "tiny": {"cpus": 1, "memory": 131072, "storage_size_in_gb": 10},
}
TEMPLATES = {
    "ipxe": {"kind": "iso", "volume": {"pool": "pool-dir", "name": "ipxe.iso"}},
    "ipxe-file": {"kind": "iso", "path": "/usr/lib/ipxe/ipxe.iso"},
}


def write_config(directory: Path, node_xml: str = "host_basic.xml", *,
                 storage_pools: list[Any] | None = None, quota: dict[str, int] | None = None,
                 sizes: dict[str, Any] | None = None, templates: dict[str, Any] | None = None,
                 daemon: dict[str, Any] | None = None, tolerance_gb: int = 0,
                 grants: dict[str, Any] | None = None,
                 resource_pools: dict[str, Any] | None = None,
                 hosts: list[dict[str, str]] | None = None,
                 hardware: dict[str, Any] | None = None) -> Path:
    """Write a complete configuration into ``directory``; return its main file.

    The hardware pool's host is the test driver on ``node_xml`` unless ``hosts`` says
    otherwise (e.g. a real libvirtd's URI); ``hardware`` adds keys to the hardware pool."""
    directory.mkdir(parents=True, exist_ok=True)
    pools = list(storage_pools or ["pool-iscsi", "pool-dir", "pool-nfs", "pool-lvm"])
    # The templates' pools must be listed: those a test leaves out are listed as
    # templates_only, where no VM disk goes (placement is as the test's list says).
    listed = {p if isinstance(p, str) else p["name"] for p in pools}
    for template in (templates or TEMPLATES).values():
        for key in ("volume", "kernel", "initrd"):
            ref = template.get(key)
            if isinstance(ref, dict) and ref.get("pool") not in listed:
                listed.add(ref["pool"])
                pools.append({"name": ref["pool"], "templates_only": True})
    rp: dict[str, Any] = {
        "hardware_pool": "hw",
        "grants": grants or {"CLOUD_CREATE": {"users": ["alice"], "groups": ["admins"]},
                             "CLOUD_ADMIN": {"users": ["carol"]}},
    }
    if quota:
        rp["quota"] = quota
    files = {
        "VmSize.yml": sizes or SIZES,
        "templates.yml": templates or TEMPLATES,
        "pools.yml": {
            "hardware_pools": {"hw": {
                "hosts": hosts or [{"name": "testhost", "uri": f"test://{DATA / node_xml}"}],
                # Tests define hundreds of small VMs on 16-cpu test hosts (and the e2e
                # host has 2 cpus): host capacity is not what they test; its tests set
                # their own ratios.
                "cpu_allocation_ratio": 1000, "ram_allocation_ratio": 1000, **(hardware or {}),
                "storage_pools": [p if isinstance(p, dict) else {"name": p} for p in pools],
                "reuse_tolerance_gb": tolerance_gb,
            }},
            "resource_pools": resource_pools or {"rp": rp},
        },
        "provisiond.yml": {
            # Load tests are one user with hundreds of requests and connections at once:
            # the per-user limits are off here; the tests of the limits set their own.
            "daemon": {"socket": str(directory / "provisiond.sock"),
                       "database": str(directory / "provisiond.db"),
                       "define_event_timeout": 5, "max_in_progress_per_user": 100000,
                       "max_connections_per_user": 100000, **(daemon or {})},
            "include": {"sizes": "VmSize.yml", "templates": "templates.yml",
                        "pools": "pools.yml"},
        },
    }
    for name, content in files.items():
        (directory / name).write_text(yaml.safe_dump(content, sort_keys=False))
    return directory / "provisiond.yml"


ME = getpass.getuser()
OTHER_USER = "nobody"  # a second real uid, present on every Debian system
OTHER_GROUP = "nogroup"
# The other uid's client needs only the standard library; the test interpreter may live
# where that uid cannot reach (pyenv under /root), the system's always can.
SYSTEM_PYTHON = "/usr/bin/python3"


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a Unix socket (standard library only)."""

    def __init__(self, path: str, timeout: float = 30) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


@dataclass
class Reply:
    """An API answer: status, headers and decoded JSON body."""

    status: int
    body: Any
    headers: dict[str, str]


# Run by a subprocess under another uid: the same request, from a different peer.
_CLIENT_AS = """
import http.client, json, socket, sys
path, method, url, body, headers = json.loads(sys.stdin.read())
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(path)
c = C("localhost", timeout=20)
try:
    c.request(method, url, body=body.encode() if body is not None else None, headers=headers)
except (BrokenPipeError, ConnectionResetError, TimeoutError):
    pass  # answered before it read it all: read the answer (within the 60 s of the caller)
r = c.getresponse()
print(json.dumps({"status": r.status, "body": r.read().decode(), "headers": dict(r.getheaders())}))
"""


class Daemon:
    """A provisiond process on its own configuration, socket and database."""

    def __init__(self, directory: Path, main: Path) -> None:
        self.directory = directory
        self.main = main
        self.socket = str(directory / "provisiond.sock")
        self.database = directory / "provisiond.db"
        self.log_path = directory / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> None:
        """Start provisiond and wait until it answers ``GET /v1/health``."""
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "daemon", "--config",
                                          str(self.main)], stdout=log, stderr=log, cwd=REPO)
        wait_healthy(self, timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        """Send ``sig`` and wait for the exit status (SIGKILL if it outlives ``timeout``)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def log(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def call(self, method: str, url: str, body: Any = None, *, raw: bytes | None = None,
             headers: dict[str, str] | None = None, as_user: str | None = None) -> Reply:
        """One API call; as ``as_user`` it is made by a process running under that uid."""
        headers = dict(headers or {})
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                            else None)
        if data is not None:
            headers.setdefault("Content-Type", "application/json")
        if as_user is None:
            conn = UnixHTTPConnection(self.socket)
            try:
                try:
                    conn.request(method, url, body=data, headers=headers)
                except (BrokenPipeError, ConnectionResetError, TimeoutError):
                    # Answered before it read it all (then closed, or stopped reading
                    # while this client could only send): read the answer.
                    pass
                resp = conn.getresponse()
                text = resp.read().decode()
                status, resp_headers = resp.status, dict(resp.getheaders())
            finally:
                conn.close()
        else:
            args = json.dumps([self.socket, method, url,
                               data.decode() if data is not None else None, headers])
            out = subprocess.run([SYSTEM_PYTHON, "-c", _CLIENT_AS], input=args, user=as_user,
                                 group=OTHER_GROUP, extra_groups=[], capture_output=True,
                                 text=True, timeout=60, check=True, cwd="/")
            result = json.loads(out.stdout)
            status, text, resp_headers = result["status"], result["body"], result["headers"]
        try:
            decoded = json.loads(text) if text else None
        except ValueError:
            decoded = text
        return Reply(status, decoded, resp_headers)

    def wait_terminal(self, request_id: str, timeout: float = 20) -> dict[str, Any]:
        """Poll a request until it is done or failed; return its body."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = self.call("GET", f"/v1/requests/{request_id}").body
            if body["state"] in ("done", "failed"):
                return body
            time.sleep(0.05)
        raise AssertionError(f"request {request_id} still {body['state']}")


def daemon_config(directory: Path, node_xml: str = "host_basic.xml", **options: Any) -> Path:
    """A configuration for a daemon test: the current user may create in rp and rp2;
    OTHER_USER holds CLOUD_ADMIN on rp only; the socket's group is OTHER_GROUP."""
    pools = options.pop("resource_pools", None) or {
        "rp": {"hardware_pool": "hw", "grants": {
            "CLOUD_CREATE": {"users": [ME, "alice"]}, "CLOUD_ADMIN": {"users": [OTHER_USER]}}},
        "rp2": {"hardware_pool": "hw", "grants": {"CLOUD_CREATE": {"users": [ME]}}},
    }
    daemon = {"socket_group": OTHER_GROUP, **options.pop("daemon", {})}
    return write_config(directory, node_xml, resource_pools=pools, daemon=daemon, **options)


def spawn_daemon(d: Daemon, *args: str, prefix: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``d``'s provisiond with extra ``args``, under ``prefix`` (e.g.
    systemd-socket-activate) and with ``env`` added, without waiting for it to serve.

    ``d.proc`` is set, so whoever made ``d`` stops it as usual.
    """
    clean = {k: v for k, v in os.environ.items()
             if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_PID",
                          "LISTEN_FDS", "LISTEN_FDNAMES", "JOURNAL_STREAM")}
    with open(d.log_path, "ab") as log:
        d.proc = subprocess.Popen([*prefix, sys.executable, "-m", "daemon", "--config",
                                   str(d.main), *args], stdout=log, stderr=log, cwd=REPO,
                                  env={**clean, **(env or {})})
    return d.proc


def wait_healthy(d: Daemon, timeout: float = 20) -> None:
    """Wait until ``d`` answers ``GET /v1/health`` with 200."""
    assert d.proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            raise RuntimeError(f"provisiond exited {d.proc.returncode}:\n{d.log()}")
        try:
            if d.call("GET", "/v1/health").status == 200:
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"provisiond did not come up:\n{d.log()}")


def wait_for_request_log(d: Daemon, request_id: str, trigger: str,
                         timeout: float = 10) -> None:
    """Wait until the request's log (the API's) has an entry with this ``trigger``."""
    deadline = time.monotonic() + timeout
    while trigger not in [e["trigger"] for e in d.call(
            "GET", f"/v1/requests/{request_id}/log").body["log"]]:
        assert time.monotonic() < deadline, d.log()
        time.sleep(0.05)


def wait_for_log(d: Daemon, text: str, timeout: float = 10) -> str:
    """Wait until ``text`` appears in ``d``'s log; return the log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = d.log()
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the daemon's log:\n{d.log()}")
