"""Throughput: N requests over the Unix socket, driven to done on the test driver.

    ./dev bench throughput [--n 10000] [--clients 64]

Baseline, same run: the same libvirt calls (volume createXML, domain defineXML) and the
same rows (a request, its six state-log rows and state updates, one durable commit per
transition, as provisiond) by a minimal single-process loop: no HTTP, no state machine.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import Provisiond, metric, temp_dir, write_bench_config  # noqa: E402

STATES = ["requested", "authorized", "storage-searching", "storage-creating", "defining",
          "done"]


async def submit_all(sock: str, n: int, clients: int) -> list[float]:
    """POST n requests with ``clients`` concurrent connections; per-request latencies."""
    body = {"template": "ipxe", "size": "bench", "resource_pool": "rp"}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    latencies: list[float] = []

    async def client() -> None:
        async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sock)) as s:
            while not queue.empty():
                queue.get_nowait()
                t0 = time.perf_counter()
                async with s.post("http://localhost/v1/requests", json=body) as r:
                    assert r.status == 202, await r.text()
                    await r.read()
                latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


def run_provisiond(n: int, clients: int) -> float:
    """Requests per second through provisiond, submit to the last one done."""
    directory = temp_dir("throughput")
    try:
        daemon = Provisiond(write_bench_config(directory))
        try:
            t0 = time.perf_counter()
            asyncio.run(submit_all(daemon.socket, n, clients))
            while metric(daemon.socket, "provisiond_requests", 'state="done"') < n:
                failed = metric(daemon.socket, "provisiond_requests", 'state="failed"')
                if failed:
                    raise RuntimeError(f"{failed:.0f} requests failed; see {directory}")
                time.sleep(0.02)
            elapsed = time.perf_counter() - t0
        finally:
            daemon.stop()
        return n / elapsed
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_baseline(n: int) -> float:
    """Requests per second for the same libvirt calls and durable rows, no daemon."""
    import libvirt

    from daemon.virt.domain_xml import DomainSpec, build_domain_xml, build_volume_xml
    from daemon.store import Store

    libvirt.registerErrorHandler(lambda *_: None, None)
    directory = temp_dir("baseline")
    try:
        write_bench_config(directory)
        Store(directory / "provisiond.db").migrate()
        db = sqlite3.connect(directory / "provisiond.db", isolation_level=None)
        db.execute("PRAGMA journal_mode=wal")
        db.execute("PRAGMA synchronous=FULL")
        conn = libvirt.open(f"test://{directory / 'host.xml'}")
        pool = conn.storagePoolLookupByName("pool0")
        t0 = time.perf_counter()
        for _ in range(n):
            rid = uuid.uuid4().hex
            now = time.time()
            for i, state in enumerate(STATES):
                db.execute("BEGIN")
                if i == 0:
                    db.execute(
                        "INSERT INTO requests (id, name, owner, template, size, resource_pool,"
                        " hardware_pool, cpus, memory_kib, storage_gb, state, created_at,"
                        " updated_at) VALUES (?, ?, 'u', 'ipxe', 'bench', 'rp', 'hw', 1, 65536,"
                        " 1, ?, ?, ?)", (rid, f"vm-{rid[:8]}", state, now, now))
                else:
                    db.execute("UPDATE requests SET state = ?, updated_at = ? WHERE id = ?",
                               (state, now, rid))
                db.execute("INSERT INTO state_log (request_id, kind, from_state, to_state,"
                           " trigger, at, detail) VALUES (?, 'transition', ?, ?, 't', ?, 'd')",
                           (rid, STATES[i - 1] if i else None, state, now))
                db.execute("COMMIT")
                if state == "storage-creating":
                    vol = pool.createXML(build_volume_xml(f"provisiond-{rid}.qcow2", 1 << 30,
                                                          "qcow2"), 0)
                if state == "defining":
                    conn.defineXML(build_domain_xml(DomainSpec(
                        f"vm-{rid[:8]}", str(uuid.uuid4()), "qemu", "i686", 1, 65536,
                        "pool0", vol.name(), "qcow2", None, "pool-iso", "ipxe.iso", None, rid,
                        "u", "ipxe", "bench", "rp")))
        elapsed = time.perf_counter() - t0
        conn.close()
        return n / elapsed
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10000, help="requests (default 10000)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients")
    args = parser.parse_args()
    baseline = run_baseline(args.n)
    ours = run_provisiond(args.n, args.clients)
    print(f"throughput: provisiond {ours:.0f} req/s, baseline {baseline:.0f} req/s, "
          f"ratio {ours / baseline:.2f} (targets: >= 1000 req/s, ratio >= 0.5); "
          f"n={args.n}, clients={args.clients}")


if __name__ == "__main__":
    main()
