"""Fleet: provisiond on a hardware pool of many hosts versus one host (issue 14, point 7).

    ./dev bench fleet [--n 300] [--hosts 50] [--clients 8] [--batches 2]

Two provisiond processes, same run, same requests; only the hardware pool differs:

- *fleet*: ``--hosts`` test-driver hosts from ``harness.fleet.write_fleet`` (cpus 4-32,
  memory 8-128 GiB, drawn from ``--seed``), each its own libvirt connection;
- *single*: one test-driver host of the same generator whose cpus and memory are the
  fleet's summed, so both have room for the same requests.

Both: allocation ratios 1.0 (capacity binds), policy ``spread``, VM disks created in each
host's own ``pool-dir`` (over-committed: the test driver's pools are 100 GiB), size
``bench`` = 1 vCPU, 512 MiB, 1 GiB. Each daemon is started (start-up = process start until
it answers on its socket: every host opened and its inventory read), warmed up by
``--warmup`` requests, then ``--batches`` alternating batches (single, fleet, single,
...) of N requests POSTed by ``--clients`` connections and driven to done or failed.

Figures: throughput (done requests / wall time from the first POST to the last terminal;
failed requests are counted apart, and fail the target), the mean time in each state from
provisiond's /metrics (placement = authorized, where the host is chosen, + storage-
searching, where the storage is), RSS (idle after start-up, peak, at the end) and
threads, the libvirt calls made (up to the end of the warm-up; per measured request),
and from the database how the done requests spread over the hosts, each host's vCPUs and
memory checked against what libvirt says it has. Targets: fleet / single throughput
>= 0.5, placement time fleet / single <= 1.5.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import re
import shutil
import sqlite3
import sys
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

import libvirt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (  # noqa: E402
    Provisiond,
    code_version,
    failed_reasons,
    interruptible,
    load_average,
    metric,
    metrics_text,
    submit_requests,
    temp_dir,
    wait_all_terminal,
)
from harness.daemon import TEMPLATES, write_config  # noqa: E402
from harness.fleet import fleet_shapes, node_xml, write_fleet  # noqa: E402

TARGET_THROUGHPUT = 0.5
TARGET_PLACEMENT = 1.5
SIZE = {"cpus": 1, "memory": 524288, "storage_size_in_gb": 1}
STATES = ("requested", "authorized", "storage-searching", "storage-creating", "defining")
PLACEMENT_STATES = ("authorized", "storage-searching")
KIB_PER_MB = 1024
CALL_COUNT = re.compile(r'^provisiond_libvirt_call_seconds_count\{.*call="([^"]+)".*\} (\S+)$')


def libvirt_calls(sock: str) -> Counter[str]:
    """libvirt calls made so far by call name, all hosts together, from /metrics."""
    calls: Counter[str] = Counter()
    for line in metrics_text(sock).splitlines():
        found = CALL_COUNT.match(line)
        if found:
            calls[found.group(1)] += int(float(found.group(2)))
    return calls


def thread_count(pid: int) -> int:
    """Threads of a process, from ``/proc/<pid>/status``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


@dataclass
class HostUse:
    """What the done requests hold on one host, and what libvirt says the host has."""

    name: str
    requests: int
    cpus: int
    memory_kib: int
    capacity_cpus: int
    capacity_memory_kib: int

    def over(self) -> bool:
        """More vCPUs or memory placed than the host has (allocation ratios 1.0)."""
        return self.cpus > self.capacity_cpus or self.memory_kib > self.capacity_memory_kib


