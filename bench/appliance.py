"""An appliance VM from request to its guest's first serial line, provisiond against
virt-install (same image, host and run); and the disk step alone, overlay against full
copy of a 1 GiB image (issue 13, point 8). Root only; bench/README.md says more.

    ./dev bench appliance [--n 3] [--disk-n 5] [--warmup 1]

1. N rounds, provisiond and virt-install alternately (order swapped every round), one
   guest at a time (``harness/images.py``'s appliance disk), from launching the client
   until the guest's first complete ``provisiond-guest:`` line reaches a reader in this
   process (a thread polls libvirt every 10 ms until the domain is active, then reads
   its console through ``virDomainOpenConsole``; the same for both). provisiond:
   ``provctl create --start --wait --ssh-key FILE``; its own time from the request's
   log, ``requested`` -> ``done`` plus ``starting`` -> ``running`` (libvirt's calls and
   events in them included). virt-install: ``--import``, a qcow2 overlay it creates
   (``backing_store=``), ``--cloud-init meta-data=,user-data=`` (the seed provisiond
   writes), run in libvirtd's mount namespace (``nsenter``): QEMU must see the ISO it
   writes to /var/lib/libvirt/boot. Both guests' reports are checked.
2. ``--disk-n`` times each, alternating: a qcow2 overlay (``createXML`` with
   ``<backingStore>``) against a full copy (``createXMLFrom``) of a 1 GiB qcow2 image
   holding 200 MiB of random data, through provisiond (its ``storage-creating`` state)
   and as raw calls of the Python binding (the same volume XML).

Everything is removed at the end, also on an error, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realhost import (  # noqa: E402
    GiB,
    Api,
    RealHost,
    code_version,
    interruptible,
    require_root_and_packages,
    say,
    uninterrupted,
)

import libvirt  # noqa: E402

from daemon.virt import domain_xml  # noqa: E402
from harness.daemon import Daemon, daemon_config  # noqa: E402
from harness.sshkey import public_key  # noqa: E402
from harness.images import (  # noqa: E402
    DISK_FLAG, LINES, PREFIX, build_appliance_disk, parse_guest_output)

TARGET_SHARE = 0.10
PROVCTL = str(Path(sys.executable).parent / "provctl")
APPLIANCE = "appliance.qcow2"
BIG = "big.qcow2"
BIG_DATA_MIB = 200
SIZE = {"cpus": 1, "memory": 262144, "storage_size_in_gb": 1}
BOOT_TIMEOUT = 180.0  # TCG on a busy 2-CPU machine: a boot to `done` takes 10-20 s
POLL = 0.01


def first_to(log: list[dict[str, Any]], state: str) -> float:
    """When the log's first transition into ``state`` was recorded."""
    for entry in log:
        if entry.get("kind") == "transition" and entry.get("to") == state:
            return datetime.fromisoformat(entry["at"].replace("Z", "+00:00")).timestamp()
    raise RuntimeError(f"no transition to {state} in the log")


class ConsoleReader(threading.Thread):
    """Waits until a domain is active, then reads its serial console through libvirt
    until the stream ends (the guest powered off) or ``stop()``; times what it sees."""

    def __init__(self, uri: str, name: str) -> None:
        super().__init__(daemon=True, name=f"console-{name}")
        self.conn = libvirt.open(uri)
        self.name = name
        self.data = bytearray()
        self.active_at: float | None = None
        self.first_byte_at: float | None = None
        self.first_line_at: float | None = None
        self.error: str | None = None
        self._halt = threading.Event()
        self._stream: Any = None

    def run(self) -> None:
        try:
            dom = self._wait_active()
            if dom is None:
                return
            while True:  # active, but its pty comes a little later
                self._stream = self.conn.newStream(0)
                try:
                    dom.openConsole(None, self._stream, 0)
                    break
                except libvirt.libvirtError:
                    if not dom.isActive() or self._halt.is_set():
                        raise
                    time.sleep(POLL)
            prefix = PREFIX.encode()
            while not self._halt.is_set():
                chunk = self._stream.recv(65536)
                now = time.time()
                if isinstance(chunk, int) or not chunk:
                    break  # end of stream: the domain stopped
                if self.first_byte_at is None:
                    self.first_byte_at = now
                self.data += chunk
                if self.first_line_at is None and re.search(
                        re.escape(prefix) + rb"[^\n]*\n", self.data):
                    self.first_line_at = now
        except libvirt.libvirtError as exc:
            if not self._halt.is_set() and LINES["done"].encode() not in self.data:
                self.error = str(exc)
        finally:
            try:
                self.conn.close()
            except libvirt.libvirtError:
                pass

    def _wait_active(self) -> Any:
        while not self._halt.is_set():
            try:
                dom = self.conn.lookupByName(self.name)
                if dom.isActive():
                    self.active_at = time.time()
                    return dom
            except libvirt.libvirtError:
                pass
            time.sleep(POLL)
        return None

    def stop(self) -> None:
        """Stop waiting or reading (the stream is aborted)."""
        self._halt.set()
        if self._stream is not None:
            try:
                self._stream.abort()
            except libvirt.libvirtError:
                pass

    def text(self) -> str:
        """What the console showed, decoded."""
        return bytes(self.data).decode(errors="replace")


