"""Recovery: N requests in flight, SIGKILL provisiond, restart; time until all are terminal.

    ./dev bench recovery [--n 1000] [--clients 64] [--pause-libvirtd] [--test-driver]

Default: on a real libvirtd with QEMU (``bench/realhost.py``: ``harness/libvirtd.py``'s
private libvirtd, a ``dir`` pool, provisiond configured as the end-to-end tests do; root
only). N requests are POSTed by ``--clients`` concurrent connections as fast as they go;
right after the last 202, provisiond is SIGKILLed. The requests still in flight then are
counted from its SQLite database (sqlite3, after the kill). provisiond is started again
on the same configuration and database; the time from that start until every request is
done or failed (read from the database) is the figure. ``--pause-libvirtd`` stops
libvirtd (SIGSTOP) while submitting and resumes it (SIGCONT) after the kill, so that no
request can finish before the kill: all N are in flight, most waiting on their first
libvirt call.

Then the host is checked, through the libvirt binding: volumes named
``provisiond-<request id>...`` and domains whose provisiond metadata names a request,
counted per request: more than one is a duplicate (must be 0). Also counted: done
requests whose volume or domain is missing, and volumes or domains left for a failed
request or for no request at all (orphans).

``--test-driver``: the embedded test-driver host of ``bench.common.write_bench_config``
instead, for a quick run. That host lives inside the daemon process and is lost with it,
so this measures only the time to terminal, not duplicates.

Target: all terminal <= 10 s after the restart, 0 duplicates.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (  # noqa: E402
    TERMINAL_STATES,
    Provisiond,
    code_version,
    db_state_counts,
    failed_reasons,
    interruptible,
    load_average,
    submit_requests,
    temp_dir,
    wait_all_terminal,
    write_bench_config,
)

TARGET_SECONDS = 10.0
VOLUME_RE = re.compile(r"^provisiond-([0-9a-f]{32})(?:\..*)?$")


def in_flight(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k not in TERMINAL_STATES)


def wait_rollbacks(database: Path, timeout: float = 120) -> int:
    """Wait until no failed request's rollback is pending; how many still are."""
    deadline = time.monotonic() + timeout
    while True:
        db = sqlite3.connect(database, timeout=30)
        try:
            pending = db.execute("SELECT COUNT(*) FROM requests WHERE state = 'failed' AND"
                                 " cleaned_up = 0").fetchone()[0]
        finally:
            db.close()
        if not pending or time.monotonic() > deadline:
            return int(pending)
        time.sleep(0.1)


def requests_by_state(database: Path) -> dict[str, str]:
    db = sqlite3.connect(database, timeout=30)
    try:
        return dict(db.execute("SELECT id, state FROM requests"))
    finally:
        db.close()


def check_host(conn: Any, all_volumes: list[Any], states: dict[str, str]) -> dict[str, int]:
    """Duplicates, missing pieces and leftovers on the real host."""
    import libvirt

    from daemon.virt.domain_xml import METADATA_NS, parse_request_metadata

    volumes: Counter[str] = Counter()
    orphans = 0
    for vol in all_volumes:
        m = VOLUME_RE.match(vol.name())
        if m:
            volumes[m.group(1)] += 1
    domains: Counter[str] = Counter()
    for dom in conn.listAllDomains():
        try:
            meta = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, METADATA_NS, 0)
        except libvirt.libvirtError:
            orphans += 1  # not provisiond's
            continue
        rid = parse_request_metadata(meta).get("request_id")
        if rid:
            domains[rid] += 1
    out = {"dup_volumes": sum(1 for c in volumes.values() if c > 1),
           "dup_domains": sum(1 for c in domains.values() if c > 1),
           "missing": 0, "leftovers": 0, "orphans": orphans}
    for rid, state in states.items():
        if state == "done":
            out["missing"] += (volumes[rid] == 0) + (domains[rid] == 0)
        elif state == "failed":
            out["leftovers"] += volumes[rid] + domains[rid]
    out["orphans"] += sum(c for rid, c in volumes.items() if rid not in states)
    out["orphans"] += sum(c for rid, c in domains.items() if rid not in states)
    return out