@dataclass
class Setup:
    """One hardware pool and the provisiond on it."""

    label: str
    directory: Path
    hosts: list[dict[str, str]]
    daemon: Provisiond | None = None
    submitted: int = 0
    failed_before: int = 0
    rates: list[float] = field(default_factory=list)
    measured_done: int = 0
    measured_failed: int = 0
    measured_wall: float = 0.0
    states0: dict[str, tuple[float, float]] = field(default_factory=dict)
    state_ms: dict[str, float] = field(default_factory=dict)
    start_s: float = 0.0
    rss_idle_kib: int = 0
    rss_peak_kib: int = 0
    rss_end_kib: int = 0
    failed_all: int = 0
    threads: int = 0
    calls_warmup: Counter[str] = field(default_factory=Counter)
    calls_measured: Counter[str] = field(default_factory=Counter)
    reasons: dict[str, int] = field(default_factory=dict)
    uses: list[HostUse] = field(default_factory=list)

    def start(self, warmup: int, clients: int, start_timeout: float) -> None:
        """Write the configuration, start provisiond, warm it up."""
        main = write_config(
            self.directory, hosts=self.hosts, sizes={"bench": SIZE},
            templates={"ipxe": TEMPLATES["ipxe"]},
            # Thin qcow2 volumes on 100 GiB test-driver pools: capacity is the hosts' here.
            storage_pools=[{"name": "pool-dir", "overcommit": 100000}],
            grants={"CLOUD_CREATE": {"users": [getpass.getuser()]}},
            hardware={"cpu_allocation_ratio": 1.0, "ram_allocation_ratio": 1.0,
                      "host_policy": "spread"})
        self.daemon = Provisiond(main, start_timeout=start_timeout, kill_on_failure=True)
        self.start_s = self.daemon.ready_seconds
        self.rss_idle_kib = self.daemon.rss_now_kib()
        self.batch(warmup, clients)
        self.states0 = self.state_sums()
        self.calls_warmup = libvirt_calls(self.daemon.socket)

    def state_sums(self) -> dict[str, tuple[float, float]]:
        """(seconds, requests) so far in each state, from /metrics."""
        assert self.daemon is not None
        sock = self.daemon.socket
        return {s: (metric(sock, "provisiond_state_seconds_sum", f'state="{s}"'),
                    metric(sock, "provisiond_state_seconds_count", f'state="{s}"'))
                for s in STATES}

    def batch(self, n: int, clients: int) -> tuple[float, int, int]:
        """Submit ``n`` requests, wait until all are terminal: (wall s, done, failed)."""
        assert self.daemon is not None
        t0 = time.perf_counter()
        asyncio.run(submit_requests(self.daemon.socket, n, clients))
        self.submitted += n
        counts = wait_all_terminal(self.directory / "provisiond.db", self.submitted,
                                   proc=self.daemon.proc, poll=0.01)
        wall = time.perf_counter() - t0
        failed = counts.get("failed", 0) - self.failed_before
        self.failed_before = counts.get("failed", 0)
        return wall, n - failed, failed

    def measure(self, n: int, clients: int) -> None:
        """One measured batch."""
        wall, done, failed = self.batch(n, clients)
        self.rates.append(done / wall)
        self.measured_wall += wall
        self.measured_done += done
        self.measured_failed += failed

    def finish(self) -> None:
        """Read what is reported while the daemon still runs: the mean time in each state
        over the measured batches, RSS, failure reasons, the hosts' shares."""
        assert self.daemon is not None
        now = self.state_sums()
        for s in STATES:
            seconds, count = now[s][0] - self.states0[s][0], now[s][1] - self.states0[s][1]
            self.state_ms[s] = seconds / count * 1000 if count else float("nan")
        self.rss_peak_kib = self.daemon.rss_kib()
        self.rss_end_kib = self.daemon.rss_now_kib()
        self.threads = thread_count(self.daemon.proc.pid)
        self.calls_measured = libvirt_calls(self.daemon.socket) - self.calls_warmup
        self.reasons = failed_reasons(self.directory / "provisiond.db")
        self.failed_all = self.failed_before
        self.uses = self.host_use()

    def throughput(self) -> float:
        """Done requests per second over the measured batches."""
        return self.measured_done / self.measured_wall

    def placement_ms(self) -> float:
        """Mean ms per request in the states where host and storage are chosen."""
        return sum(self.state_ms[s] for s in PLACEMENT_STATES)

    def host_use(self) -> list[HostUse]:
        """Every host's share of the done requests (warm-up included), in host order."""
        db = sqlite3.connect(self.directory / "provisiond.db", timeout=30)
        try:
            rows = {host: (count, cpus, memory) for host, count, cpus, memory in db.execute(
                "SELECT host, COUNT(*), SUM(cpus), SUM(memory_kib) FROM requests"
                " WHERE state = 'done' GROUP BY host")}
        finally:
            db.close()
        uses = []
        for h in self.hosts:
            conn = libvirt.open(h["uri"])
            try:
                _model, memory_mib, cpus, *_ = conn.getInfo()
            finally:
                conn.close()
            count, used_cpus, used_memory = rows.get(h["name"], (0, 0, 0))
            uses.append(HostUse(h["name"], count, used_cpus, used_memory, cpus,
                                memory_mib * 1024))
        return uses

    def close(self) -> None:
        """Stop provisiond, remove the directory."""
        try:
            if self.daemon is not None:
                self.daemon.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def make_setups(hosts: int, seed: int) -> tuple[Setup, Setup]:
    """The single host and the fleet, in fresh directories."""
    shapes = fleet_shapes(hosts, seed)
    single_dir = temp_dir("fleet-single")
    xml = single_dir / "single.xml"
    xml.write_text(node_xml(0, sum(c for c, _ in shapes), sum(m for _, m in shapes)))
    single = Setup("single", single_dir, [{"name": "single", "uri": f"test://{xml}"}])
    fleet_dir = temp_dir("fleet")
    fleet = Setup("fleet", fleet_dir, write_fleet(fleet_dir / "hosts", hosts, seed=seed))
    return single, fleet


def check_room(hosts: int, seed: int, requests: int) -> None:
    """Exit with a message unless the fleet (so the single host too) holds ``requests``."""
    shapes = fleet_shapes(hosts, seed)
    cpus, memory_kib = sum(c for c, _ in shapes), sum(m for _, m in shapes)
    if requests * SIZE["cpus"] > cpus or requests * SIZE["memory"] > memory_kib:
        raise SystemExit(f"{requests} requests of {SIZE['cpus']} vCPU do not fit in {hosts} "
                         f"hosts of {cpus} cpus in all: lower --n or --batches")


