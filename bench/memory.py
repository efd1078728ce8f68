"""Memory: provisiond's peak RSS with a long history and many requests in flight.

    ./dev bench memory [--history 100000] [--in-flight|--n 1000] [--clients 64] [--list]
                       [--retention-cycles 100000]

The database is filled before provisiond starts: ``daemon.store.Store(path).migrate()``
makes the schema, then ``--history`` requests are inserted in one transaction
(executemany), each as provisiond leaves a done request: its ``requests`` row, its seven
log rows (six transitions and the DEFINED event, with details of the usual length) and its
volume claim. provisiond then starts on the embedded test-driver host of
``bench.common.write_bench_config`` (with a pool per 90 requests in flight: a test-driver
pool reports 100 GiB free, and each request holds a 1 GiB reservation on it until its
volume exists); ``--in-flight`` requests are POSTed as fast as
``--clients`` connections go, and VmRSS is sampled every 10 ms until all are done; the
figure is VmHWM (peak RSS) from ``/proc/<pid>/status`` at the end.

For reference, same run: an idle provisiond on an empty database, and the same burst on
an empty database (what the history adds). ``--list`` also times listing the whole
history with ``GET /v1/requests``, page by page as ``provctl list`` does, and shows the
RSS after it.

Note: the test-driver host lives inside the daemon process, so the volumes and domains it
holds (one each per request) count in provisiond's RSS here; on a real host they are in
libvirtd.

``--retention-cycles N`` (default 0: skipped; issue 11 asks for 100000) also reports the
database's size after N VMs created and deleted, without and with pruning: the
measurement of ``bench/retention.py`` (``retention.measure``, about 40 s per phase at
100000), run after provisiond has stopped.

Target: peak RSS <= 150 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import sqlite3
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (  # noqa: E402
    Provisiond,
    UnixHTTP,
    code_version,
    interruptible,
    load_average,
    proc_status_kib,
    submit_requests,
    temp_dir,
    wait_all_terminal,
    write_bench_config,
)
from bench.retention import measure as measure_retention  # noqa: E402
from daemon.virt.domain_xml import domain_uuid_for  # noqa: E402
from daemon.store import Store  # noqa: E402

TARGET_MB = 150.0
MB = 1024  # KiB


def populate(database: Path, count: int, owner: str) -> float:
    """``count`` done requests as provisiond leaves them; seconds taken."""
    t0 = time.monotonic()
    store = Store(database)
    store.migrate()
    store.close()
    now = time.time() - count - 3600
    requests, log, claims = [], [], []
    for i in range(count):
        rid = uuid.uuid4().hex
        at = now + i
        name = f"ipxe-{rid[:8]}"
        vol = f"provisiond-{rid}.qcow2"
        dom = domain_uuid_for(rid)
        requests.append((
            rid, name, owner, json.dumps([owner]), "ipxe", "bench", "rp", "hw", "bench", 1,
            65536, 1, None, "done", None, "pool0", vol, f"/pools/pool0/{vol}", "qcow2", 1,
            dom, name, None, 0, at, at + 0.06))
        log.extend([
            (rid, "transition", None, "requested", "submit", at,
             f"{owner} asked for ipxe / bench in rp"),
            (rid, "transition", "requested", "authorized", "authorize", at + 0.01,
             f"{owner} holds CLOUD_CREATE on rp; quota holds"),
            (rid, "transition", "authorized", "storage-searching", "search_storage",
             at + 0.02, "searching the storage pools of hw on host bench"),
            (rid, "transition", "storage-searching", "storage-creating", "create_storage",
             at + 0.03, "creating a 1 GiB volume in pool pool0"),
            (rid, "transition", "storage-creating", "defining", "define", at + 0.04,
             f"created volume pool0/{vol} (1 GiB, qcow2)"),
            (rid, "event", "defining", "defining", "libvirt:DEFINED", at + 0.05,
             f"domain {name} DEFINED (detail 0)"),
            (rid, "transition", "defining", "done", "finish", at + 0.06,
             f"domain {name} ({dom}) defined on bench (qemu, 1 vcpus, 65536 KiB)"),
        ])
        claims.append(("bench", "pool0", vol, rid, at + 0.03))
    db = sqlite3.connect(database, isolation_level=None)
    try:
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO requests (id, name, owner, owner_groups, template, size, resource_pool,"
            " hardware_pool, host, cpus, memory_kib, storage_gb, network, state, reason,"
            " volume_pool, volume_name, volume_path, volume_format, volume_owned, domain_uuid,"
            " domain_name, idempotency_key, cleaned_up, created_at, updated_at) VALUES"
            f" ({', '.join('?' * 26)})", requests)
        db.executemany("INSERT INTO state_log (request_id, kind, from_state, to_state, trigger,"
                       " at, detail) VALUES (?, ?, ?, ?, ?, ?, ?)", log)
        db.executemany("INSERT INTO volume_claims (host, pool, volume, request_id, at) VALUES"
                       " (?, ?, ?, ?, ?)", claims)
        db.execute("COMMIT")
    finally:
        db.close()
    return time.monotonic() - t0


class Sampler:
    """VmRSS of a process every ``interval`` s, on a thread."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid, self.interval = pid, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_status_kib(self.pid, "VmRSS"))
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def list_all(sock: str) -> tuple[float, int]:
    """GET /v1/requests, every page (``next`` passed back as ``after``), as ``provctl list``
    does: (seconds, requests listed)."""
    listed, after = 0, None
    t0 = time.monotonic()
    while True:
        conn = UnixHTTP(sock)
        conn.timeout = 600
        try:
            conn.request("GET", "/v1/requests" + (f"?after={after}" if after else ""))
            body = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        listed += len(body.get("requests", []))
        after = body.get("next")
        if not after:
            return time.monotonic() - t0, listed


