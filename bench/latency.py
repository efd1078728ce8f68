"""Latency: submit -> done at a fixed offered rate, open loop, on the test driver.

    ./dev bench latency [--rate 100] [--seconds 20 | --n 2000] [--poisson] [--poll 0]

provisiond: requests arrive at ``--rate`` per second for ``--seconds`` (evenly spaced, or
``--poisson``), each POSTed on its own asyncio task the moment it is due, whether or not
the earlier ones are done (open loop: a slow daemon makes requests queue, it does not
slow the arrivals). A request's latency is its log's 'done' time minus the client's
time.time() just before the POST (same machine, same clock); the 'done' time is read from
the database after the run (the `at` of ``GET /v1/requests/{id}/log``, without its
rounding to milliseconds): it is stamped when the transition is recorded, one group
commit (one fsync) before a client could see it. ``--poll S`` also measures, on the
client, when ``GET /v1/requests/{id}`` first says done (polling each request every S s:
this adds load).

Baseline, same run: ``bench.common.InlineBaseline`` (throughput.py's baseline: the same
libvirt calls and durable rows in a plain loop) paced at the same rate, open loop too
(latency = 'done' stamp minus the request's scheduled arrival).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (  # noqa: E402
    BENCH_BODY,
    InlineBaseline,
    Provisiond,
    code_version,
    interruptible,
    load_average,
    percentile,
    submit_requests,
    temp_dir,
    wait_all_terminal,
    write_bench_config,
)

TARGET_P99_MS = 50.0
STATES = ("requested", "authorized", "storage-searching", "storage-creating", "defining",
          "done")


def arrivals(n: int, rate: float, poisson: bool, seed: int = 1) -> list[float]:
    """Offsets (s) from the start at which each request is due."""
    if not poisson:
        return [i / rate for i in range(n)]
    rng = random.Random(seed)
    t, out = 0.0, []
    for _ in range(n):
        out.append(t)
        t += rng.expovariate(rate)
    return out


async def offered_load(sock: str, due: list[float], poll: float
                       ) -> tuple[list[tuple[str, float, float, float | None]], list[float]]:
    """Send one request at each due time; per request (id, sent, 202 received, done seen
    by polling or None), and how late the client was at each send (s)."""
    loop = asyncio.get_running_loop()
    results: list[tuple[str, float, float, float | None]] = []
    lags: list[float] = []
    connector = aiohttp.UnixConnector(path=sock, limit=512)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send() -> None:
            sent = time.time()
            async with session.post("http://localhost/v1/requests", json=BENCH_BODY) as r:
                data = await r.json()
                if r.status != 202:
                    raise RuntimeError(f"POST /v1/requests: {r.status} {data}")
            acked = time.time()
            seen = None
            if poll > 0:
                while True:
                    async with session.get(f"http://localhost/v1/requests/{data['id']}") as r:
                        state = (await r.json())["state"]
                    if state in ("done", "failed"):
                        seen = time.time()
                        break
                    await asyncio.sleep(poll)
            results.append((data["id"], sent, acked, seen))

        tasks = []
        start = loop.time() + 0.05
        try:
            for offset in due:
                delay = start + offset - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                lags.append(max(0.0, loop.time() - (start + offset)))
                tasks.append(asyncio.create_task(send()))
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return results, lags


def run_provisiond(rate: float, seconds: float, poisson: bool, warmup: int, poll: float
                   ) -> dict[str, object]:
    directory = temp_dir("latency")
    try:
        daemon = Provisiond(write_bench_config(directory), kill_on_failure=True)
        try:
            database = directory / "provisiond.db"
            # Warm up (imports, first connections, caches); not measured.
            asyncio.run(submit_requests(daemon.socket, warmup, 4))
            wait_all_terminal(database, warmup, proc=daemon.proc)
            due = arrivals(int(rate * seconds), rate, poisson)
            t0 = time.monotonic()
            results, lags = asyncio.run(offered_load(daemon.socket, due, poll))
            sending = time.monotonic() - t0
            counts = wait_all_terminal(database, warmup + len(results), proc=daemon.proc)
            drained = time.monotonic() - t0
        finally:
            daemon.stop()
        db = sqlite3.connect(database)
        try:
            rows = db.execute("SELECT request_id, to_state, at FROM state_log WHERE kind ="
                              " 'transition'").fetchall()
        finally:
            db.close()
        at = {(rid, state): when for rid, state, when in rows}
        e2e, server, ack, seen = [], [], [], []
        for rid, sent, acked, polled in results:
            done = at.get((rid, "done"))
            if done is None:
                continue  # failed: counted below
            e2e.append(done - sent)
            server.append(done - at[(rid, "requested")])
            ack.append(acked - sent)
            if polled is not None:
                seen.append(polled - sent)
        # time in each state (from entering it to entering the next), measured requests only
        in_state: dict[str, list[float]] = {s: [] for s in STATES[:-1]}
        for rid, _sent, _acked, _polled in results:
            times = [at.get((rid, s)) for s in STATES]
            if None in times:
                continue
            for state, t0_, t1_ in zip(STATES, times, times[1:]):
                in_state[state].append(t1_ - t0_)  # type: ignore[operator]
        return {"e2e": e2e, "server": server, "ack": ack, "seen": seen, "lags": lags,
                "in_state": in_state,
                "failed": counts.get("failed", 0), "n": len(results), "sending": sending,
                "drained": drained}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def run_baseline(rate: float, n: int) -> list[float]:
    """Per-request latency of the inline baseline, paced at ``rate`` (open loop)."""
    directory = temp_dir("latency-baseline")
    try:
        base = InlineBaseline(directory)
        try:
            for _ in range(20):  # warm up
                base.run_one()
            latencies = []
            start = time.time() + 0.05
            for i in range(n):
                due = start + i / rate
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
                latencies.append(base.run_one() - due)
            return latencies
        finally:
            base.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def ms(values: list[float], q: float) -> str:
    return f"{percentile(values, q) * 1000:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100, help="requests/s (default 100)")
    parser.add_argument("--seconds", type=float, default=20, help="duration (default 20)")
    parser.add_argument("--n", type=int, default=None,
                        help="requests in all (default rate x seconds; sets --seconds)")
    parser.add_argument("--poisson", action="store_true",
                        help="exponential inter-arrival times instead of evenly spaced")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured requests first")
    parser.add_argument("--poll", type=float, default=0.0,
                        help="also poll each request every S s for a client-seen done time")
    parser.add_argument("--baseline-seconds", type=float, default=None,
                        help="baseline duration at the same rate (default: --seconds)")
    args = parser.parse_args()
    if args.n is not None:
        args.seconds = args.n / args.rate
    with interruptible():
        ours = run_provisiond(args.rate, args.seconds, args.poisson, args.warmup, args.poll)
        n_base = int(args.rate * (args.baseline_seconds or args.seconds))
        base = run_baseline(args.rate, n_base)
    e2e, server, ack, lags = ours["e2e"], ours["server"], ours["ack"], ours["lags"]
    assert isinstance(e2e, list) and isinstance(server, list) and isinstance(ack, list)
    assert isinstance(lags, list) and isinstance(ours["seen"], list)
    p99 = percentile(e2e, 0.99) * 1000
    verdict = "met" if p99 <= TARGET_P99_MS and not ours["failed"] else "MISSED"
    arrival = "Poisson" if args.poisson else "evenly spaced"
    print(f"latency details: {code_version()}, {load_average()}; {ours['n']} requests "
          f"({arrival}) sent in {ours['sending']:.1f} s, all terminal after "
          f"{ours['drained']:.1f} s, {ours['failed']} failed; client lateness p99 "
          f"{ms(lags, 0.99)} ms, max {max(lags) * 1000:.1f} ms; POST->202 p50 {ms(ack, 0.5)} "
          f"p99 {ms(ack, 0.99)} ms; server-side requested->done p50 {ms(server, 0.5)} "
          f"p99 {ms(server, 0.99)} ms")
    in_state = ours["in_state"]
    assert isinstance(in_state, dict)
    print("latency by state (p50 / p99 ms): " + ", ".join(
        f"{state} {ms(v, 0.5)} / {ms(v, 0.99)}" for state, v in in_state.items()))
    if ours["seen"]:
        seen = ours["seen"]
        assert isinstance(seen, list)
        print(f"latency client-seen (polling every {args.poll * 1000:g} ms): "
              f"p50 {ms(seen, 0.5)} p90 {ms(seen, 0.9)} p99 {ms(seen, 0.99)} ms")
    print(f"latency: provisiond submit->done p50 {ms(e2e, 0.5)} ms, p90 {ms(e2e, 0.9)} ms, "
          f"p99 {p99:.1f} ms, max {max(e2e) * 1000:.1f} ms at {args.rate:g} req/s x "
          f"{args.seconds:g} s (target p99 <= {TARGET_P99_MS:g} ms: {verdict}); "
          f"baseline inline p50 {ms(base, 0.5)} ms, p99 {ms(base, 0.99)} ms "
          f"(n={len(base)}, same rate); p50 ratio "
          f"{percentile(e2e, 0.5) / percentile(base, 0.5):.1f}x")


if __name__ == "__main__":
    main()
