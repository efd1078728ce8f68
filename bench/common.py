"""Shared pieces of the benchmarks: a generated test-driver host, a provisiond process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import http.client
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

REPO = Path(__file__).resolve().parent.parent
GiB = 1024**3

POOL_XML = """  <pool type="{type}">
    <name>{name}</name>
    <uuid>{uuid}</uuid>
    <target><path>/pools/{name}</path></target>
{volumes}  </pool>
"""
VOLUME_XML = """    <volume type="file"><name>{name}</name><capacity unit="G">{gb}</capacity>
      <allocation>0</allocation><target><format type="{fmt}"/></target></volume>
"""


def node_xml(pools: int = 1, volumes_per_pool: int = 0, volume_gb: int = 2) -> str:
    """A test-driver host: ``pools`` dir pools with ``volumes_per_pool`` free volumes each
    (of ``volume_gb``, not the benchmark's size, so they are never reused), plus the ISO."""
    parts = ["<node>\n  <cpu><mhz>2400</mhz><model>x86_64</model><active>2</active><nodes>1"
             "</nodes><sockets>1</sockets><cores>2</cores><threads>1</threads></cpu>\n"
             "  <memory>16777216</memory>\n"]
    parts.append(POOL_XML.format(type="dir", name="pool-iso",
                                 uuid="00000000-0000-4000-8000-000000000000",
                                 volumes=VOLUME_XML.format(name="ipxe.iso", gb=1, fmt="iso")))
    for p in range(pools):
        vols = "".join(VOLUME_XML.format(name=f"v{p}-{v}.qcow2", gb=volume_gb, fmt="qcow2")
                       for v in range(volumes_per_pool))
        parts.append(POOL_XML.format(type="dir", name=f"pool{p}",
                                     uuid=f"00000000-0000-4000-8000-{p + 1:012d}",
                                     volumes=vols))
    parts.append("</node>\n")
    return "".join(parts)


def write_bench_config(directory: Path, *, pools: int = 1, volumes_per_pool: int = 0,
                       reuse: bool = False) -> Path:
    """A configuration on a generated host; size ``bench`` is 1 GiB (``reuse``: 2 GiB,
    the size of the generated free volumes)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "host.xml").write_text(node_xml(pools, volumes_per_pool))
    user = os.environ.get("USER") or __import__("getpass").getuser()
    files = {
        "VmSize.yml": {"bench": {"cpus": 1, "memory": 65536,
                                 "storage_size_in_gb": 2 if reuse else 1}},
        "templates.yml": {"ipxe": {"kind": "iso", "volume": {"pool": "pool-iso",
                                                             "name": "ipxe.iso"}}},
        "pools.yml": {
            "hardware_pools": {"hw": {
                "hosts": [{"name": "bench", "uri": f"test://{directory / 'host.xml'}"}],
                # Thousands of VMs on one generated host: its capacity is not measured.
                "cpu_allocation_ratio": 100000, "ram_allocation_ratio": 100000,
                # thin volumes on the test driver: over-commit so capacity never binds
                "storage_pools": [{"name": f"pool{p}", "overcommit": 100000}
                                  for p in range(pools)]
                + [{"name": "pool-iso", "templates_only": True}],
            }},
            "resource_pools": {"rp": {"hardware_pool": "hw", "grants": {
                "CLOUD_CREATE": {"users": [user]}, "CLOUD_ADMIN": {"users": [user]}}}},
        },
        "provisiond.yml": {
            # One user drives the whole load: the per-user limits would be what is
            # measured, not provisiond's throughput.
            "daemon": {"socket": str(directory / "provisiond.sock"),
                       "database": str(directory / "provisiond.db"),
                       "max_in_progress_per_user": 1000000,
                       "max_connections_per_user": 1000000},
            "include": {"sizes": "VmSize.yml", "templates": "templates.yml",
                        "pools": "pools.yml"},
        },
    }
    for name, content in files.items():
        (directory / name).write_text(yaml.safe_dump(content))
    return directory / "provisiond.yml"


class UnixHTTP(http.client.HTTPConnection):
    """HTTP over a Unix socket."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self.path_ = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.path_)


def get_json(sock: str, url: str) -> Any:
    """One GET; the decoded JSON."""
    conn = UnixHTTP(sock)
    try:
        conn.request("GET", url)
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def metrics_text(sock: str) -> str:
    """provisiond's /metrics, as text."""
    conn = UnixHTTP(sock)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def metric(sock: str, name: str, labels: str) -> float:
    """One sample of /metrics, e.g. metric(sock, 'provisiond_requests', 'state="done"')."""
    key = f"{name}{{{labels}}} "
    for line in metrics_text(sock).splitlines():
        if line.startswith(key):
            return float(line[len(key):])
    return 0.0


class Provisiond:
    """A provisiond process for a benchmark."""

    def __init__(self, main: Path, *, module: str = "daemon",
                 env: dict[str, str] | None = None, start_timeout: float = 60,
                 kill_on_failure: bool = False) -> None:
        """Start provisiond and wait until it answers on its socket (``start_timeout`` s).
        ``kill_on_failure``: SIGKILL the process if it does not come up (else it is left
        to the caller, who never gets this object)."""
        self.main = main
        self.socket = str(main.parent / "provisiond.sock")
        self.log = open(main.parent / "daemon.log", "ab")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", module, "--config", str(main),
                                      "--log-format", "text"],
                                     stdout=self.log, stderr=self.log, cwd=REPO,
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + start_timeout
        while True:
            try:
                get_json(self.socket, "/v1/health")
                self.ready_seconds = time.monotonic() - self.started_at
                """From the process start until it answered on its socket."""
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    if kill_on_failure:
                        self.proc.kill()
                        self.proc.wait()
                        self.log.close()
                    raise RuntimeError((main.parent / "daemon.log").read_text()[-3000:])
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def rss_kib(self) -> int:
        """Peak resident set size so far (VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return 0

    def rss_now_kib(self) -> int:
        """Resident set size now (VmRSS)."""
        return proc_status_kib(self.proc.pid, "VmRSS")


def temp_dir(prefix: str) -> Path:
    """A fresh directory under /tmp for one benchmark run."""
    return Path(tempfile.mkdtemp(prefix=f"provisiond-bench-{prefix}-"))


# --------------------------------------------------------------------------- added for
# latency, placement_scaling, recovery and memory (the helpers above keep their signatures)

TERMINAL_STATES = ("done", "failed")
BENCH_BODY = {"template": "ipxe", "size": "bench", "resource_pool": "rp"}


def proc_status_kib(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` figure in KiB (VmRSS, VmHWM, ...); 0 if absent."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]) of ``values``; nan when empty."""
    s = sorted(values)
    if not s:
        return float("nan")
    rank = max(1, -(-int(q * 1000) * len(s) // 1000))  # ceil(q * n), in integers
    return s[min(len(s), rank) - 1]


def load_average() -> str:
    """The 1-minute load average and the CPU count, for the figures' context."""
    try:
        one = os.getloadavg()[0]
    except OSError:
        return "load ?"
    return f"load {one:.2f} on {os.cpu_count()} CPUs"


def code_version() -> str:
    """Which provisiond was measured: the commit, and whether daemon/ or statemachines/
    had uncommitted changes (with a digest of them, to tell runs apart)."""
    import hashlib

    def git(*args: str) -> str:
        run = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
        return run.stdout if run.returncode == 0 else ""
    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    paths = ["daemon", "statemachines"]
    diff = git("diff", "HEAD", "--", *paths)
    untracked = git("ls-files", "--others", "--exclude-standard", "--", *paths).split()
    if not diff and not untracked:
        return f"commit {head}"
    digest = hashlib.sha1(diff.encode())
    for name in sorted(untracked):
        digest.update(name.encode() + (REPO / name).read_bytes())
    return f"commit {head} + uncommitted daemon/ changes (digest {digest.hexdigest()[:10]})"


@contextmanager
def interruptible() -> Iterator[None]:
    """SIGTERM and SIGHUP raise KeyboardInterrupt like Ctrl-C, so every ``finally``
    (stopping processes, removing directories) runs."""
    def raise_interrupt(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    old = {s: signal.signal(s, raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def db_state_counts(database: Path | str) -> dict[str, int]:
    """Requests by state, read straight from provisiond's SQLite database (no API call:
    it does not load the daemon). Works on a database whose process was killed."""
    import sqlite3

    db = sqlite3.connect(str(database), timeout=30)
    try:
        return dict(db.execute("SELECT state, COUNT(*) FROM requests GROUP BY state"))
    finally:
        db.close()


def wait_all_terminal(database: Path | str, total: int, *, timeout: float = 600,
                      poll: float = 0.05, proc: subprocess.Popen[bytes] | None = None
                      ) -> dict[str, int]:
    """Wait until ``total`` requests are done or failed (read from the database); the
    counts by state. Raises if ``timeout`` passes or ``proc`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        counts = db_state_counts(database)
        if sum(counts.get(s, 0) for s in TERMINAL_STATES) >= total:
            return counts
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"provisiond exited ({proc.returncode}) with {counts}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"not all {total} requests terminal after {timeout:g} s: {counts}")
        time.sleep(poll)


async def submit_requests(sock: str, n: int, clients: int, body: dict[str, str] | None = None
                          ) -> list[tuple[str, float, float]]:
    """POST ``n`` requests as fast as ``clients`` concurrent connections go; for each, in
    order of submission: (request id, time.time() when sent, when the 202 came)."""
    import aiohttp

    body = body or BENCH_BODY
    results: list[tuple[str, float, float] | None] = [None] * n
    next_index = iter(range(n))

    async def client(session: aiohttp.ClientSession) -> None:
        for i in next_index:
            sent = time.time()
            async with session.post("http://localhost/v1/requests", json=body) as r:
                data = await r.json()
                if r.status != 202:
                    raise RuntimeError(f"POST /v1/requests: {r.status} {data}")
            results[i] = (data["id"], sent, time.time())

    connector = aiohttp.UnixConnector(path=sock, limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio_gather(*(client(session) for _ in range(clients)))
    return [r for r in results if r is not None]


async def asyncio_gather(*aws: Any) -> list[Any]:
    """``asyncio.gather`` that cancels the others when one fails (no stray tasks)."""
    import asyncio

    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


INLINE_STATES = ("requested", "authorized", "storage-searching", "storage-creating",
                 "defining", "done")


class InlineBaseline:
    """The baseline of ``throughput.py``, one request at a time and timed: the same
    libvirt calls as provisiond (volume createXML, domain defineXML, on the test driver,
    through the Python binding in this process) and the same durable rows (a request, its
    six state-log rows and state updates, one ``synchronous=FULL`` commit per
    transition), in a plain loop: no HTTP, no state machine, no event loop.
    ``run_one()`` returns the ``time.time()`` stamped on the 'done' row (as provisiond
    stamps its log), taken before that row's commit, like provisiond's."""

    def __init__(self, directory: Path, *, pools: int = 1, volumes_per_pool: int = 0) -> None:
        import sqlite3

        import libvirt

        from daemon.store import Store

        libvirt.registerErrorHandler(lambda *_: None, None)
        write_bench_config(directory, pools=pools, volumes_per_pool=volumes_per_pool)
        Store(directory / "provisiond.db").migrate()
        self.db = sqlite3.connect(directory / "provisiond.db", isolation_level=None)
        self.db.execute("PRAGMA journal_mode=wal")
        self.db.execute("PRAGMA synchronous=FULL")
        self.conn = libvirt.open(f"test://{directory / 'host.xml'}")
        self.pool = self.conn.storagePoolLookupByName("pool0")

    def run_one(self) -> float:
        import uuid

        from daemon.virt.domain_xml import DomainSpec, build_domain_xml, build_volume_xml

        rid = uuid.uuid4().hex
        vol = None
        now = time.time()
        for i, state in enumerate(INLINE_STATES):
            now = time.time()
            self.db.execute("BEGIN")
            if i == 0:
                self.db.execute(
                    "INSERT INTO requests (id, name, owner, template, size, resource_pool,"
                    " hardware_pool, cpus, memory_kib, storage_gb, state, created_at,"
                    " updated_at) VALUES (?, ?, 'u', 'ipxe', 'bench', 'rp', 'hw', 1, 65536,"
                    " 1, ?, ?, ?)", (rid, f"vm-{rid[:8]}", state, now, now))
            else:
                self.db.execute("UPDATE requests SET state = ?, updated_at = ? WHERE id = ?",
                                (state, now, rid))
            self.db.execute("INSERT INTO state_log (request_id, kind, from_state, to_state,"
                            " trigger, at, detail) VALUES (?, 'transition', ?, ?, 't', ?, 'd')",
                            (rid, INLINE_STATES[i - 1] if i else None, state, now))
            self.db.execute("COMMIT")
            if state == "storage-creating":
                vol = self.pool.createXML(build_volume_xml(f"provisiond-{rid}.qcow2", 1 << 30,
                                                           "qcow2"), 0)
            if state == "defining":
                assert vol is not None
                self.conn.defineXML(build_domain_xml(DomainSpec(
                    f"vm-{rid[:8]}", str(uuid.uuid4()), "qemu", "i686", 1, 65536,
                    "pool0", vol.name(), "qcow2", None, "pool-iso", "ipxe.iso", None, rid,
                    "u", "ipxe", "bench", "rp")))
        return now

    def close(self) -> None:
        self.conn.close()
        self.db.close()


def failed_reasons(database: Path | str, limit: int = 3) -> dict[str, int]:
    """The most common reasons of failed requests (reason -> count), from the database."""
    import sqlite3

    db = sqlite3.connect(str(database), timeout=30)
    try:
        return dict(db.execute(
            "SELECT COALESCE(reason, '?'), COUNT(*) AS c FROM requests WHERE state = 'failed'"
            " GROUP BY 1 ORDER BY c DESC LIMIT ?", (limit,)))
    finally:
        db.close()
