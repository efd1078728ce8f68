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
from pathlib import Path
from typing import Any

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
                # thin volumes on the test driver: over-commit so capacity never binds
                "storage_pools": [{"name": f"pool{p}", "overcommit": 100000}
                                  for p in range(pools)],
            }},
            "resource_pools": {"rp": {"hardware_pool": "hw", "grants": {
                "CLOUD_CREATE": {"users": [user]}, "CLOUD_ADMIN": {"users": [user]}}}},
        },
        "provisiond.yml": {
            "daemon": {"socket": str(directory / "provisiond.sock"),
                       "database": str(directory / "provisiond.db")},
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


def metric(sock: str, name: str, labels: str) -> float:
    """One sample of /metrics, e.g. metric(sock, 'provisiond_requests', 'state="done"')."""
    conn = UnixHTTP(sock)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    key = f"{name}{{{labels}}} "
    for line in text.splitlines():
        if line.startswith(key):
            return float(line[len(key):])
    return 0.0


class Provisiond:
    """A provisiond process for a benchmark."""

    def __init__(self, main: Path, *, module: str = "daemon",
                 env: dict[str, str] | None = None) -> None:
        self.main = main
        self.socket = str(main.parent / "provisiond.sock")
        self.log = open(main.parent / "daemon.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", module, "--config", str(main),
                                      "--log-format", "text"],
                                     stdout=self.log, stderr=self.log, cwd=REPO,
                                     env={**os.environ, **(env or {})})
        deadline = time.monotonic() + 60
        while True:
            try:
                get_json(self.socket, "/v1/health")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
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


def temp_dir(prefix: str) -> Path:
    """A fresh directory under /tmp for one benchmark run."""
    return Path(tempfile.mkdtemp(prefix=f"provisiond-bench-{prefix}-"))