def real_host_class() -> Any:
    """``bench.realhost.RealHost`` with ``pools`` dir pools instead of one (the first holds
    the ISO), all in the hardware pool, in order. (Written when a reservation held its
    volume's full size against the pool's free space; thin volumes now reserve no space,
    so one pool would do, but several keep the run comparable with earlier figures.)"""

    from bench.realhost import Daemon, RealHost

    class MultiPoolHost(RealHost):  # type: ignore[misc,valid-type]
        def __init__(self, pools: int) -> None:
            super().__init__()
            self.extra_pools = [f"{self.pool}-{i}" for i in range(1, pools)]

        def start(self) -> None:
            super().start()
            for name in self.extra_pools:
                self.libvirtd.create_dir_pool(name)

        def fresh_provisiond(self) -> Daemon:
            """As RealHost's, with every pool in the hardware pool."""
            return super().fresh_provisiond([self.pool, *self.extra_pools])

        def all_volumes(self) -> list[Any]:
            out = []
            for name in [self.pool, *self.extra_pools]:
                pool = self.conn.storagePoolLookupByName(name)
                pool.refresh(0)
                out.extend(pool.listAllVolumes())
            return out

        def empty_host(self) -> int:
            undefined = super().empty_host()
            for name in self.extra_pools:  # the pools go with libvirtd's directory
                try:
                    pool = self.conn.storagePoolLookupByName(name)
                    for vol in pool.listAllVolumes():
                        vol.delete(0)
                    pool.refresh(0)
                except Exception:  # noqa: BLE001 - best effort, libvirtd is stopped next
                    pass
            return undefined

    return MultiPoolHost


def auto_pools(n: int) -> int:
    """Enough pools for n reservations of 1 GiB on this filesystem's free space."""
    st = os.statvfs(tempfile.gettempdir())
    free_gib = st.f_bavail * st.f_frsize / 1024**3
    return max(1, math.ceil(n / max(1.0, free_gib - 8))) + 1


def run_real(n: int, clients: int, pause: bool, pools: int, timeout: float,
             baseline_workers: int) -> dict[str, Any]:
    from bench.realhost import require_root_and_packages, say

    require_root_and_packages()
    with real_host_class()(pools) as host:
        daemon = host.fresh_provisiond()
        database = daemon.database
        libvirtd_pid = host.libvirtd.libvirtd
        assert libvirtd_pid is not None
        say(f"submitting {n} requests{' (libvirtd paused)' if pause else ''} ...")
        paused = False
        try:
            if pause:
                os.kill(libvirtd_pid, signal.SIGSTOP)
                paused = True
            t0 = time.monotonic()
            asyncio.run(submit_requests(daemon.socket, n, clients))
            submit = time.monotonic() - t0
            assert daemon.proc is not None
            daemon.proc.kill()
            daemon.proc.wait()
        finally:
            if paused:
                os.kill(libvirtd_pid, signal.SIGCONT)
        at_kill = db_state_counts(database)
        say(f"killed provisiond; at the kill: {at_kill}; restarting ...")
        t0 = time.monotonic()
        daemon.start(timeout=120)
        ready = time.monotonic() - t0
        counts = wait_all_terminal(database, n, timeout=timeout, proc=daemon.proc, poll=0.02)
        terminal = time.monotonic() - t0
        pending_rollbacks = wait_rollbacks(database)
        say("all terminal; checking the host ...")
        checked = check_host(host.conn, host.all_volumes(), requests_by_state(database))
        raw = None
        if baseline_workers:
            from bench.real_overhead import raw_concurrent

            k = in_flight(at_kill)
            say(f"baseline: raw calls for {k} VMs on {baseline_workers} threads ...")
            host.stop_provisiond()
            host.empty_host()
            raw = (k, raw_concurrent(host, k, baseline_workers))
        return {"raw": raw, "submit": submit, "at_kill": at_kill, "ready": ready,
                "terminal": terminal, "counts": counts, "pending_rollbacks": pending_rollbacks,
                "reasons": failed_reasons(database), **checked}


