"""Shared by bench/real_overhead.py and bench/vs_tools.py: a real libvirtd with QEMU and a
provisiond configured on it, the same way the end-to-end tests do it.

- the libvirt daemon is ``harness/libvirtd.py``'s ``LibvirtDaemon`` (root only; a private
  mount namespace on a temporary directory, the host's libvirt left alone);
- one ``dir`` pool holding the template ISO; the benchmark's size is 1 GiB, qcow2;
- provisiond is ``harness/daemon.py``'s ``Daemon`` on ``daemon_config`` with the host URI
  rewritten to the libvirtd and ``domain_type: qemu`` (as ``tests/e2e`` class ``E2E``).

Each provisiond phase gets a fresh daemon and database (``fresh_provisiond``): the host is
emptied between phases, and a done request keeps its space reservation in the database, so
deleting its volume behind provisiond's back would make that reservation pending again.

The benchmark process uses the Python binding synchronously (``libvirt.open``, no event
implementation, no asyncio): it needs no events.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import libvirt  # noqa: E402

from bench.common import code_version, interruptible  # noqa: E402,F401 (re-exported)

from daemon.virt import domain_xml  # noqa: E402
from harness.libvirtd import LibvirtDaemon  # noqa: E402
from harness.daemon import Daemon, UnixHTTPConnection, daemon_config  # noqa: E402

GiB = 1024**3
SIZE = {"cpus": 1, "memory": 131072, "storage_size_in_gb": 1}
ISO = "ipxe.iso"
IN_PROGRESS = ("requested", "authorized", "storage-searching", "storage-creating", "defining")

libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


def say(text: str) -> None:
    """Progress on stderr; the figures go to stdout."""
    print(text, file=sys.stderr, flush=True)


def require_root_and_packages(extra_apt: tuple[str, ...] = ()) -> None:
    """Root, the e2e packages (scripts/setup-libvirtd), and ``extra_apt`` packages."""
    if os.geteuid() != 0:
        sys.exit("these benchmarks run a privileged libvirtd (harness/libvirtd.py): root only")
    setup = subprocess.run([str(REPO / "scripts" / "setup-libvirtd")], capture_output=True,
                           text=True, timeout=900)
    if setup.returncode != 0:
        sys.exit(f"scripts/setup-libvirtd failed:\n{setup.stdout}{setup.stderr}")
    missing = [p for p in extra_apt if subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True
    ).stdout.find("install ok installed") < 0]
    if missing:
        say(f"installing {' '.join(missing)} (apt)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-qq"],
                     ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing]):
            run = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
            if run.returncode != 0:
                sys.exit(f"{' '.join(argv)} failed:\n{run.stdout}{run.stderr}")
    for tool in ("unshare", "libvirtd", "virtlogd", "virsh"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} not found after scripts/setup-libvirtd")


@contextmanager
def uninterrupted() -> Iterator[None]:
    """Clean-up is not cut short by a second Ctrl-C."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