class ApplianceHost(RealHost):
    """RealHost with the appliance image and the 1 GiB image in its pool, and a
    provisiond whose templates are appliances on them."""

    def __init__(self) -> None:
        super().__init__()
        self.current: subprocess.Popen[str] | None = None
        self.readers: list[ConsoleReader] = []

    def start(self) -> None:
        super().start()
        # virt-install (root, system URI) writes its seed ISO here; QEMU reads it.
        (self.libvirtd.base / "lib" / "boot").mkdir(mode=0o711, exist_ok=True)
        say("appliance image (harness/images.py) ...")
        build_appliance_disk(self.pool_dir / APPLIANCE)
        say(f"1 GiB qcow2 image with {BIG_DATA_MIB} MiB of random data ...")
        make_big_image(self.pool_dir / BIG)
        self.storage_pool.refresh(0)

    def fresh_provisiond(self, storage_pools: list[str] | None = None) -> Daemon:
        """A new provisiond on an empty database, templates ``guest`` (the appliance,
        overlay), ``big-overlay`` and ``big-full`` (the 1 GiB image)."""
        self.stop_provisiond()
        self.generation += 1
        sub = self.directory / f"provisiond-{self.generation}"
        sub.mkdir()
        sub.chmod(0o755)
        image = {"pool": self.pool, "name": APPLIANCE}
        big = {"pool": self.pool, "name": BIG}
        main = daemon_config(
            sub, storage_pools=storage_pools or [self.pool], sizes={"one": SIZE},
            templates={"guest": {"kind": "appliance", "volume": image, "clone": "overlay"},
                       "big-overlay": {"kind": "appliance", "volume": big, "clone": "overlay"},
                       "big-full": {"kind": "appliance", "volume": big, "clone": "full"}},
            daemon={"define_event_timeout": 30, "host_wait_timeout": 60, "stop_timeout": 3},
            hosts=[{"name": "bench", "uri": self.libvirtd.uri, "domain_type": "qemu"}])
        self.daemon = Daemon(sub, main)
        self.daemon.start(timeout=60)
        self.api = Api(self.daemon.socket)
        return self.daemon

    def stop(self) -> None:
        """A client process still running, virt-install's scratch pool, then RealHost's
        clean-up (provisiond, domains, volumes, pool, libvirtd, temp dirs)."""
        with uninterrupted():
            for reader in self.readers:
                reader.stop()
            proc = self.current
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            if self.conn is not None:
                try:
                    boot = self.conn.storagePoolLookupByName("boot")
                    if boot.isActive():
                        boot.destroy()
                    boot.undefine()
                except libvirt.libvirtError:
                    pass
        super().stop()

    def run_client(self, argv: list[str], timeout: float = 300) -> tuple[str, float]:
        """Run a client process to its end; (stdout, epoch seconds when it exited)."""
        self.current = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        out, err = self.current.communicate(timeout=timeout)
        ended = time.time()
        code = self.current.returncode
        self.current = None
        if code != 0:
            raise RuntimeError(f"{argv[0]} exited {code}:\n{out[-2000:]}\n{err[-3000:]}")
        return out, ended

    def wait_inactive(self, name: str, timeout: float = 60) -> None:
        """Wait until the domain ``name`` is not running (or gone)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self.conn.lookupByName(name).isActive():
                    return
            except libvirt.libvirtError:
                return
            time.sleep(0.05)
        raise RuntimeError(f"domain {name} still running after {timeout} s")

    def vm_state(self, request_id: str) -> str | None:
        """The VM state of a done request."""
        return (self.state(request_id).get("vm") or {}).get("state")

    def delete_vm(self, request_id: str, timeout: float = 60) -> None:
        """Delete a request's VM through provisiond once it is stopped; wait until done."""
        assert self.api is not None
        deadline = time.monotonic() + timeout
        while self.vm_state(request_id) not in ("stopped", "deleted"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"VM of {request_id} is {self.vm_state(request_id)}")
            time.sleep(0.05)
        status, body = self.api.call("POST", f"/v1/requests/{request_id}/delete")
        if status != 202:
            raise RuntimeError(f"delete {request_id}: {status} {body}")
        while self.vm_state(request_id) != "deleted":
            if time.monotonic() > deadline:
                raise RuntimeError(f"VM of {request_id} is {self.vm_state(request_id)}")
            self.state(request_id, wait=5)

    def request_log(self, request_id: str) -> list[dict[str, Any]]:
        """The request's log entries."""
        assert self.api is not None
        _status, body = self.api.call("GET", f"/v1/requests/{request_id}/log")
        return list(body["log"])