def run_test_driver(n: int, clients: int, pools: int, timeout: float) -> dict[str, Any]:
    directory = temp_dir("recovery")
    daemon: Provisiond | None = None
    try:
        main = write_bench_config(directory, pools=pools)
        database = directory / "provisiond.db"
        daemon = Provisiond(main, kill_on_failure=True)
        t0 = time.monotonic()
        asyncio.run(submit_requests(daemon.socket, n, clients))
        submit = time.monotonic() - t0
        daemon.stop(signal.SIGKILL)
        at_kill = db_state_counts(database)
        t0 = time.monotonic()
        daemon = Provisiond(main, start_timeout=120, kill_on_failure=True)
        ready = time.monotonic() - t0
        counts = wait_all_terminal(database, n, timeout=timeout, proc=daemon.proc, poll=0.02)
        terminal = time.monotonic() - t0
        return {"submit": submit, "at_kill": at_kill, "ready": ready, "terminal": terminal,
                "counts": counts, "pending_rollbacks": wait_rollbacks(database),
                "reasons": failed_reasons(database)}
    finally:
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="requests (default 1000)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (64)")
    parser.add_argument("--pause-libvirtd", action="store_true",
                        help="real libvirtd: SIGSTOP it while submitting, so all are in flight")
    parser.add_argument("--test-driver", action="store_true",
                        help="embedded test-driver host: time to terminal only")
    parser.add_argument("--pools", type=int, default=0,
                        help="storage pools in the hardware pool (default: enough for N "
                        "reservations of 1 GiB: free space of the filesystem for the real "
                        "libvirtd, 100 GiB per pool on the test driver)")
    parser.add_argument("--baseline-workers", type=int, default=4,
                        help="real libvirtd: baseline = the raw libvirt calls (createXML + "
                        "defineXML) for as many VMs as were in flight, on this many threads "
                        "sharing one connection, as provisiond's pool (4; 0: skip)")
    parser.add_argument("--timeout", type=float, default=600,
                        help="give up waiting for terminal after this many seconds (600)")
    args = parser.parse_args()
    if args.test_driver and args.pause_libvirtd:
        parser.error("--pause-libvirtd needs the real libvirtd")
    with interruptible():
        if args.test_driver:
            # test-driver pools report 100 GiB free: room for ~100 reservations each
            pools = args.pools or math.ceil(args.n / 90) + 1
            r = run_test_driver(args.n, args.clients, pools, args.timeout)
        else:
            pools = args.pools or auto_pools(args.n)
            r = run_real(args.n, args.clients, args.pause_libvirtd, pools, args.timeout,
                         args.baseline_workers)
    mode = (f"embedded test driver, {pools} pools" if args.test_driver else
            f"real libvirtd, QEMU, {pools} dir pools, "
            "1 GiB qcow2 + define"
            + (", libvirtd paused while submitting" if args.pause_libvirtd else ""))
    counts = r["counts"]
    print(f"recovery details: {code_version()}, {load_average()}; {mode}; {args.n} "
          f"submitted in {r['submit']:.1f} s ({args.n / r['submit']:.0f} req/s, "
          f"{args.clients} clients); states at the kill {dict(sorted(r['at_kill'].items()))}; "
          f"restart -> serving {r['ready']:.2f} s; final {dict(sorted(counts.items()))}, "
          f"rollbacks pending {r['pending_rollbacks']}"
          + (f"; failed because: {r['reasons']}" if r["reasons"] else ""))
    met = r["terminal"] <= TARGET_SECONDS
    if args.test_driver:
        dup = "duplicates not checked (the test-driver host dies with the daemon)"
    else:
        dups = r["dup_volumes"] + r["dup_domains"]
        met = met and dups == 0
        dup = (f"duplicates: {r['dup_volumes']} volumes, {r['dup_domains']} domains (must be "
               f"0: {'ok' if dups == 0 else 'FAILED'}); done but missing a volume or domain "
               f"{r['missing']}, left by failed requests {r['leftovers']}, orphans "
               f"{r['orphans']}")
    raw = r.get("raw")
    base = (f"; baseline: the raw libvirt calls for {raw[0]} VMs take {raw[1]:.1f} s on "
            f"{args.baseline_workers} threads, ratio {r['terminal'] / raw[1]:.2f}" if raw else "")
    print(f"recovery: {in_flight(r['at_kill'])} of {args.n} in flight at SIGKILL; all "
          f"terminal {r['terminal']:.1f} s after the restart (target <= {TARGET_SECONDS:g} s: "
          f"{'met' if met else 'MISSED'}); {dup}{base}")


if __name__ == "__main__":
    main()
