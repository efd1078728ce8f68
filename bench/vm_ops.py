"""VM operations on a real libvirtd with QEMU: provisiond against the raw calls, and
provctl against virsh, per operation, same run (issue 11, point 7).

    ./dev bench vm_ops [--n 20]

N VMs provisioned through provisiond (1 GiB qcow2 + a domain with the iPXE CD-ROM,
booted under TCG), then per VM, one VM at a time, each operation as a user asks for it:
start (``POST .../start?wait=60``, answered when the VM is running: one call), forced
stop (``POST .../stop?wait=60 {"force": true}``), delete (undefine and the VM's own volume
deleted).

Baseline, same run, same host: domains of the same XML on volumes of their own, and the
raw calls provisiond makes for each operation (Python binding, in process, on handles
kept as provisiond keeps them): ``state()`` + ``create()``, ``state()`` + ``destroy()``,
``XMLDesc(0)`` + ``undefine()`` + the volume's ``delete()`` (the XML says whose domain it
is and whether it runs); twice, VM by VM alternately:

- bare: the libvirt calls alone;
- with writes: also the durable writes provisiond makes for each operation, as cheaply
  as they can be made: a database of provisiond's own schema with its pragmas (WAL,
  ``synchronous=FULL``, foreign keys), and per operation one transaction committed before
  the libvirt call(s) (the VM's state row UPDATEd to the operation's state + its log row
  INSERTed) and one after (the state row to where the operation ends + its log row; for
  a delete also the VM's volume claim and space reservation deleted, as provisiond's
  ``release_storage`` does), by plain ``sqlite3`` statements: no ORM, no event loop.

The target ratio is provisiond over the raw calls *with writes*: that is the same work
(the same libvirt calls, the same durable writes). The bare figure shows what two
durable commits cost per operation on this disk.

Then the same three operations as processes: ``provctl start|stop --force|delete ID
--wait`` against ``virsh start``, ``virsh destroy`` and ``virsh undefine DOMAIN --storage
vda`` (the domain and its own volume, as provctl's delete; not ``--remove-all-storage``,
which also deletes the CD-ROM's volume, the ISO every VM shares).
Order: provisiond; then provctl and virsh VM by VM alternately (provisiond running for
both: phases minutes apart differed by tens of ms in QEMU's start alone, more than the two
clients do); then provisiond is stopped (it would take in the baseline domains' events)
and the raw calls run.
Targets: provisiond within 1.2x of the raw calls with writes; provctl no slower than virsh.
The verdicts compare medians (the means are printed too): a QEMU start varies by tens of
ms from one VM to the next, and libvirt's destroy polls the QEMU process it signalled
every 200 ms, so one slow VM in ten moves a mean of ten by 20 ms on either side.
Under each provisiond figure, provisiond's own view of the same operations (its /metrics):
the time in the operation's busy state and, for a delete, in each of its libvirt calls.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from statistics import median
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from realhost import (  # noqa: E402
    RealHost,
    code_version,
    interruptible,
    ms,
    require_root_and_packages,
    say,
    stats,
)

from daemon.store import Store  # noqa: E402
from daemon.store.records import Reservation  # noqa: E402
from statemachines.provisioning import State  # noqa: E402

OPERATIONS = ("start", "force-stop", "delete")
PROVCTL = str(Path(sys.executable).parent / "provctl")
TARGET_RAW = 1.2

TRANSITIONS = {
    "start": (("stopped", "starting", "start"), ("starting", "running", "started")),
    "force-stop": (("running", "powering-off", "force_off"),
                   ("powering-off", "stopped", "stopped")),
    "delete": (("stopped", "deleting", "delete"), ("deleting", "deleted", "deleted")),
}
"""Per operation, the two VM transitions provisiond records: (from, to, trigger) before
it acts, and at its end."""


def through_provisiond(host: RealHost, ids: list[str]) -> dict[str, list[float]]:
    """Seconds per operation, from the POST until the VM is where it goes."""
    assert host.api is not None
    api = host.api
    out: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    for request_id in ids:
        for op, path, body, goal in (("start", "start", None, "running"),
                                     ("force-stop", "stop", {"force": True}, "stopped"),
                                     ("delete", "delete", None, "deleted")):
            t0 = time.perf_counter()
            # One call: the answer comes when the operation is over (as provctl --wait asks).
            status, answer = api.call("POST", f"/v1/requests/{request_id}/{path}?wait=60",
                                      body)
            if status not in (200, 202):
                raise RuntimeError(f"{path}: {status} {answer}")
            while answer["vm"]["state"] != goal:
                answer = host.state(request_id, wait=60)
                if answer["vm"]["state"] not in ("starting", "powering-off", "deleting",
                                                 goal):
                    raise RuntimeError(f"{path}: VM is {answer['vm']}")
            out[op].append(time.perf_counter() - t0)
    return out


BUSY = {"start": "starting", "force-stop": "powering-off", "delete": "deleting"}
"""Each operation's state while its step runs (provisiond's metrics time each state)."""
CALLS = {"start": (), "force-stop": (), "delete": ("undefine_domain", "delete_volume")}
"""The libvirt adapter calls of each operation's step shown (start's and forced stop's
are one call, ``domain_power``, timed together: not shown)."""


def server_view(host: RealHost) -> dict[str, str]:
    """provisiond's own figures after the provisiond phase (its /metrics): per operation,
    the mean time in its busy state (from the transition into it, its commit included, to
    the one out of it) and, for a delete, the mean time of each libvirt call of its step
    (as the loop sees it: a thread hop each way included)."""
    metrics = host.metrics()

    def mean(name: str, **labels: str) -> float | None:
        found = {n: v for (n, lab), v in metrics.items()
                 if all((k, x) in lab for k, x in labels.items())}
        count = found.get(f"{name}_count")
        return found[f"{name}_sum"] / count if count else None

    out = {}
    for op in OPERATIONS:
        busy = mean("provisiond_state_seconds", state=BUSY[op])
        calls = [(c, mean("provisiond_libvirt_call_seconds", call=c)) for c in CALLS[op]]
        out[op] = f"{BUSY[op]} {ms(busy) if busy is not None else '-'} ms" + "".join(
            f", {c} {ms(v) if v is not None else '-'} ms" for c, v in calls)
    return out


class Journal:
    """The durable writes provisiond makes per VM operation, by plain SQL on a database of
    its schema, with its pragmas: one committed transaction per call of ``write``."""

    def __init__(self, path: Path) -> None:
        store = Store(path)
        store.migrate()
        store.close()
        self.path = path
        self.db = sqlite3.connect(str(path), isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON",
                       "busy_timeout=5000"):
            self.db.execute(f"PRAGMA {pragma}")

    def add_vm(self, pool: str, volume: str, domain: str) -> str:
        """A done request whose VM is stopped, with its volume claim and reservation, as
        provisiond leaves one (written by the store's own methods; not timed)."""
        store = Store(self.path)
        try:
            rid = uuid.uuid4().hex
            store.insert_request({
                "id": rid, "name": domain, "owner": "bench", "owner_groups": [],
                "template": "ipxe", "size": "bench", "resource_pool": "rp",
                "hardware_pool": "hw", "cpus": 1, "memory_kib": 131072, "storage_gb": 1},
                detail="bench asked for ipxe / bench in rp")
            store.claim_volume("bench", pool, volume, rid)
            store.reserve_space(Reservation(rid, "bench", pool, volume, 1024**3))
            store.record_transition(rid, State.REQUESTED, State.DONE, "finish", "bench", {
                "host": "bench", "volume_pool": pool, "volume_name": volume,
                "volume_format": "qcow2", "volume_owned": 1, "domain_uuid": str(uuid.uuid4()),
                "domain_name": domain, "vm_state": "stopped"})
        finally:
            store.close()
        return rid

    def write(self, rid: str, source: str, dest: str, trigger: str, detail: str,
              release: bool = False) -> None:
        """One durable transaction: the VM's state row and a log row (``release``: also its
        volume claim and space reservation deleted)."""
        now = time.time()
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            cursor = db.execute(
                "UPDATE requests SET vm_state = ?, updated_at = ?, vm_reason = NULL"
                " WHERE id = ? AND vm_state = ?", (dest, now, rid, source))
            if cursor.rowcount != 1:
                raise RuntimeError(f"VM {rid} is not {source}")
            db.execute("INSERT INTO state_log (request_id, kind, from_state, to_state, trigger,"
                       " at, detail) VALUES (?, 'transition', ?, ?, ?, ?, ?)",
                       (rid, source, dest, trigger, now, detail))
            if release:
                db.execute("DELETE FROM volume_claims WHERE request_id = ?", (rid,))
                db.execute("DELETE FROM pool_reservations WHERE request_id = ?", (rid,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Close the connection."""
        self.db.close()


def raw_calls(host: RealHost, n: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """The same operations by the binding, on domains defined the same way: (bare, with
    provisiond's durable writes), VM by VM alternately."""
    journal = Journal(host.directory / "raw-journal.db")
    try:
        vms: list[tuple[Any, Any, str | None]] = []
        for i in range(2 * n):
            name = f"raw-{i}-{time.monotonic_ns()}"
            volume = f"{name}.qcow2"
            vol = host.storage_pool.createXML(host.volume_xml(volume), 0)
            dom = host.conn.defineXML(host.domain_xml(name, volume))
            vms.append((dom, vol, journal.add_vm(host.pool, volume, name) if i % 2 else None))
        bare: dict[str, list[float]] = {op: [] for op in OPERATIONS}
        written: dict[str, list[float]] = {op: [] for op in OPERATIONS}
        for dom, vol, rid in vms:
            name = dom.name()
            # provisiond's calls: the power state, then the action; for a delete the XML
            # (whose domain it is, whether it runs), the undefine, the volume's delete.
            for op, act in (("start", lambda: (dom.state(), dom.create())),
                            ("force-stop", lambda: (dom.state(), dom.destroy())),
                            ("delete", lambda: (dom.XMLDesc(0), dom.undefine(),
                                                vol.delete(0)))):
                (source, mid, trigger), (_mid, dest, done) = TRANSITIONS[op]
                t0 = time.perf_counter()
                if rid is not None:
                    journal.write(rid, source, mid, trigger, f"{op} asked by bench")
                act()
                if rid is not None:
                    journal.write(rid, mid, dest, done, f"domain {name}: {op} done on bench",
                                  release=op == "delete")
                (bare if rid is None else written)[op].append(time.perf_counter() - t0)
    finally:
        journal.close()
    return bare, written


def timed(argv: list[str]) -> float:
    """Seconds one process takes, start to exit."""
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - t0


def provctl_and_virsh(host: RealHost, ids: list[str], names: list[str]
                      ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """provctl against provisiond and virsh against libvirtd, a process per operation,
    VM by VM alternately (which goes first alternating too): a QEMU start varies by tens
    of ms from one stretch of minutes to the next, more than provctl and virsh differ,
    so the two are measured in the same stretches, provisiond running for both."""
    assert host.daemon is not None
    sock = ["--socket", host.daemon.socket]
    provctl: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    virsh: dict[str, list[float]] = {op: [] for op in OPERATIONS}
    base = ["virsh", "-c", host.libvirtd.uri]

    def by_provctl(request_id: str) -> None:
        provctl["start"].append(timed([PROVCTL, *sock, "start", request_id, "--wait"]))
        provctl["force-stop"].append(timed([PROVCTL, *sock, "stop", request_id, "--force",
                                            "--wait"]))
        provctl["delete"].append(timed([PROVCTL, *sock, "delete", request_id, "--wait"]))

    def by_virsh(name: str) -> None:
        virsh["start"].append(timed([*base, "start", name]))
        virsh["force-stop"].append(timed([*base, "destroy", name]))
        # the domain and its own volume (the disk vda), not the shared ISO (sda)
        virsh["delete"].append(timed([*base, "undefine", name, "--storage", "vda"]))

    for i, (request_id, name) in enumerate(zip(ids, names)):
        if i % 2:
            by_virsh(name)
            by_provctl(request_id)
        else:
            by_provctl(request_id)
            by_virsh(name)
    host.storage_pool.refresh(0)
    left = {v.name() for v in host.storage_pool.listAllVolumes()}
    if left & {f"{name}.qcow2" for name in names}:
        raise RuntimeError(f"virsh undefine --storage vda left volumes: {sorted(left)}")
    return provctl, virsh


def provision(host: RealHost, n: int) -> list[str]:
    """N VMs through provisiond, one after the other; their request ids."""
    ids, _times = host.provision_sequential(n, 0)
    return ids


def define_raw(host: RealHost, n: int) -> list[str]:
    """N domains of provisiond's XML on volumes of their own, by the binding."""
    names = []
    for i in range(n):
        name = f"virsh-{i}-{time.monotonic_ns()}"
        host.storage_pool.createXML(host.volume_xml(f"{name}.qcow2"), 0)
        host.conn.defineXML(host.domain_xml(name, f"{name}.qcow2"))
        names.append(name)
    return names


def main() -> int:
    """Run the three phases and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="VMs per path (default 20)")
    args = parser.parse_args()
    require_root_and_packages()
    mean: Callable[[list[float]], float] = lambda v: sum(v) / len(v)  # noqa: E731
    with interruptible(), RealHost() as host:
        host.fresh_provisiond()
        say(f"provisiond: {args.n} VMs, each started, forced off, deleted ...")
        prov = through_provisiond(host, provision(host, args.n))
        inside = server_view(host)
        say(f"provctl and virsh: {args.n} VMs each, alternately ...")
        provctl, virsh = provctl_and_virsh(host, provision(host, args.n),
                                           define_raw(host, args.n))
        # the raw calls run without provisiond (it would take in their domains' events)
        host.stop_provisiond()
        host.reset()
        say(f"raw calls: {args.n} VMs bare and {args.n} with the durable writes ...")
        raw, raw_w = raw_calls(host, args.n)
        host.reset()
    print(f"vm_ops measured: {code_version()}; n={args.n}")
    rows: list[Any] = []
    for op in OPERATIONS:
        print(f"  {op:<10} provisiond        {stats(prov[op])}")
        print(f"  {op:<10}   in provisiond (means): {inside[op]}")
        print(f"  {op:<10} raw calls         {stats(raw[op])}")
        print(f"  {op:<10} raw calls+writes  {stats(raw_w[op])}")
        print(f"  {op:<10} provctl           {stats(provctl[op])}")
        print(f"  {op:<10} virsh             {stats(virsh[op])}")
        rows.append((op, median(prov[op]) / median(raw_w[op]),
                     median(prov[op]) / median(raw[op]),
                     median(provctl[op]) / median(virsh[op]),
                     mean(prov[op]) / mean(raw_w[op]), mean(provctl[op]) / mean(virsh[op])))
    print("  target ratio: provisiond over the raw calls with writes (the same libvirt calls\n"
          "  and the same two durable commits per operation); ratios of medians (QEMU's\n"
          "  start and destroy vary by steps of up to 200 ms, see bench/README.md)")
    for op, over_written, over_bare, over_virsh, mean_written, mean_virsh in rows:
        print(f"vm_ops: {op}: provisiond/raw+writes {over_written:.2f} (target <= "
              f"{TARGET_RAW:g}: {'met' if over_written <= TARGET_RAW else 'MISSED'}; over "
              f"bare raw {over_bare:.2f}), provctl/virsh {over_virsh:.2f} (target <= 1: "
              f"{'met' if over_virsh <= 1 else 'MISSED'}); medians ms: provisiond "
              f"{ms(median(prov[op]))}, raw+writes {ms(median(raw_w[op]))}, raw "
              f"{ms(median(raw[op]))}, provctl {ms(median(provctl[op]))}, virsh "
              f"{ms(median(virsh[op]))}; ratios of means {mean_written:.2f} and "
              f"{mean_virsh:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
