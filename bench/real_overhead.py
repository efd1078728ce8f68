"""provisiond's overhead on a real libvirtd with QEMU: per-VM time through provisiond versus
the bare libvirt calls it makes, same run, same host (issue 6, point 6).

    ./dev bench real_overhead [--n 50] [--rounds 1] [--workers 4] [--poll 0]
                              [--no-concurrent] [--profile out.svg]

One VM = a 1 GiB qcow2 volume created in a dir pool + a domain defined on it (not started).

- provisiond: ``POST /v1/requests`` on its socket, then ``GET /v1/requests/{id}?wait=300``,
  which the daemon answers once the request is done (``--poll S``: a plain GET every S s
  instead); client-observed; also the server-side time (request log:
  ``requested`` -> ``done``) and, from ``/metrics``, where that time goes.
- raw calls: the Python binding, synchronous, in this process: ``storagePool.createXML`` of
  the same volume XML (flags 0, like provisiond) + ``conn.defineXML`` of the same domain
  XML (both built by ``daemon/virt/domain_xml.py``); the pool looked up once.
- sequential (N one after the other), then concurrent: N provisiond requests submitted back
  to back versus the raw pair run by ``--workers`` threads on one connection (provisiond's
  libvirt thread pool has 4 workers); per VM = wall time / N.

Each phase starts on an empty pool; each provisiond phase on a fresh provisiond and
database, after a warm-up of 2 VMs (connection, capabilities) that is then removed;
provisiond is stopped while the raw calls run (it would otherwise handle their events).
Everything (provisiond, domains, volumes, pool, libvirtd, temp dirs) is removed at the end,
also on error or Ctrl-C. The figures come last on stdout.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realhost import (  # noqa: E402
    WARMUP,
    RealHost,
    code_version,
    interruptible,
    ms,
    require_root_and_packages,
    say,
    stats,
)

TARGET = 1.10


RAW_SPLIT: list[tuple[float, float]] = []
"""(createXML, defineXML) seconds of each sequential raw pair."""


def raw_pair(host: RealHost, pool: Any, vol_xml: str, dom_xml: str) -> float:
    t0 = time.perf_counter()
    pool.createXML(vol_xml, 0)
    t1 = time.perf_counter()
    host.conn.defineXML(dom_xml)
    t2 = time.perf_counter()
    RAW_SPLIT.append((t1 - t0, t2 - t1))
    return t2 - t0


def raw_inputs(host: RealHost, prefix: str, n: int) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        vol = f"{prefix}-{i}.qcow2"
        out.append((host.volume_xml(vol), host.domain_xml(f"{prefix}-{i}", vol)))
    return out


def raw_sequential(host: RealHost, n: int) -> list[float]:
    inputs = raw_inputs(host, "raw-seq", n)
    return [raw_pair(host, host.storage_pool, v, d) for v, d in inputs]


def raw_concurrent(host: RealHost, n: int, workers: int) -> float:
    inputs = raw_inputs(host, "raw-conc", n)
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for f in [pool.submit(raw_pair, host, host.storage_pool, v, d) for v, d in inputs]:
            f.result()
    return time.perf_counter() - t0


def metric_delta(samples: list[tuple[dict, dict]], name: str, key: str) -> dict[str, float]:
    """{label value of ``key``: sum of (after - before)} for samples called ``name``."""
    out: dict[str, float] = {}
    for before, after in samples:
        for (sample, labels), value in after.items():
            if sample != name:
                continue
            label = dict(labels).get(key, "")
            out[label] = out.get(label, 0.0) + value - before.get((sample, labels), 0.0)
    return out


def median(values: list[float]) -> float:
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def breakdown(samples: list[tuple[dict, dict]], n: int) -> list[str]:
    """Per VM, from provisiond's /metrics (before, after each phase): time in each state,
    libvirt calls."""
    lines = []
    state_sum = metric_delta(samples, "provisiond_state_seconds_sum", "state")
    order = ["requested", "authorized", "storage-searching", "storage-creating", "defining"]
    parts = [f"{s} {ms(state_sum[s] / n)}" for s in order if state_sum.get(s)]
    lines.append(f"  in each state (ms/VM): {', '.join(parts)}; "
                 f"total {ms(sum(state_sum.values()) / n)}")
    call_sum = metric_delta(samples, "provisiond_libvirt_call_seconds_sum", "call")
    call_count = metric_delta(samples, "provisiond_libvirt_call_seconds_count", "call")
    calls = sorted((c for c in call_count if call_count[c]), key=lambda c: -call_sum[c])
    parts = [f"{c} {call_count[c] / n:g}x {ms(call_sum[c] / n)}" for c in calls]
    lines.append(f"  libvirt calls (per VM: count, ms incl. thread hop): {', '.join(parts)}; "
                 f"total {ms(sum(call_sum.values()) / n)}")
    return lines


def start_profiler(pid: int, out: str) -> subprocess.Popen[bytes]:
    fmt = "flamegraph" if out.endswith(".svg") else (
        "speedscope" if out.endswith(".json") else "raw")
    exe = Path(sys.executable).parent / "py-spy"
    if not exe.exists():
        sys.exit(f"--profile needs py-spy: {Path(sys.executable).parent}/pip install py-spy")
    proc = subprocess.Popen([str(exe), "record", "--pid", str(pid), "--rate", "1000",
                             "--threads", "--format", fmt, "--output", out, "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # attached
    return proc


def stop_profiler(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50, help="VMs per phase (default 50)")
    parser.add_argument("--workers", type=int, default=4,
                        help="threads for the concurrent raw calls (default 4, as provisiond)")
    parser.add_argument("--poll", type=float, default=0,
                        help="seconds between two GETs while waiting for done; 0 (default): "
                             "one GET ?wait= the daemon answers when the request is done")
    parser.add_argument("--profile", metavar="FILE",
                        help="py-spy record provisiond during the sequential phase "
                             "(.svg flamegraph, .json speedscope, else raw)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the sequential pair (provisiond, raw) this many times, "
                             "alternating, and pool the samples (default 1)")
    parser.add_argument("--no-concurrent", action="store_true", help="sequential phases only")
    args = parser.parse_args(argv)
    n = args.n

    require_root_and_packages()
    version = code_version()
    load0 = os.getloadavg()[0]
    host = RealHost()
    profiler = None
    report: list[str] = []
    with interruptible():
        try:
            host.start()

            prov_times: list[float] = []
            server: list[float] = []
            raw_times: list[float] = []
            split: list[tuple[float, float]] = []
            samples: list[tuple[dict, dict]] = []
            for r in range(args.rounds):
                of = f" (round {r + 1} of {args.rounds})" if args.rounds > 1 else ""
                daemon = host.warm_provisiond(args.poll)
                say(f"provisiond, sequential: {n} VMs{of} ...")
                before = host.metrics()
                if args.profile and r == 0:
                    assert daemon.proc is not None
                    profiler = start_profiler(daemon.proc.pid, args.profile)
                ids, times = host.provision_sequential(n, args.poll)
                if profiler is not None:
                    stop_profiler(profiler)
                    profiler = None
                samples.append((before, host.metrics()))
                prov_times += times
                server += [host.server_seconds(i) for i in ids]
                host.stop_provisiond()  # idle during the raw phases: no event handling there
                host.reset()

                say(f"raw calls, sequential: {n} VMs{of} ...")
                raw_sequential(host, WARMUP)
                host.reset()
                RAW_SPLIT.clear()
                raw_times += raw_sequential(host, n)
                split += RAW_SPLIT
                host.reset()

            total = n * args.rounds
            prov_seq = sum(prov_times) / total
            raw_seq = sum(raw_times) / total
            rounds = f", {args.rounds} rounds" if args.rounds > 1 else ""
            report.append(f"provisiond sequential{rounds}, client-observed: {stats(prov_times)}")
            report.append(f"provisiond sequential, server-side (requested->done): "
                          f"{stats(server)}")
            report.extend(breakdown(samples, total))
            report.append(f"raw calls sequential (createXML + defineXML): {stats(raw_times)}")
            report.append(f"  of which createXML {ms(sum(c for c, _ in split) / total)}, "
                          f"defineXML {ms(sum(d for _, d in split) / total)} ms/VM")
            report.append(f"ratio of medians {median(prov_times) / median(raw_times):.2f}")

            conc_line = ""
            if not args.no_concurrent:
                host.warm_provisiond(args.poll)
                say(f"provisiond, concurrent: {n} VMs ...")
                _ids, prov_wall, failed = host.provision_concurrent(n, args.poll)
                host.stop_provisiond()
                host.reset()
                say(f"raw calls, concurrent ({args.workers} threads): {n} VMs ...")
                raw_wall = raw_concurrent(host, n, args.workers)
                host.reset()
                report.append(f"provisiond concurrent: {n} VMs in {prov_wall:.3f} s; "
                              f"raw calls on {args.workers} threads: {raw_wall:.3f} s")
                if failed:
                    reasons = sorted(set(failed.values()))
                    report.append(f"  provisiond concurrent: {len(failed)} of {n} requests "
                                  f"FAILED, e.g.: {reasons[0]}")
                conc_line = (f"real_overhead concurrent: provisiond {ms(prov_wall / n)} ms/VM, "
                             f"raw calls ({args.workers} threads) {ms(raw_wall / n)} ms/VM, "
                             f"ratio {prov_wall / raw_wall:.2f}"
                             + (f" ({len(failed)} of {n} provisiond requests failed)"
                                if failed else ""))
        finally:
            if profiler is not None:
                stop_profiler(profiler)
            say("cleaning up ...")
            host.stop()

    print(f"provisiond measured: {version}; load average {load0:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after ({os.cpu_count()} CPUs)")
    print("\n".join(report))
    if args.profile:
        print(f"py-spy profile of provisiond (sequential phase): {args.profile}")
    print()
    ratio = prov_seq / raw_seq
    print(f"real_overhead: provisiond {ms(prov_seq)} ms/VM, raw calls {ms(raw_seq)} ms/VM, "
          f"ratio {ratio:.2f} (target <= {TARGET:.2f}: {'met' if ratio <= TARGET else 'MISSED'}; "
          f"sequential, n={n}{' x ' + str(args.rounds) + ' rounds' if args.rounds > 1 else ''}, "
          f"1 GiB qcow2 in a dir pool + define)")
    if conc_line:
        print(conc_line)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