class Api:
    """provisiond's API over one kept-alive connection (reconnects when the daemon closed it)."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.conn: UnixHTTPConnection | None = None

    def call(self, method: str, url: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = UnixHTTPConnection(self.socket_path, timeout=60)
            try:
                self.conn.request(method, url, body=data, headers=headers)
                resp = self.conn.getresponse()
                text = resp.read()
                return resp.status, json.loads(text) if text else None
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text -> {(sample name, sorted labels): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([A-Za-z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$", line)
        if not m:
            continue
        labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or "")))
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            continue
    return out


WARMUP = 2
"""VMs through a fresh provisiond before it is measured (not counted)."""


class RealHost:
    """The libvirtd, its pool, a synchronous libvirt connection, and provisiond on it."""

    def __init__(self) -> None:
        self.libvirtd = LibvirtDaemon()
        self.pool = f"bench-{uuid.uuid4().hex[:8]}"
        self.directory = Path(tempfile.mkdtemp(prefix="provisiond-bench-real-"))
        self.directory.chmod(0o755)
        self.conn: Any = None
        self.daemon: Daemon | None = None
        self.api: Api | None = None
        self.generation = 0

    # -- life cycle

    def start(self) -> None:
        say("starting libvirtd (harness/libvirtd.py) ...")
        self.libvirtd.start()
        self.pool_dir = self.libvirtd.create_dir_pool(self.pool)
        self.libvirtd.add_iso_to_pool(self.pool, ISO)
        self.conn = libvirt.open(self.libvirtd.uri)
        self.storage_pool = self.conn.storagePoolLookupByName(self.pool)

    def stop(self) -> None:
        """Everything goes: provisiond, domains, volumes, pool, libvirtd, temp dirs."""
        with uninterrupted():
            try:
                self.stop_provisiond()
            finally:
                try:
                    if self.conn is not None:
                        try:
                            self.empty_host()
                            self.storage_pool.destroy()
                            self.storage_pool.undefine()
                        except libvirt.libvirtError:
                            pass
                        self.storage_pool = None
                        try:
                            self.conn.close()
                        except libvirt.libvirtError:
                            pass
                        self.conn = None
                finally:
                    try:
                        self.libvirtd.stop()
                    finally:
                        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RealHost:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- provisiond

    def fresh_provisiond(self, storage_pools: list[str] | None = None) -> Daemon:
        """Stop provisiond if it runs, start a new one on an empty database, placing on
        ``storage_pools`` (default: the benchmark's pool)."""
        self.stop_provisiond()
        self.generation += 1
        sub = self.directory / f"provisiond-{self.generation}"
        sub.mkdir()
        sub.chmod(0o755)
        main = daemon_config(
            sub, storage_pools=storage_pools or [self.pool], sizes={"bench": SIZE},
            templates={"ipxe": {"kind": "iso", "volume": {"pool": self.pool, "name": ISO}}},
            daemon={"define_event_timeout": 30, "host_wait_timeout": 60},
            hosts=[{"name": "bench", "uri": self.libvirtd.uri, "domain_type": "qemu"}])
        self.daemon = Daemon(sub, main)
        self.daemon.start(timeout=60)
        self.api = Api(self.daemon.socket)
        return self.daemon

    def warm_provisiond(self, poll: float) -> Daemon:
        """``fresh_provisiond``, warmed up by ``WARMUP`` VMs, on an empty pool again."""
        daemon = self.fresh_provisiond()
        self.provision_sequential(WARMUP, poll)
        self.reset()
        return daemon

    def stop_provisiond(self) -> None:
        if self.api is not None:
            self.api.close()
            self.api = None
        if self.daemon is not None and self.daemon.proc is not None:
            try:
                self.daemon.stop(timeout=30)
            except subprocess.TimeoutExpired:
                pass  # Daemon.stop killed it
        self.daemon = None

    def submit(self) -> str:
        assert self.api is not None
        status, body = self.api.call("POST", "/v1/requests", {
            "template": "ipxe", "size": "bench", "resource_pool": "rp"})
        if status != 202:
            raise RuntimeError(f"POST /v1/requests: {status} {body}")
        return body["id"]

    def state(self, request_id: str, wait: float = 0) -> dict[str, Any]:
        """The request; with ``wait``, once it has ended (or ``wait`` s have passed)."""
        assert self.api is not None
        query = f"?wait={wait:g}" if wait > 0 else ""
        status, body = self.api.call("GET", f"/v1/requests/{request_id}{query}")
        if status != 200:
            raise RuntimeError(f"GET /v1/requests/{request_id}: {status} {body}")
        return body

    def provision_one(self, poll: float) -> tuple[str, float]:
        """Submit one request and wait for ``done``; (id, seconds). ``poll`` 0: the server
        answers when it is done (``GET ?wait=``); else poll every ``poll`` s."""
        t0 = time.perf_counter()
        request_id = self.submit()
        while True:
            body = self.state(request_id, wait=300 if poll <= 0 else 0)
            if body["state"] == "done":
                return request_id, time.perf_counter() - t0
            if body["state"] == "failed":
                raise RuntimeError(f"request {request_id} failed: {body['reason']}\n"
                                   f"{self.daemon_log_tail()}")
            time.sleep(poll)

    def provision_sequential(self, n: int, poll: float) -> tuple[list[str], list[float]]:
        ids, times = [], []
        for _ in range(n):
            request_id, seconds = self.provision_one(poll)
            ids.append(request_id)
            times.append(seconds)
        return ids, times

    def provision_concurrent(self, n: int, poll: float
                             ) -> tuple[list[str], float, dict[str, str]]:
        """Submit ``n`` requests back to back, wait until none is in progress; (ids, wall
        seconds, {id: reason} of those that failed)."""
        assert self.api is not None
        t0 = time.perf_counter()
        ids = [self.submit() for _ in range(n)]
        if poll <= 0:
            for request_id in ids:
                while self.state(request_id, wait=300)["state"] not in ("done", "failed"):
                    pass
        query = "&".join(f"state={s}" for s in IN_PROGRESS)
        while True:
            status, body = self.api.call("GET", f"/v1/requests?{query}")
            if status != 200:
                raise RuntimeError(f"GET /v1/requests: {status} {body}")
            if not body["requests"]:
                break
            time.sleep(poll)
        wall = time.perf_counter() - t0
        mine = set(ids)
        _status, body = self.api.call("GET", "/v1/requests?state=failed")
        failed = {r["id"]: r["reason"] for r in body["requests"] if r["id"] in mine}
        return ids, wall, failed

    def server_seconds(self, request_id: str) -> float:
        """From the request's log: 'requested' to 'done', as provisiond timed it (ms)."""
        assert self.api is not None
        _status, body = self.api.call("GET", f"/v1/requests/{request_id}/log")
        transitions = [e for e in body["log"] if e["kind"] == "transition"]
        def at(e: dict[str, Any]) -> float:
            return datetime.fromisoformat(e["at"].replace("Z", "+00:00")).timestamp()
        return at(transitions[-1]) - at(transitions[0])

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        assert self.daemon is not None
        conn = UnixHTTPConnection(self.daemon.socket)
        try:
            conn.request("GET", "/metrics")
            return parse_metrics(conn.getresponse().read().decode())
        finally:
            conn.close()

    def daemon_log_tail(self, chars: int = 3000) -> str:
        if self.daemon is None:
            return ""
        return self.daemon.log()[-chars:]

    def event_count(self, event: str) -> float:
        """How many libvirt events called ``event`` provisiond has taken in."""
        return sum(v for (name, labels), v in self.metrics().items()
                   if name == "provisiond_libvirt_events_total" and ("event", event) in labels)

    def wait_events(self, before: dict[str, float], expected: dict[str, float],
                    timeout: float) -> None:
        """Wait until provisiond counted ``expected[e]`` more events ``e`` than ``before``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.event_count(e) >= before[e] + k for e, k in expected.items()):
                time.sleep(0.05)  # the handler that follows the count
                return
            time.sleep(0.02)

    # -- raw libvirt

    def volume_xml(self, name: str) -> str:
        return domain_xml.build_volume_xml(name, SIZE["storage_size_in_gb"] * GiB, "qcow2")

    def domain_xml(self, name: str, volume: str) -> str:
        """The same domain XML provisiond defines (daemon/virt/domain_xml.py), for raw calls."""
        request_id = uuid.uuid4().hex
        return domain_xml.build_domain_xml(domain_xml.DomainSpec(
            name=name, uuid=str(uuid.uuid4()), domain_type="qemu", arch="x86_64",
            cpus=SIZE["cpus"], memory_kib=SIZE["memory"], disk_pool=self.pool,
            disk_volume=volume, disk_format="qcow2", cdrom_path=None, cdrom_pool=self.pool,
            cdrom_volume=ISO, network=None, request_id=request_id, owner="bench",
            template="ipxe", size="bench", resource_pool="rp"))

    def empty_host(self) -> int:
        """Undefine every domain, delete every volume but the ISO, then refresh the pool (a
        REFRESH event: a provisiond that keeps its inventory in memory learns that the
        volumes are gone; libvirt has no volume events). The number of domains undefined."""
        undefined = 0
        for dom in self.conn.listAllDomains():
            try:
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
                undefined += 1
            except libvirt.libvirtError:
                pass
        for vol in self.storage_pool.listAllVolumes():
            if vol.name() != ISO:
                try:
                    vol.delete(0)
                except libvirt.libvirtError:
                    pass
        self.storage_pool.refresh(0)
        return undefined

    def reset(self) -> None:
        """Empty the host; a running provisiond takes in the events before this returns
        (UNDEFINED of each domain; REFRESH of the pool, if this provisiond listens to it)."""
        if self.daemon is None:
            self.empty_host()
            return
        before = {e: self.event_count(e) for e in ("UNDEFINED", "REFRESH")}
        undefined = self.empty_host()
        self.wait_events(before, {"UNDEFINED": undefined}, timeout=30)
        self.wait_events(before, {"REFRESH": 1}, timeout=1)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def stats(values: list[float]) -> str:
    """mean / median / p90 / min / max in ms."""
    s = sorted(values)
    if not s:
        return "-"
    p = lambda q: s[min(len(s) - 1, int(q * len(s)))]  # noqa: E731
    return (f"mean {ms(sum(s) / len(s))}  median {ms(p(0.5))}  p90 {ms(p(0.9))}  "
            f"min {ms(s[0])}  max {ms(s[-1])} ms")
