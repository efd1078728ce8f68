"""Placement scaling: per-request cost on a small inventory versus a large one.

    ./dev bench placement_scaling [--n 300] [--small 5x500] [--large 200x50000]

Inventories are ``POOLSxVOLUMES`` (volumes in total, spread evenly over the pools), free
2 GiB qcow2 volumes made by ``bench.common.node_xml`` on test-driver hosts.

(a) Through provisiond (``bench.common.write_bench_config``: size 1 GiB, so no generated
volume is ever reused: each request creates one): start-up time (process start until it
answers on its socket, the full inventory read included), then N requests submitted by
``--clients`` concurrent connections, driven to done; ms/request = wall time / N (after
``--warmup`` unmeasured requests). Also shown: mean time in storage-searching (placement
and its commit) from provisiond's /metrics, and the daemon's peak RSS.

(b) In process: ``place_storage`` (the live path) on a ``LiveInventory`` loaded from a
snapshot of the same generated pools (``HostInventory`` of ``PoolInfo``/``VolumeInfo``),
per decision: *create* (1 GiB: no volume fits; each decision is followed by what the
daemon then does: ``hold`` the new volume's name and ``add_volume`` it) and *reuse*
(2 GiB: each decision picks a free volume, then ``hold`` claims it). For reference, the
dry run (``explain=True``, a verdict for every volume: it grows with the inventory, as
its answer does) on the same inventory (``--scan-k`` decisions).

Target: large / small per-request cost <= 1.5 (through provisiond).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (  # noqa: E402
    GiB,
    Provisiond,
    code_version,
    interruptible,
    load_average,
    metric,
    submit_requests,
    temp_dir,
    wait_all_terminal,
    write_bench_config,
)
from daemon.config import StoragePoolRef  # noqa: E402
from daemon.virt.inventory import HostInventory, PoolInfo, VolumeInfo  # noqa: E402
from daemon.virt.live_inventory import LiveInventory  # noqa: E402
from daemon.placement import place_storage  # noqa: E402

TARGET_RATIO = 1.5
TEMPLATES = [("pool-iso", "ipxe.iso")]


def parse_shape(text: str) -> tuple[int, int]:
    """'200x50000' -> (200 pools, 250 volumes per pool)."""
    pools, total = (int(x) for x in text.lower().split("x"))
    if pools < 1 or total < 0 or total % pools:
        raise argparse.ArgumentTypeError(f"{text}: POOLSxVOLUMES, VOLUMES a multiple of POOLS")
    return pools, total // pools


def shape_text(shape: tuple[int, int]) -> str:
    return f"{shape[0]} pools x {shape[0] * shape[1]} volumes"


# --------------------------------------------------------------------------- (b) in process


def snapshot(pools: int, per_pool: int) -> HostInventory:
    """The generated host as ``daemon.virt.connection`` would read it (test driver: 100 GiB pools)."""
    def pool(name: str, vols: tuple[VolumeInfo, ...]) -> PoolInfo:
        return PoolInfo(name, "dir", True, 100 * GiB, 0, 100 * GiB, vols)
    infos = {"pool-iso": pool("pool-iso", (VolumeInfo("pool-iso", "ipxe.iso",
                                                     "/pools/pool-iso/ipxe.iso", GiB, 0,
                                                     "iso"),))}
    for p in range(pools):
        name = f"pool{p}"
        infos[name] = pool(name, tuple(
            VolumeInfo(name, f"v{p}-{v}.qcow2", f"/pools/{name}/v{p}-{v}.qcow2", 2 * GiB, 0,
                       "qcow2") for v in range(per_pool)))
    return HostInventory("bench", infos)


def load_live(snap: HostInventory) -> LiveInventory:
    """A LiveInventory holding ``snap`` (across the two versions of ``load``: with a read
    journal from ``begin_read()`` first, or without)."""
    inventory = LiveInventory("bench")
    if hasattr(inventory, "begin_read"):
        inventory.load(inventory.begin_read(), snap, {})  # type: ignore[call-arg]
    else:
        inventory.load(snap, {})  # type: ignore[call-arg]
    return inventory


def fast_decisions(snap: HostInventory, refs: list[StoragePoolRef], size: int, k: int,
                   rounds: int) -> tuple[float, float]:
    """µs per ``place_storage`` decision, plus the claim that follows it: (median
    round, best round). Each round starts from a freshly loaded inventory."""
    per_round = []
    for r in range(rounds):
        inventory = load_live(snap)
        gc.collect()
        elapsed = 0
        for i in range(k):
            rid = f"r{r}-{i}"
            t0 = time.perf_counter_ns()
            decision = place_storage(inventory, refs, size_bytes=size, request_id=rid,
                                     template_volumes=TEMPLATES)
            if decision.action == "reuse":
                assert decision.volume is not None
                inventory.hold(decision.volume.pool, decision.volume.name, rid)
            elif decision.action == "create":
                assert decision.pool is not None
                name = f"provisiond-{rid}.qcow2"
                inventory.hold(decision.pool, name, rid)
                inventory.add_volume(VolumeInfo(decision.pool, name,
                                                f"/pools/{decision.pool}/{name}", size, 0,
                                                "qcow2"))
            else:
                raise RuntimeError(f"no storage: {decision.reason}")
            elapsed += time.perf_counter_ns() - t0
        per_round.append(elapsed / k / 1000)
    return median(per_round), min(per_round)


def scan_decisions(snap: HostInventory, refs: list[StoragePoolRef], size: int, k: int
                   ) -> float:
    """µs per dry-run decision (``explain=True``; claims grow as in the daemon)."""
    inventory = load_live(snap)
    t0 = time.perf_counter_ns()
    for i in range(k):
        decision = place_storage(inventory, refs, size_bytes=size, request_id=f"s{i}",
                                 template_volumes=TEMPLATES, explain=True)
        if decision.action == "reuse":
            assert decision.volume is not None
            inventory.hold(decision.volume.pool, decision.volume.name, f"s{i}")
    return (time.perf_counter_ns() - t0) / k / 1000


def in_process(shape: tuple[int, int], k: int, rounds: int, scan_k: int) -> dict[str, float]:
    pools, per_pool = shape
    snap = snapshot(pools, per_pool)
    refs = [StoragePoolRef(f"pool{p}", 100000) for p in range(pools)]
    create = fast_decisions(snap, refs, GiB, k, rounds)
    reuse_k = min(k, pools * per_pool)
    reuse = fast_decisions(snap, refs, 2 * GiB, reuse_k, rounds) if reuse_k else (0.0, 0.0)
    return {"create": create[0], "create_best": create[1], "reuse": reuse[0],
            "reuse_best": reuse[1], "reuse_k": reuse_k,
            "scan_create": scan_decisions(snap, refs, GiB, scan_k),
            "scan_reuse": scan_decisions(snap, refs, 2 * GiB, min(scan_k, reuse_k))
            if reuse_k else 0.0}


# --------------------------------------------------------------------------- (a) provisiond


class Host:
    """A generated test-driver host and a provisiond on it, kept up for several batches."""

    def __init__(self, shape: tuple[int, int], warmup: int, start_timeout: float) -> None:
        self.directory = temp_dir("placement")
        self.daemon: Provisiond | None = None
        self.done = 0
        try:
            t0 = time.monotonic()
            main = write_bench_config(self.directory, pools=shape[0],
                                      volumes_per_pool=shape[1])
            self.generate = time.monotonic() - t0
            self.xml_mb = (self.directory / "host.xml").stat().st_size / 1e6
            self.daemon = Provisiond(main, start_timeout=start_timeout, kill_on_failure=True)
            self.start = self.daemon.ready_seconds
            self.batch(warmup, 4)
        except BaseException:
            self.close()
            raise
        self.per_request: list[float] = []
        self.searching: list[float] = []

    def batch(self, n: int, clients: int) -> float:
        """Seconds per request for ``n`` requests submitted by ``clients`` connections,
        from the first POST to the last done."""
        assert self.daemon is not None
        t0 = time.perf_counter()
        asyncio.run(submit_requests(self.daemon.socket, n, clients))
        counts = wait_all_terminal(self.directory / "provisiond.db", self.done + n,
                                   proc=self.daemon.proc, poll=0.01)
        wall = time.perf_counter() - t0
        self.done += n
        if counts.get("failed"):
            raise RuntimeError(f"{counts['failed']} requests failed; see {self.directory}")
        return wall / n

    def measure(self, n: int, clients: int) -> None:
        assert self.daemon is not None
        labels = 'state="storage-searching"'
        s0 = metric(self.daemon.socket, "provisiond_state_seconds_sum", labels)
        c0 = metric(self.daemon.socket, "provisiond_state_seconds_count", labels)
        self.per_request.append(self.batch(n, clients))
        s1 = metric(self.daemon.socket, "provisiond_state_seconds_sum", labels)
        c1 = metric(self.daemon.socket, "provisiond_state_seconds_count", labels)
        self.searching.append((s1 - s0) / max(1.0, c1 - c0))

    def rss_mb(self) -> float:
        return self.daemon.rss_kib() / 1024 if self.daemon else 0.0

    def close(self) -> None:
        try:
            if self.daemon is not None:
                self.daemon.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def through_provisiond(small: tuple[int, int], large: tuple[int, int], n: int, clients: int,
                       warmup: int, batches: int, start_timeout: float
                       ) -> tuple[Host, Host]:
    """Both daemons up (started one after the other), then ``batches`` alternating
    batches of ``n`` requests on each (small first, then large, ...)."""
    hosts: list[Host] = []
    try:
        hosts.append(Host(small, warmup, start_timeout))
        hosts.append(Host(large, warmup, start_timeout))
        for _ in range(batches):
            for host in hosts:
                host.measure(n, clients)
        for host in hosts:
            host.peak_rss_mb = host.rss_mb()
        return hosts[0], hosts[1]
    finally:
        for host in hosts:
            host.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="requests per daemon run (300)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (16)")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured requests first")
    parser.add_argument("--small", type=parse_shape, default=(5, 100),
                        help="POOLSxVOLUMES in total (default 5x500)")
    parser.add_argument("--large", type=parse_shape, default=(200, 250),
                        help="POOLSxVOLUMES in total (default 200x50000)")
    parser.add_argument("--wide", type=parse_shape, default=(5, 10000),
                        help="in process only: few pools, many volumes (default 5x50000)")
    parser.add_argument("--k", type=int, default=500, help="in-process decisions per round")
    parser.add_argument("--rounds", type=int, default=20, help="in-process rounds (20)")
    parser.add_argument("--scan-k", type=int, default=10,
                        help="dry-run (explain) decisions, for reference (10)")
    parser.add_argument("--batches", type=int, default=3,
                        help="alternating batches of --n on each daemon; the median counts (3)")
    parser.add_argument("--start-timeout", type=float, default=600,
                        help="seconds allowed for a daemon's start-up (600)")
    parser.add_argument("--skip-daemon", action="store_true", help="only (b), in process")
    args = parser.parse_args()
    with interruptible():
        pure = {name: in_process(shape, args.k, args.rounds, args.scan_k)
                for name, shape in (("small", args.small), ("large", args.large),
                                    ("wide", args.wide))}
        hosts = None if args.skip_daemon else through_provisiond(
            args.small, args.large, args.n, args.clients, args.warmup, args.batches,
            args.start_timeout)
    s, lg, w = pure["small"], pure["large"], pure["wide"]
    print(f"placement_scaling details: {code_version()}, {load_average()}; "
          f"small = {shape_text(args.small)}, large = {shape_text(args.large)}, "
          f"wide (in process only) = {shape_text(args.wide)}")
    for case in ("create", "reuse"):
        print(f"  in process, place_storage + claim, {case}: small {s[case]:.1f}, large "
              f"{lg[case]:.1f}, wide {w[case]:.1f} us/decision (median of {args.rounds} "
              f"rounds of {s['reuse_k'] if case == 'reuse' else args.k}; best round "
              f"{s[case + '_best']:.1f}, {lg[case + '_best']:.1f}, {w[case + '_best']:.1f}); "
              f"large/small {lg[case] / s[case]:.2f}")
    print(f"  in process, dry run (explain=True, reference, {args.scan_k} decisions): create "
          f"{s['scan_create']:.0f} / {lg['scan_create']:.0f} / {w['scan_create']:.0f} us, "
          f"reuse {s['scan_reuse']:.0f} / {lg['scan_reuse']:.0f} / {w['scan_reuse']:.0f} us "
          "(small / large / wide)")
    if hosts:
        hs, hl = hosts
        for name, h in (("small", hs), ("large", hl)):
            print(f"  provisiond {name}: host.xml {h.xml_mb:.1f} MB generated in "
                  f"{h.generate:.1f} s, start-up {h.start:.2f} s, ms/request by batch "
                  f"{' '.join(f'{x * 1000:.2f}' for x in h.per_request)}, storage-searching "
                  f"mean {median(h.searching) * 1000:.1f} ms, peak RSS {h.peak_rss_mb:.0f} MB")
        small_ms, large_ms = median(hs.per_request) * 1000, median(hl.per_request) * 1000
        ratio = large_ms / small_ms
        verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
        print(f"placement_scaling: provisiond {small_ms:.2f} ms/request small, "
              f"{large_ms:.2f} ms/request large, ratio {ratio:.2f} (target <= "
              f"{TARGET_RATIO:g}: {verdict}; median of {args.batches} batches of n={args.n}); "
              f"in process create {s['create']:.1f} -> {lg['create']:.1f} us, reuse "
              f"{s['reuse']:.1f} -> {lg['reuse']:.1f} us per decision; start-up "
              f"{hs.start:.1f} s -> {hl.start:.1f} s")
    else:
        print(f"placement_scaling (in process only): create ratio "
              f"{lg['create'] / s['create']:.2f}, reuse ratio {lg['reuse'] / s['reuse']:.2f}")


if __name__ == "__main__":
    main()
