"""Connections: another user's ``provctl catalog`` while one user floods the socket.

    ./dev bench connections [--n 20] [--connections 1100] [--nofile 1024] [--source DIR]

Issue 12, point 4. provisiond runs on the embedded test-driver host
(``bench.common.write_bench_config``, but ``daemon.max_connections_per_user`` at its
default) under ``prlimit --nofile=N:N`` (soft and hard: it cannot raise it), its socket
open to the group nogroup. Three phases, same daemon, one after the other:

- ``quiet``: ``--n`` runs of ``provctl catalog`` as ``nobody`` (``setpriv``, the system's
  python3 on this checkout's ``daemon/cli``, ``PROVISIOND_SOCKET`` set), one at a time;
- ``hold``: this process (root) opens ``--connections`` connections that send nothing and
  keeps whichever stay open, then the same ``--n`` runs;
- ``reconnect``: the same, but every connection the daemon closes is opened again at once
  (a reconnect loop on a thread, as fast as it goes) while the runs go on.

A run that fails or takes longer than ``--call-timeout`` counts as failed; three failures
in a row end the phase. Printed per phase: the runs' times (mean, median, p90, max), the
failures, the connections the attacker holds open, the daemon's descriptors, and how much
its log grew (bytes, lines) during the phase; then the ratio of medians to ``quiet``.
``--source DIR`` runs the daemon of another checkout (e.g. ``git archive`` of the commit
before the change) with the same configuration; ``provctl`` stays this checkout's.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import (  # noqa: E402
    REPO,
    code_version,
    get_json,
    interruptible,
    load_average,
    percentile,
    temp_dir,
    write_bench_config,
)

OTHER_USER = "nobody"
OTHER_GROUP = "nogroup"
SYSTEM_PYTHON = "/usr/bin/python3"  # nobody cannot reach a venv under /root
PROVCTL = f"import sys; sys.path.insert(0, {str(REPO)!r}); from daemon.cli import main; " \
          "sys.exit(main())"


def configure(directory: Path) -> Path:
    """The bench configuration, its socket open to OTHER_GROUP, OTHER_USER granted, and
    ``daemon.max_connections_per_user`` at its default (the other benches lift it)."""
    main = write_bench_config(directory)
    directory.chmod(0o755)  # nobody must reach the socket
    config = yaml.safe_load(main.read_text())
    config["daemon"]["socket_group"] = OTHER_GROUP
    config["daemon"].pop("max_connections_per_user", None)
    main.write_text(yaml.safe_dump(config))
    pools = directory / "pools.yml"
    data = yaml.safe_load(pools.read_text())
    data["resource_pools"]["rp"]["grants"]["CLOUD_CREATE"]["users"].append(OTHER_USER)
    pools.write_text(yaml.safe_dump(data))
    return main


class Daemon:
    """provisiond under a descriptor limit, from ``source``."""

    def __init__(self, main: Path, nofile: int, source: Path) -> None:
        self.socket = str(main.parent / "provisiond.sock")
        self.log_path = main.parent / "daemon.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["prlimit", f"--nofile={nofile}:{nofile}", sys.executable, "-m", "daemon",
                 "--config", str(main), "--log-format", "text"],
                stdout=log, stderr=log, cwd=source,
                env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        deadline = time.monotonic() + 60
        while True:
            try:
                get_json(self.socket, "/v1/health")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(self.log_path.read_text()[-3000:])
                time.sleep(0.05)

    def log_size(self) -> tuple[int, int]:
        """The log's size in bytes and lines."""
        data = self.log_path.read_bytes()
        return len(data), data.count(b"\n")

    def log_lines(self, since: int, most: int) -> list[str]:
        """The first ``most`` distinct log records written after byte ``since`` (their
        first lines, without the time)."""
        with open(self.log_path, "rb") as log:
            log.seek(since)
            seen: list[str] = []
            for raw in log:
                if not re.match(rb"\d{4}-\d\d-\d\d ", raw):
                    continue  # a traceback's line
                line = raw.decode(errors="replace").rstrip().split(" ", 2)[-1]
                if line not in seen:
                    seen.append(line)
                    if len(seen) == most:
                        break
        return seen

    def descriptors(self) -> int:
        """Open descriptors of the daemon (prlimit execs it: same pid)."""
        try:
            return len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return -1

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def catalog(sock: str, timeout: float) -> float | None:
    """One ``provctl catalog`` as OTHER_USER: its wall time, or None if it failed."""
    started = time.monotonic()
    try:
        run = subprocess.run(
            ["setpriv", f"--reuid={OTHER_USER}", f"--regid={OTHER_GROUP}", "--clear-groups",
             SYSTEM_PYTHON, "-c", PROVCTL, "catalog"],
            env={"PATH": "/usr/bin:/bin", "PROVISIOND_SOCKET": sock,
                 "PYTHONDONTWRITEBYTECODE": "1"},
            capture_output=True, timeout=timeout, cwd="/")
    except subprocess.TimeoutExpired:
        return None
    return time.monotonic() - started if run.returncode == 0 else None


def timed_runs(sock: str, n: int, timeout: float) -> tuple[list[float], int]:
    """``n`` catalog runs one after the other; their times, and the failures."""
    times: list[float] = []
    failed = in_a_row = 0
    for _ in range(n):
        took = catalog(sock, timeout)
        if took is None:
            failed += 1
            in_a_row += 1
            if in_a_row == 3:
                break
        else:
            times.append(took)
            in_a_row = 0
    return times, failed


