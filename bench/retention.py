"""History without unbounded growth: the database after N create+delete cycles.

    ./dev bench retention [--n 100000] [--batch 1000]

Each cycle writes what provisiond writes for a VM that is created then deleted: the
request and its provisioning transitions (requested .. done, the VM stopped), then the
VM's (stopped -> deleting -> deleted), each with its log row, through the store's own
methods, a batch of cycles per transaction. Run twice on fresh databases: without
pruning (retention longer than the run), and with ``Store.prune_deleted`` after each
batch (retention 0: what the daemon's hourly pruning does once deleted VMs are older
than ``daemon.retention_days``). Prints the database's size and rows for both.
``measure`` is what ``bench/memory.py --retention-cycles N`` calls.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from daemon.store import Store  # noqa: E402
from statemachines.provisioning import State  # noqa: E402
from statemachines.vm import VmState  # noqa: E402

WALK = [(State.REQUESTED, State.AUTHORIZED, "authorize"),
        (State.AUTHORIZED, State.STORAGE_SEARCHING, "search_storage"),
        (State.STORAGE_SEARCHING, State.DEFINING, "reuse_volume"),
        (State.DEFINING, State.DONE, "finish")]


def cycle(store: Store) -> str:
    """One VM created and deleted, as the daemon records it."""
    rid = uuid.uuid4().hex
    store.insert_request({
        "id": rid, "name": f"vm-{rid[:8]}", "owner": "bench", "owner_groups": [],
        "template": "ipxe", "size": "small", "resource_pool": "rp", "hardware_pool": "hw",
        "cpus": 1, "memory_kib": 131072, "storage_gb": 1}, detail="bench asked")
    for source, dest, trigger in WALK:
        fields = {"vm_state": str(VmState.STOPPED)} if dest == State.DONE else {}
        store.record_transition(rid, source, dest, trigger, f"{trigger} detail", fields)
    store.record_vm_transition(rid, VmState.STOPPED, VmState.DELETING, "delete", "by bench")
    store.record_vm_transition(rid, VmState.DELETING, VmState.DELETED, "deleted",
                               "undefined domain; deleted volume")
    return rid


def run(n: int, batch: int, prune: bool) -> tuple[float, int, int, int]:
    """(seconds, database bytes, requests rows, log rows) after n cycles."""
    with tempfile.TemporaryDirectory(prefix="provisiond-bench-retention-") as tmp:
        path = Path(tmp) / "provisiond.db"
        store = Store(path)
        store.migrate()
        started = time.perf_counter()
        for first in range(0, n, batch):
            with store.atomic():
                for _ in range(min(batch, n - first)):
                    cycle(store)
            if prune:
                while store.prune_deleted(time.time() + 1):
                    pass
        seconds = time.perf_counter() - started
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        requests = store.db.execute("SELECT COUNT(*) FROM requests").fetchone()[0]
        log_rows = store.db.execute("SELECT COUNT(*) FROM state_log").fetchone()[0]
        store.close()
        return seconds, os.path.getsize(path), requests, log_rows


def measure(n: int, batch: int = 1000) -> list[str]:
    """n cycles without pruning, then with it: a figure line for each, then the summary."""
    kept = run(n, batch, prune=False)
    pruned = run(n, batch, prune=True)
    lines = [f"{name}: {size / 1e6:.1f} MB, {requests} requests, {log_rows} log rows "
             f"({seconds:.1f} s)"
             for name, (seconds, size, requests, log_rows) in (("without pruning", kept),
                                                               ("with pruning", pruned))]
    lines.append(f"after {n} create+delete cycles the database is {kept[1] / 1e6:.1f} MB kept, "
                 f"{pruned[1] / 1e6:.1f} MB pruned ({pruned[1] / kept[1]:.3f} of it)")
    return lines


def main() -> None:
    """Measure and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="create+delete cycles")
    parser.add_argument("--batch", type=int, default=1000, help="cycles per transaction")
    args = parser.parse_args()
    *figures, summary = measure(args.n, args.batch)
    for line in figures:
        print(f"  {line}")
    print(f"retention: {summary}")


if __name__ == "__main__":
    main()