def make_big_image(dest: Path) -> None:
    """A 1 GiB qcow2 image with ``BIG_DATA_MIB`` MiB of random data (1 MiB every 5 MiB)."""
    raw = dest.with_suffix(".raw")
    with open(raw, "wb") as f:
        f.truncate(GiB)
        for i in range(BIG_DATA_MIB):
            f.seek(i * 5 << 20)
            f.write(os.urandom(1 << 20))
    try:
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(dest)],
                       check=True, capture_output=True, timeout=300)
    finally:
        raw.unlink(missing_ok=True)


def make_key(directory: Path) -> tuple[Path, str]:
    """An ed25519 public key file in ``directory``; (its path, the key's line)."""
    key = public_key("bench@appliance")
    public = directory / "bench-key.pub"
    public.write_text(key + "\n")
    return public, key


def check_report(reader: ConsoleReader, name: str, key: str) -> str | None:
    """What is amiss in the guest's report (None if it read its seed: hostname, key)."""
    if reader.error:
        return f"console: {reader.error}"
    report = parse_guest_output(reader.text())
    if not report.done:
        return "no 'done' line"
    if DISK_FLAG not in (report.cmdline or "").split():
        return f"not booted from its disk: cmdline {report.cmdline!r}"
    if report.cidata in (None, "none"):
        return f"no seed found (block devices: {report.block})"
    if report.hostname != name or report.ssh_keys != [key]:
        return f"seed read wrong: hostname {report.hostname!r}, keys {report.ssh_keys}"
    return None


def watch(host: ApplianceHost, name: str) -> ConsoleReader:
    """A started console reader for the domain ``name`` (stopped by ``host.stop()``)."""
    reader = ConsoleReader(host.libvirtd.uri, name)
    host.readers.append(reader)
    reader.start()
    return reader


def finish(reader: ConsoleReader, name: str, t0: float, exited: float) -> dict[str, Any]:
    """Wait until the guest stopped; the timeline of its reader (epoch seconds)."""
    reader.join(max(1.0, t0 + BOOT_TIMEOUT - time.time()))
    if reader.is_alive():
        reader.stop()
        reader.join(10)
        raise RuntimeError(f"{name}: no end of console within {BOOT_TIMEOUT:.0f} s; "
                           f"seen:\n{reader.text()[-2000:]}")
    if reader.first_line_at is None:
        raise RuntimeError(f"{name}: no {PREFIX!r} line; seen:\n{reader.text()[-2000:]}"
                           f"\n{reader.error or ''}")
    return {"t0": t0, "exited": exited, "active": reader.active_at,
            "first_byte": reader.first_byte_at, "first_line": reader.first_line_at}


def call_seconds(before: dict[Any, float], after: dict[Any, float]) -> dict[str, float]:
    """{libvirt call: seconds} that provisiond spent between two /metrics samples."""
    out: dict[str, float] = {}
    for (sample, labels), value in after.items():
        if sample == "provisiond_libvirt_call_seconds_sum":
            call = dict(labels).get("call", "?")
            delta = value - before.get((sample, labels), 0.0)
            if delta > 0:
                out[call] = out.get(call, 0.0) + delta
    return out