class Attacker:
    """``count`` idle connections from this uid; with ``reconnect``, each one the daemon
    closes is opened again on a thread until ``stop``."""

    def __init__(self, path: str, count: int, reconnect: bool) -> None:
        self.path = path
        self.selector = selectors.DefaultSelector()
        self.reconnects = 0
        self.connected = 0
        self._stop = threading.Event()
        deadline = time.monotonic() + 15
        for _ in range(count):
            sock = self._connect(deadline)
            if sock is None:
                break  # the daemon accepts nothing more: keep what we have
            self.connected += 1
        self.thread = threading.Thread(target=self._run, args=(reconnect,), daemon=True)
        self.thread.start()

    def _connect(self, deadline: float) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX)
        sock.setblocking(False)
        while True:
            try:
                sock.connect(self.path)
                break
            except BlockingIOError:  # the listen backlog is full
                if time.monotonic() > deadline or self._stop.is_set():
                    sock.close()
                    return None
                time.sleep(0.001)
        self.selector.register(sock, selectors.EVENT_READ)
        return sock

    def _run(self, reconnect: bool) -> None:
        while not self._stop.is_set():
            for key, _ in self.selector.select(0.1):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if data:
                    continue
                self.selector.unregister(sock)
                sock.close()
                if reconnect and self._connect(time.monotonic() + 1) is not None:
                    self.reconnects += 1

    def open_now(self) -> int:
        """Connections this side still holds (those the daemon closed are dropped)."""
        return len(self.selector.get_map())

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)
        for key in list(self.selector.get_map().values()):
            self.selector.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
        self.selector.close()


def phase(d: Daemon, name: str, args: argparse.Namespace) -> dict[str, Any]:
    """One phase's figures."""
    before = d.log_size()
    started = time.monotonic()
    attacker = (Attacker(d.socket, args.connections, name == "reconnect")
                if name != "quiet" else None)
    if attacker is not None:
        time.sleep(1)  # let the daemon take the flood in
    held = attacker.open_now() if attacker else 0
    fds = d.descriptors()
    times, failed = timed_runs(d.socket, args.n, args.call_timeout)
    fds = max(fds, d.descriptors())
    elapsed = time.monotonic() - started
    connected = attacker.connected if attacker else 0
    reconnects = attacker.reconnects if attacker else 0
    if attacker is not None:
        attacker.stop()
    after = d.log_size()
    return {"name": name, "times": times, "failed": failed, "held": held, "fds": fds,
            "connected": connected, "reconnects": reconnects, "elapsed": elapsed,
            "log_bytes": after[0] - before[0], "log_lines": after[1] - before[1],
            "log_sample": d.log_lines(before[0], 3)}


def describe(r: dict[str, Any]) -> str:
    """A phase's figures on one line."""
    t = [x * 1000 for x in r["times"]]
    timing = (f"mean {statistics.mean(t):.0f}  median {statistics.median(t):.0f}  p90 "
              f"{percentile(t, 0.9):.0f}  max {max(t):.0f} ms" if t else "no run succeeded")
    extra = ""
    if r["name"] != "quiet":
        extra = (f"; attacker connected {r['connected']}, holds {r['held']} after 1 s"
                 + (f", reopened {r['reconnects']}" if r["name"] == "reconnect" else ""))
    return (f"  {r['name']:<9} catalog x{len(t)}: {timing}; failed {r['failed']}{extra}; "
            f"daemon fds {r['fds']}; log +{r['log_bytes']} B, +{r['log_lines']} lines in "
            f"{r['elapsed']:.1f} s"
            + "".join(f"\n    log: {line[:150]}" for line in r["log_sample"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="catalog runs per phase (20)")
    parser.add_argument("--connections", type=int, default=1100,
                        help="the attacker's idle connections (1100)")
    parser.add_argument("--nofile", type=int, default=1024,
                        help="the daemon's descriptor limit, soft and hard (1024)")
    parser.add_argument("--call-timeout", type=float, default=10.0,
                        help="a catalog run longer than this fails (10 s)")
    parser.add_argument("--source", type=Path, default=REPO,
                        help="the checkout whose daemon runs (default: this one)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error(f"run as root: provctl runs as {OTHER_USER} through setpriv")
    directory = temp_dir("connections")
    d = None
    results = []
    try:
        with interruptible():
            d = Daemon(configure(directory), args.nofile, args.source.resolve())
            for name in ("quiet", "hold", "reconnect"):
                results.append(phase(d, name, args))
            limit_lines = [line.split(": ", 1)[-1] for line in
                           d.log_path.read_text(errors="replace").splitlines()
                           if "descriptor limit" in line][:1]
    finally:
        if d is not None:
            d.stop()
        shutil.rmtree(directory, ignore_errors=True)
    source = (code_version() if args.source.resolve() == REPO else
              f"daemon from {args.source}")
    print(f"connections: {source}, {load_average()}; daemon under "
          f"--nofile={args.nofile}:{args.nofile}, {args.connections} idle connections "
          f"from root; provctl catalog as {OTHER_USER}")
    if limit_lines:
        print(f"  daemon at start-up: {limit_lines[0]}")
    for r in results:
        print(describe(r))
    quiet = results[0]["times"]
    for r in results[1:]:
        if quiet and r["times"]:
            ratio = statistics.median(r["times"]) / statistics.median(quiet)
            print(f"  {r['name']}/quiet median ratio: {ratio:.2f}"
                  + (f" ({r['failed']} failed)" if r["failed"] else ""))
        else:
            print(f"  {r['name']}: no ratio ({r['failed']} runs failed)")


if __name__ == "__main__":
    main()