def run(history: int, in_flight: int, clients: int, do_list: bool) -> dict[str, Any]:
    """One provisiond: start on a database with ``history`` done requests, burst of
    ``in_flight``; RSS figures in KiB."""
    directory = temp_dir("memory")
    try:
        # test-driver pools report 100 GiB free: a reservation of 1 GiB per request in
        # flight, so enough pools that none fails for want of space
        main = write_bench_config(directory, pools=math.ceil(in_flight / 90) + 1)
        database = directory / "provisiond.db"
        owner = __import__("getpass").getuser()
        out: dict[str, Any] = {"populate": populate(database, history, owner) if history
                               else 0.0,
                               "db_mb": sum(f.stat().st_size for f in directory.glob(
                                   "provisiond.db*")) / 1e6}
        daemon = Provisiond(main, start_timeout=300, kill_on_failure=True)
        try:
            pid = daemon.proc.pid
            out["start"] = daemon.ready_seconds
            time.sleep(1.0)  # settle
            out["idle_rss"] = proc_status_kib(pid, "VmRSS")
            out["idle_hwm"] = daemon.rss_kib()
            if in_flight:
                sampler = Sampler(pid)
                try:
                    t0 = time.monotonic()
                    asyncio.run(submit_requests(daemon.socket, in_flight, clients))
                    out["submit"] = time.monotonic() - t0
                    counts = wait_all_terminal(database, history + in_flight, proc=daemon.proc,
                                               poll=0.05)
                    out["drain"] = time.monotonic() - t0
                finally:
                    out["sampled_peak"] = sampler.stop()
                out["failed"] = counts.get("failed", 0)
                out["after_rss"] = proc_status_kib(pid, "VmRSS")
            out["hwm"] = daemon.rss_kib()
            if do_list:
                out["list_seconds"], out["listed"] = list_all(daemon.socket)
                out["list_rss"] = proc_status_kib(pid, "VmRSS")
                out["list_hwm"] = daemon.rss_kib()
        finally:
            daemon.stop()
        return out
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def mb(kib: float) -> str:
    return f"{kib / MB:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history", type=int, default=100000,
                        help="done requests in the database before the start (100000)")
    parser.add_argument("--in-flight", "--n", type=int, default=1000,
                        help="requests submitted at once after the start (1000)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (64)")
    parser.add_argument("--list", action="store_true",
                        help="also GET /v1/requests (the whole history) and show the RSS")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the empty-database references")
    parser.add_argument("--retention-cycles", type=int, default=0, metavar="N",
                        help="also the database's size after N create+delete cycles, "
                             "without and with pruning (bench/retention.py; 0: skip)")
    args = parser.parse_args()
    with interruptible():
        refs = {} if args.no_reference else {
            "idle": run(0, 0, args.clients, False),
            "burst": run(0, args.in_flight, args.clients, False)}
        r = run(args.history, args.in_flight, args.clients, args.list)
        retention = (measure_retention(args.retention_cycles) if args.retention_cycles > 0
                     else [])
    print(f"memory details: {code_version()}, {load_average()}; history of {args.history} "
          f"done requests written in {r['populate']:.1f} s (database {r['db_mb']:.0f} MB); "
          f"start-up {r['start']:.2f} s; RSS idle after start {mb(r['idle_rss'])} MB; "
          f"{args.in_flight} submitted in {r.get('submit', 0):.1f} s, all terminal after "
          f"{r.get('drain', 0):.1f} s ({r.get('failed', 0)} failed); sampled peak VmRSS "
          f"{mb(r.get('sampled_peak', 0))} MB, RSS after {mb(r.get('after_rss', 0))} MB")
    if refs:
        print(f"  references: idle on an empty database RSS {mb(refs['idle']['idle_rss'])} MB "
              f"(peak {mb(refs['idle']['hwm'])} MB); empty database + {args.in_flight} in "
              f"flight peak {mb(refs['burst']['hwm'])} MB")
    if args.list:
        print(f"  GET /v1/requests: {r['listed']} requests in {r['list_seconds']:.1f} s; RSS "
              f"after {mb(r['list_rss'])} MB, peak so far {mb(r['list_hwm'])} MB")
    for line in retention[:2]:
        print(f"  retention after {args.retention_cycles} create+delete cycles, {line}")
    verdict = "met" if r["hwm"] / MB <= TARGET_MB else "MISSED"
    idle = f", idle on an empty database {mb(refs['idle']['idle_rss'])} MB" if refs else ""
    print(f"memory: peak RSS {mb(r['hwm'])} MB with {args.history} requests in history and "
          f"{args.in_flight} in flight (target <= {TARGET_MB:g} MB: {verdict}){idle}")


if __name__ == "__main__":
    main()