def provisiond_round(host: ApplianceHost, name: str, key_file: Path,
                     key: str) -> dict[str, Any]:
    """One VM through ``provctl create --start --wait``; its timeline (epoch seconds)."""
    assert host.daemon is not None
    reader = watch(host, name)
    before = host.metrics()
    t0 = time.time()
    out, exited = host.run_client([
        PROVCTL, "--socket", host.daemon.socket, "create", "-t", "guest", "-s", "one",
        "-p", "rp", "-n", name, "--ssh-key", str(key_file), "--start", "--wait"])
    calls = call_seconds(before, host.metrics())
    found = re.search(r"request (\S+) ", out)
    if found is None:
        raise RuntimeError(f"no request id in provctl's output:\n{out}")
    row = finish(reader, name, t0, exited)
    row |= {"calls": calls, "amiss": check_report(reader, name, key)}
    log = host.request_log(request_id := found.group(1))
    for state in ("requested", "storage-creating", "seeding", "defining", "done", "starting",
                  "running"):
        row[state] = first_to(log, state)
    host.wait_inactive(name)
    host.delete_vm(request_id)
    return row


def virt_install_argv(host: ApplianceHost, name: str, meta: Path, user: Path) -> list[str]:
    """virt-install for the same VM, in libvirtd's mount namespace (nsenter)."""
    image = host.pool_dir / APPLIANCE
    return ["nsenter", "--target", str(host.libvirtd.libvirtd), "--mount", "--",
            "virt-install", "--connect", host.libvirtd.uri, "--name", name,
            "--memory", str(SIZE["memory"] // 1024), "--vcpus", str(SIZE["cpus"]), "--import",
            "--disk", f"pool={host.pool},size={SIZE['storage_size_in_gb']},format=qcow2,"
                      f"backing_store={image},backing_format=qcow2,bus=virtio",
            "--cloud-init", f"meta-data={meta},user-data={user}",
            "--osinfo", "detect=on,require=off", "--virt-type", "qemu", "--network", "none",
            "--graphics", "none", "--serial", "pty", "--noautoconsole"]


def virt_install_round(host: ApplianceHost, name: str, key: str) -> dict[str, Any]:
    """One VM through virt-install; its timeline (epoch seconds)."""
    meta = host.directory / f"{name}-meta-data"
    user = host.directory / f"{name}-user-data"
    meta.write_text(f"instance-id: {name}\nlocal-hostname: {name}\n")
    user.write_text(f"#cloud-config\nssh_authorized_keys:\n  - \"{key}\"\n")
    argv = virt_install_argv(host, name, meta, user)
    reader = watch(host, name)
    t0 = time.time()
    _out, exited = host.run_client(argv)
    row = finish(reader, name, t0, exited) | {"amiss": check_report(reader, name, key)}
    host.wait_inactive(name)
    host.conn.lookupByName(name).undefine()
    host.storage_pool.storageVolLookupByName(f"{name}.qcow2").delete(0)
    return row


def disk_through_provisiond(host: ApplianceHost, template: str) -> float:
    """Seconds of one request's ``storage-creating`` state (template on the 1 GiB image)."""
    assert host.api is not None
    status, body = host.api.call("POST", "/v1/requests", {
        "template": template, "size": "one", "resource_pool": "rp"})
    if status != 202:
        raise RuntimeError(f"POST /v1/requests: {status} {body}")
    request_id = body["id"]
    if host.state(request_id, wait=300)["state"] != "done":
        raise RuntimeError(f"request {request_id}: {host.state(request_id)}")
    log = host.request_log(request_id)
    seconds = first_to(log, "seeding") - first_to(log, "storage-creating")
    host.delete_vm(request_id)
    return seconds


def disk_raw(host: ApplianceHost, clone: str) -> tuple[float, float, int]:
    """Seconds of one raw call (overlay: createXML with a backing store; full:
    createXMLFrom), of an fsync of the new file after it, and its allocation in bytes."""
    image = host.storage_pool.storageVolLookupByName(BIG)
    name = f"raw-{clone}-{uuid.uuid4().hex[:8]}.qcow2"
    if clone == "overlay":
        xml = domain_xml.build_volume_xml(name, GiB, "qcow2", backing_path=image.path(),
                                          backing_format="qcow2")
        t0 = time.perf_counter()
        vol = host.storage_pool.createXML(xml, 0)
    else:
        xml = domain_xml.build_volume_xml(name, GiB, "qcow2")
        t0 = time.perf_counter()
        vol = host.storage_pool.createXMLFrom(xml, image, 0)
    seconds = time.perf_counter() - t0
    fd = os.open(vol.path(), os.O_RDONLY)
    try:
        t1 = time.perf_counter()
        os.fsync(fd)  # what of the copy was still in the page cache only
        flush = time.perf_counter() - t1
    finally:
        os.close(fd)
    allocation = vol.info()[2]
    vol.delete(0)
    return seconds, flush, allocation


def mean(values: list[float]) -> float:
    """Arithmetic mean (0 for none)."""
    return sum(values) / len(values) if values else 0.0


def sec(value: float) -> str:
    """Seconds with 2 decimals."""
    return f"{value:.2f}"


def e2e_report(pv: list[dict[str, Any]], vi: list[dict[str, Any]]) -> tuple[list[str], str]:
    """Per-round and mean lines of part 1, and its summary line."""
    def m(rows: list[dict[str, Any]], a: str, b: str) -> float:
        return mean([r[b] - r[a] for r in rows])

    def since(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> str:
        return ", ".join(f"{k.replace('_', ' ')} +{sec(m(rows, 't0', k))}" for k in keys)
    for p in pv:
        p["own"] = (p["done"] - p["requested"]) + (p["running"] - p["starting"])
    lines = ["end to end: launch -> the first complete 'provisiond-guest:' line on the "
             "serial console (s)"]
    lines += [f"  round {i}: provisiond {sec(p['first_line'] - p['t0'])} (own "
              f"{sec(p['own'])}, {100 * p['own'] / (p['first_line'] - p['t0']):.1f}%), "
              f"virt-install {sec(v['first_line'] - v['t0'])}"
              for i, (p, v) in enumerate(zip(pv, vi), 1)]
    lines.append("  provisiond, mean s from launch: " + since(pv, (
        "requested", "done", "starting", "running", "exited", "first_byte", "first_line")))
    lines.append(f"    provctl before requested {sec(m(pv, 't0', 'requested'))}; "
                 f"requested->done {sec(m(pv, 'requested', 'done'))} (storage-creating "
                 f"{sec(m(pv, 'storage-creating', 'seeding'))}, seeding "
                 f"{sec(m(pv, 'seeding', 'defining'))}, defining "
                 f"{sec(m(pv, 'defining', 'done'))}); provctl done->starting "
                 f"{sec(m(pv, 'done', 'starting'))}; starting->running "
                 f"{sec(m(pv, 'starting', 'running'))}; guest running->first line "
                 f"{sec(m(pv, 'running', 'first_line'))}")
    calls: dict[str, float] = {}
    for row in pv:
        for call, seconds in row["calls"].items():
            calls[call] = calls.get(call, 0.0) + seconds / len(pv)
    ranked = sorted(calls.items(), key=lambda kv: -kv[1])
    lines.append("    provisiond's libvirt calls (mean s, /metrics, incl. thread hop): "
                 + ", ".join(f"{c} {v:.3f}" for c, v in ranked)
                 + f"; total {sum(calls.values()):.3f}")
    lines.append("  virt-install, mean s from launch: " + since(vi, (
        "active", "exited", "first_byte", "first_line")))
    lines.append(f"  guest, domain active (polled) -> first line: virt-install's "
                 f"{sec(m(vi, 'active', 'first_line'))}, provisiond's "
                 f"{sec(m(pv, 'active', 'first_line'))}")
    amiss = [f"{kind} round {i}: {r['amiss']}" for kind, rows in (
        ("provisiond", pv), ("virt-install", vi)) for i, r in enumerate(rows, 1) if r["amiss"]]
    lines.append("  both guests read their seed (hostname, key): "
                 + ("yes, every round" if not amiss else "NO: " + "; ".join(amiss)))
    p_mean, v_mean = m(pv, "t0", "first_line"), m(vi, "t0", "first_line")
    own = mean([p["own"] for p in pv])
    bare = own - sum(calls.values())
    lines.append(f"  provisiond's own time less its libvirt calls: {1000 * bare:.0f} ms = "
                 f"{100 * bare / p_mean:.2f}% of the whole (log stamps are ms)")
    share = own / p_mean
    summary = (f"appliance: provisiond {sec(p_mean)} s, virt-install {sec(v_mean)} s to the "
               f"guest's first line, ratio {p_mean / v_mean:.2f}; provisiond's own time "
               f"{sec(own)} s = {100 * share:.1f}% of the whole (target < "
               f"{100 * TARGET_SHARE:.0f}%: {'met' if share < TARGET_SHARE else 'MISSED'}; "
               f"n={len(pv)})")
    return lines, summary


def disk_step(host: ApplianceHost, n: int) -> dict[str, list[float]]:
    """Part 2: {"prov|raw|fsync|alloc overlay|full": samples}, ``n`` of each, alternating."""
    out: dict[str, list[float]] = {}
    for i in range(n):
        for clone in (("overlay", "full") if i % 2 == 0 else ("full", "overlay")):
            samples = (disk_through_provisiond(host, f"big-{clone}"), *disk_raw(host, clone))
            for what, value in zip(("prov", "raw", "fsync", "alloc"), samples):
                out.setdefault(f"{what} {clone}", []).append(value)
    return out


def disk_report(d: dict[str, list[float]]) -> list[str]:
    """The lines of part 2."""
    def f(key: str) -> str:
        v = d[key]
        return f"{1000 * mean(v):.1f} ({1000 * min(v):.0f}-{1000 * max(v):.0f})"

    def ms(key: str) -> str:
        return f"{1000 * mean(d[key]):.1f}"
    lines = [f"disk step, 1 GiB qcow2 image holding {BIG_DATA_MIB} MiB of random data "
             f"(ms: mean (min-max), n={len(d['prov full'])} each)"]
    for c, call in (("overlay", "createXML"), ("full", "createXMLFrom")):
        lines.append(f"  {c:7}  provisiond storage-creating {f('prov ' + c)}, raw {call} "
                     f"{f('raw ' + c)}; allocation {mean(d['alloc ' + c]) / 2**20:.1f} MiB, "
                     f"fsync of the new file after the raw call {f('fsync ' + c)}")
    lines.append(f"disk step: overlay {ms('prov overlay')} ms, full copy {ms('prov full')} ms "
                 f"through provisiond ({mean(d['prov full']) / mean(d['prov overlay']):.1f}x);"
                 f" raw calls {ms('raw overlay')} / {ms('raw full')} ms "
                 f"({mean(d['raw full']) / mean(d['raw overlay']):.1f}x)")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run both parts and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3, help="end-to-end rounds (default 3)")
    parser.add_argument("--disk-n", type=int, default=5,
                        help="disk-step samples of each kind and path (default 5)")
    parser.add_argument("--warmup", type=int, default=1,
                        help="unmeasured end-to-end rounds first (default 1)")
    args = parser.parse_args(argv)

    require_root_and_packages(("virtinst", "xorriso"))
    version = code_version()
    load0 = os.getloadavg()[0]
    host = ApplianceHost()
    rows: dict[str, list[dict[str, Any]]] = {"pv": [], "vi": []}
    disk: dict[str, list[float]] = {}
    started = time.monotonic()
    with interruptible():
        try:
            host.start()
            host.fresh_provisiond()
            key_file, key = make_key(host.directory)
            tag = uuid.uuid4().hex[:6]
            for r in range(-args.warmup if args.n else 0, args.n):
                what = f"warm-up {r + args.warmup + 1}" if r < 0 else f"round {r + 1}"
                for kind in (("pv", "vi") if r % 2 == 0 else ("vi", "pv")):
                    name = f"{kind}-{tag}-{r + args.warmup}"
                    say(f"{what}: {'provisiond' if kind == 'pv' else 'virt-install'} ...")
                    row = (provisiond_round(host, name, key_file, key) if kind == "pv"
                           else virt_install_round(host, name, key))
                    if r >= 0:
                        rows[kind].append(row)
            say(f"disk step: {args.disk_n} x overlay and full copy, provisiond and raw ...")
            disk = disk_step(host, args.disk_n)
        finally:
            say("cleaning up ...")
            host.stop()

    print(f"provisiond measured: {version}; load average {load0:.2f} before, "
          f"{os.getloadavg()[0]:.2f} after ({os.cpu_count()} CPUs); "
          f"{time.monotonic() - started:.0f} s")
    if rows["pv"]:
        lines, summary = e2e_report(rows["pv"], rows["vi"])
        print("\n".join(lines + ["", summary]))
    if disk:
        print("\n".join(disk_report(disk)))
    return 0

if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