def calls_text(calls: Counter[str], per: int = 0) -> str:
    """'getInfo 50, ...' (``per``: divided by that many requests)."""
    return ", ".join(f"{name} {count / per:.2f}" if per else f"{name} {count}"
                     for name, count in sorted(calls.items()))


def spread_text(uses: list[HostUse]) -> str:
    """How the requests spread over the hosts, and whether any host is over capacity."""
    counts = [u.requests for u in uses]
    full = sum(1 for u in uses if u.cpus == u.capacity_cpus)
    over = [u.name for u in uses if u.over()]
    per_host = " ".join(f"{u.requests}/{u.capacity_cpus}" for u in uses)
    return (f"{sum(1 for c in counts if c)} of {len(uses)} hosts used; requests per host min "
            f"{min(counts)}, median {median(counts):g}, max {max(counts)}; {full} hosts with "
            f"all their cpus placed; over capacity: {len(over)} hosts "
            f"({', '.join(over) or 'none'}; must be none)\n"
            + textwrap.fill(f"requests/cpus per host, in host order: {per_host}", 88,
                            initial_indent="    ", subsequent_indent="      "))


def run(args: argparse.Namespace) -> tuple[Setup, Setup]:
    """Both daemons up, the alternating batches, the figures read; everything removed."""
    single, fleet = make_setups(args.hosts, args.seed)
    try:
        for setup in (single, fleet):
            setup.start(args.warmup, args.clients, args.start_timeout)
        for _ in range(args.batches):
            for setup in (single, fleet):
                setup.measure(args.n, args.clients)
        for setup in (single, fleet):
            setup.finish()
        return single, fleet
    finally:
        for setup in (single, fleet):
            setup.close()


def main() -> None:
    """Parse the arguments, run both configurations, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="requests per batch (300)")
    parser.add_argument("--hosts", type=int, default=50, help="hosts of the fleet (50)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (8)")
    parser.add_argument("--batches", type=int, default=2,
                        help="measured batches on each daemon, alternating (2)")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured requests first")
    parser.add_argument("--seed", type=int, default=0, help="the fleet's shapes (0)")
    parser.add_argument("--start-timeout", type=float, default=120,
                        help="seconds allowed for a daemon's start-up (120)")
    args = parser.parse_args()
    check_room(args.hosts, args.seed, args.warmup + args.batches * args.n)
    with interruptible():
        single, fleet = run(args)
    shapes = fleet_shapes(args.hosts, args.seed)
    print(f"fleet details: {code_version()}, {load_average()}; {args.hosts} hosts of "
          f"{sum(c for c, _ in shapes)} cpus and {sum(m for _, m in shapes) // 1024**2} GiB "
          f"in all (seed {args.seed}) against one host of the same; {args.batches} batches "
          f"of n={args.n} each, {args.clients} clients, {args.warmup} warm-up")
    for s in (single, fleet):
        states = ", ".join(f"{name} {s.state_ms[name]:.2f}" for name in STATES)
        reasons = f" ({s.reasons})" if s.failed_all else ""
        print(f"  {s.label}: start-up {s.start_s:.2f} s; done/s by batch "
              f"{' '.join(f'{r:.0f}' for r in s.rates)}; failed {s.measured_failed} measured, "
              f"{s.failed_all} with the warm-up{reasons}"
              f"\n    time in state (ms/request): {states}\n    RSS idle after start-up "
              f"{s.rss_idle_kib / KIB_PER_MB:.1f} MB, peak {s.rss_peak_kib / KIB_PER_MB:.1f} MB,"
              f" at the end {s.rss_end_kib / KIB_PER_MB:.1f} MB; {s.threads} threads\n"
              f"    libvirt calls up to the end of the warm-up: {calls_text(s.calls_warmup)}; "
              f"per measured request: {calls_text(s.calls_measured, s.measured_done)}\n"
              f"    spread: {spread_text(s.uses)}")
    throughput = fleet.throughput() / single.throughput()
    placement = fleet.placement_ms() / single.placement_ms()
    failed = single.failed_all + fleet.failed_all
    over = sum(u.over() for u in single.uses + fleet.uses)
    t_verdict = "met" if throughput >= TARGET_THROUGHPUT and not failed else "MISSED"
    p_verdict = "met" if placement <= TARGET_PLACEMENT else "MISSED"
    print(f"fleet: throughput {fleet.throughput():.0f} req/s on {args.hosts} hosts, "
          f"{single.throughput():.0f} on 1, ratio {throughput:.2f} (target >= "
          f"{TARGET_THROUGHPUT:g}: {t_verdict}); placement (authorized + storage-searching) "
          f"{fleet.placement_ms():.2f} vs {single.placement_ms():.2f} ms/request, ratio "
          f"{placement:.2f} (target <= {TARGET_PLACEMENT:g}: {p_verdict}); start-up "
          f"{single.start_s:.2f} -> {fleet.start_s:.2f} s; peak RSS "
          f"{single.rss_peak_kib / KIB_PER_MB:.0f} -> {fleet.rss_peak_kib / KIB_PER_MB:.0f} MB;"
          f" failed {failed} (must be 0); "
          f"hosts over capacity {over} (must be 0)")


if __name__ == "__main__":
    main()
