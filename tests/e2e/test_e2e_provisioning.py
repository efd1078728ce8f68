"""provisiond end to end against a real libvirt daemon with QEMU (TCG), checked by virsh.

Every test gets its own dir pool (with the template ISO and one free 1 GiB volume) and its
own provisiond process and database; the libvirt daemon is shared by the session, so each
test undefines its domains at the end.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterator

import pytest

from daemon.virt.domain_xml import METADATA_NS, domain_uuid_for
from harness.libvirtd import LibvirtDaemon
from harness.daemon import Daemon, OTHER_USER, REPO, daemon_config

GiB = 1024**3
SIZES = {"one": {"cpus": 1, "memory": 131072, "storage_size_in_gb": 1},
         "two": {"cpus": 2, "memory": 196608, "storage_size_in_gb": 2}}


class E2E:
    """One test's pool on the shared libvirtd, and provisiond processes configured on it."""

    def __init__(self, libvirtd: LibvirtDaemon, directory: Path) -> None:
        self.libvirtd = libvirtd
        self.directory = directory
        self.pool = f"e2e-{uuid.uuid4().hex[:8]}"
        libvirtd.create_dir_pool(self.pool)
        libvirtd.add_iso_to_pool(self.pool, "ipxe.iso")
        libvirtd.create_volume(self.pool, "free-1g.qcow2", "1G", "qcow2")
        self.main = daemon_config(
            directory, storage_pools=[self.pool], sizes=SIZES,
            templates={"ipxe": {"kind": "iso", "volume": {"pool": self.pool,
                                                          "name": "ipxe.iso"}}},
            daemon={"host_wait_timeout": 60, "define_event_timeout": 30, "stop_timeout": 3},
            hosts=[{"name": "e2e", "uri": libvirtd.uri, "domain_type": "qemu"}])
        self.started: list[Daemon] = []

    def daemon(self, crash_at: str | None = None) -> Daemon:
        d = Daemon(self.directory, self.main) if crash_at is None else \
            CrashingDaemon(self.directory, self.main, crash_at)
        self.started.append(d)
        d.start()
        return d

    def virsh(self, *args: str, check: bool = True) -> str:
        return self.libvirtd.virsh(*args, check=check)

    def our_volumes(self) -> list[str]:
        names = self.virsh("vol-list", self.pool).split()
        return sorted(n for n in names if n.startswith("provisiond-"))

    def domains_of(self, request_id: str) -> list[str]:
        """Names of the domains whose provisiond metadata names this request."""
        found = []
        for name in self.virsh("list", "--all", "--name").split():
            meta = self.virsh("metadata", name, METADATA_NS, check=False)
            if f">{request_id}<" in meta:
                found.append(name)
        return found

    def cleanup(self) -> None:
        for d in self.started:
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
        for name in self.virsh("list", "--all", "--name").split():
            self.virsh("destroy", name, check=False)
            self.virsh("undefine", name, check=False)
        self.virsh("pool-destroy", self.pool, check=False)
        self.virsh("pool-undefine", self.pool, check=False)


class CrashingDaemon(Daemon):
    """provisiond run through tests.e2e.crashpoint: it SIGKILLs itself at ``crash_at``."""

    def __init__(self, directory: Path, main: Path, crash_at: str) -> None:
        super().__init__(directory, main)
        self.crash_at = crash_at

    def start(self, timeout: float = 20) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.crashpoint", "--config", str(self.main)],
            stdout=log, stderr=log, cwd=REPO, env={**os.environ,
                                                    "PROVISIOND_CRASH_AT": self.crash_at})
        deadline = time.monotonic() + timeout
        while self.call_ok() is False:
            assert time.monotonic() < deadline and self.proc.poll() is None, self.log()
            time.sleep(0.05)

    def call_ok(self) -> bool:
        try:
            return self.call("GET", "/v1/health").status == 200
        except OSError:
            return False


@pytest.fixture
def e2e(libvirtd: LibvirtDaemon, daemon_dir: Path) -> Iterator[E2E]:
    env = E2E(libvirtd, daemon_dir)
    yield env
    env.cleanup()


def create(d: Daemon, size: str) -> dict[str, Any]:
    reply = d.call("POST", "/v1/requests", {"template": "ipxe", "size": size,
                                             "resource_pool": "rp"})
    assert reply.status == 202, reply.body
    return reply.body


def operate(d: Daemon, request_id: str, operation: str, **body: Any) -> dict[str, Any]:
    """Ask for a VM operation; the request once the operation is over."""
    reply = d.call("POST", f"/v1/requests/{request_id}/{operation}", body or None)
    assert reply.status == 202, reply.body
    return d.call("GET", f"/v1/requests/{request_id}?wait=60").body


def test_a_vm_runs_under_qemu_stops_and_gives_its_wiped_volume_back(e2e: E2E) -> None:
    d = e2e.daemon()
    done = d.wait_terminal(create(d, "one")["id"])
    rid = done["id"]
    assert done["volume"]["name"] == "free-1g.qcow2" and done["vm"]["state"] == "stopped"
    uuid = domain_uuid_for(rid)

    assert operate(d, rid, "start")["vm"]["state"] == "running"
    assert e2e.virsh("domstate", uuid).strip() == "running"  # a real guest, under TCG
    # iPXE does not answer ACPI: forced off once stop_timeout has passed.
    stopped = operate(d, rid, "stop")
    assert stopped["vm"]["state"] == "stopped"
    assert e2e.virsh("domstate", uuid).strip() == "shut off"
    assert "forced off" in d.call("GET", f"/v1/requests/{rid}/log").body["log"][-1]["detail"]
    assert operate(d, rid, "start")["vm"]["state"] == "running"
    assert operate(d, rid, "stop", force=True)["vm"]["state"] == "stopped"

    assert operate(d, rid, "delete")["vm"]["state"] == "deleted"
    assert uuid not in e2e.virsh("list", "--all", "--uuid")
    last = d.call("GET", f"/v1/requests/{rid}/log").body["log"][-1]
    assert f"wiped and released volume {e2e.pool}/free-1g.qcow2" in last["detail"]
    # Wiped, the volume is free again: the next request reuses it.
    again = d.wait_terminal(create(d, "one")["id"])
    assert again["volume"]["name"] == "free-1g.qcow2", again


def test_provision_by_reuse_and_by_creation_as_virsh_sees_it(e2e: E2E) -> None:
    d = e2e.daemon()
    reused = d.wait_terminal(create(d, "one")["id"])
    created = d.wait_terminal(create(d, "two")["id"])
    assert reused["state"] == created["state"] == "done", (reused, created)

    assert reused["volume"]["name"] == "free-1g.qcow2" and not reused["volume"]["owned"]
    assert created["volume"]["name"] == f"provisiond-{created['id']}.qcow2"
    vol = ET.fromstring(e2e.virsh("vol-dumpxml", "--pool", e2e.pool, created["volume"]["name"]))
    assert vol.find("./target/format").get("type") == "qcow2"
    assert int(vol.findtext("capacity")) == 2 * GiB

    dom = ET.fromstring(e2e.virsh("dumpxml", domain_uuid_for(created["id"])))
    assert dom.get("type") == "qemu"
    assert dom.findtext("vcpu") == "2" and dom.findtext("memory") == "196608"
    disks = {d.get("device"): d.find("source") for d in dom.findall("./devices/disk")}
    assert disks["disk"].attrib == {"pool": e2e.pool, "volume": created["volume"]["name"]}
    assert disks["cdrom"].attrib == {"pool": e2e.pool, "volume": "ipxe.iso"}
    assert [b.get("dev") for b in dom.findall("./os/boot")] == ["cdrom", "hd"]
    meta = e2e.virsh("metadata", domain_uuid_for(created["id"]), METADATA_NS)
    assert f">{created['id']}<" in meta and ">two<" in meta
    assert d.call("POST", "/v1/reconcile", {}, as_user=OTHER_USER).body["orphans"] == []


def test_a_started_domain_shows_up_in_the_request_log(e2e: E2E) -> None:
    d = e2e.daemon()
    done = d.wait_terminal(create(d, "one")["id"])
    e2e.virsh("start", domain_uuid_for(done["id"]))  # QEMU under TCG, booting the ISO
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        log = d.call("GET", f"/v1/requests/{done['id']}/log").body["log"]
        if any(e["trigger"] == "libvirt:STARTED" for e in log):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"no STARTED event in {log}")
    assert "running" in e2e.virsh("domstate", domain_uuid_for(done["id"]))


CRASH_POINTS = [
    "after:authorized", "after:storage-searching", "after:storage-creating",
    "before:create_volume", "after:create_volume",
    "after:defining", "before:define_domain", "after:define_domain",
]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_at_each_step_boundary_ends_like_no_crash(e2e: E2E, point: str) -> None:
    crashing = e2e.daemon(crash_at=point)
    try:
        crashing.call("POST", "/v1/requests", {"template": "ipxe", "size": "two",
                                                "resource_pool": "rp"})
    except OSError:
        pass  # killed before it could answer: the request was stored all the same
    assert crashing.proc.wait(20) == -signal.SIGKILL, crashing.log()
    assert f"crashpoint: SIGKILL at {point}" in crashing.log()

    d = e2e.daemon()
    [request] = d.call("GET", "/v1/requests").body["requests"]
    final = d.wait_terminal(request["id"])
    assert final["state"] == "done", final
    assert e2e.our_volumes() == [f"provisiond-{request['id']}.qcow2"]  # one, not two
    assert e2e.domains_of(request["id"]) == [final["name"]]
    assert d.call("POST", "/v1/reconcile", {}, as_user=OTHER_USER).body["orphans"] == []
    states = [e["to"] for e in d.call("GET", f"/v1/requests/{request['id']}/log").body["log"]
              if e["kind"] == "transition"]
    assert states == ["requested", "authorized", "storage-searching", "storage-creating",
                      "defining", "done"]
    assert d.stop() == 0
    db = sqlite3.connect(d.database)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


VM_OPERATIONS: dict[str, tuple[str, dict[str, Any] | None, str, str, str]] = {
    "start": ("start", None, "stopped", "starting", "running"),
    "stop": ("stop", None, "running", "stopping", "stopped"),
    "force-stop": ("stop", {"force": True}, "running", "powering-off", "stopped"),
    "reboot": ("reboot", None, "running", "rebooting", "running"),
    "delete": ("delete", None, "stopped", "deleting", "deleted"),
}
"""name -> (URL verb, body, the VM's resting state before, its busy state, its goal)."""
DOMSTATE = {"stopped": "shut off", "running": "running"}

# The points of each operation: its busy state is committed (the step has not acted yet),
# and each libvirt call of the step is done (acted, its outcome not recorded). A plain stop
# never enters powering-off: its fallback destroy (iPXE ignores ACPI, stop_timeout is 3 s)
# is a second power call in the same step. "after:power" is the first power call.
VM_CRASH_POINTS = [
    ("start", "after:starting", "started on"), ("start", "after:power", "already running"),
    ("stop", "after:stopping", "forced off"), ("stop", "after:power:shutdown", "forced off"),
    ("stop", "before:power:destroy", "forced off"),
    ("stop", "after:power:destroy", "already off"),
    ("force-stop", "after:powering-off", "forced off"),
    ("force-stop", "after:power", "already off"),
    ("reboot", "after:rebooting", "asked to reboot"),
    ("reboot", "after:power", "asked to reboot"),
    ("delete", "after:deleting", "undefined domain"),
    ("delete", "after:undefine_domain", "already gone"),
    ("delete", "after:delete_volume", "already gone"),
]


@pytest.mark.parametrize("operation, point, detail", VM_CRASH_POINTS)
def test_sigkill_in_a_vm_operation_ends_it_once(e2e: E2E, operation: str, point: str,
                                                detail: str) -> None:
    verb, body, rest, busy, goal = VM_OPERATIONS[operation]
    first = e2e.daemon()
    rid = first.wait_terminal(create(first, "two")["id"])["id"]  # its own volume
    if rest == "running":
        assert operate(first, rid, "start")["vm"]["state"] == "running"
    assert first.stop() == 0
    uuid = domain_uuid_for(rid)
    crashing = e2e.daemon(crash_at=point)
    try:
        acknowledged = crashing.call("POST", f"/v1/requests/{rid}/{verb}", body).status == 202
    except OSError:
        acknowledged = False  # killed before it answered: the operation may be lost
    assert crashing.proc.wait(30) == -signal.SIGKILL, crashing.log()
    assert f"crashpoint: SIGKILL at {point}" in crashing.log()

    d = e2e.daemon()
    log = d.call("GET", f"/v1/requests/{rid}/log").body["log"]
    recorded = (rest, busy) in [(e["from"], e["to"]) for e in log]
    assert recorded or not acknowledged  # a 202 means it was on disk
    if not recorded:  # never acknowledged, never done: nothing happened, ask again
        assert e2e.virsh("domstate", uuid).strip() == DOMSTATE[rest]
        assert d.call("POST", f"/v1/requests/{rid}/{verb}", body).status == 202
    final = d.call("GET", f"/v1/requests/{rid}?wait=60").body
    assert final["vm"]["state"] == goal, final
    log = d.call("GET", f"/v1/requests/{rid}/log").body["log"]
    transitions = [e for e in log if e["kind"] == "transition"]
    moves = [(e["from"], e["to"]) for e in transitions]
    into = [m for m in moves if m[1] == busy]
    assert into == [(rest, busy)] and moves[-1] == (busy, goal), moves  # once
    assert moves.count((busy, goal)) == 1, moves
    last = transitions[-1]["detail"]
    assert detail in last, last  # what the resumed step found done
    if goal == "deleted":
        assert e2e.our_volumes() == [] and e2e.domains_of(rid) == []
    else:
        assert e2e.virsh("domstate", uuid).strip() == DOMSTATE[goal]
    assert "Traceback" not in d.log()
    assert d.stop() == 0


def test_requests_wait_for_a_libvirt_daemon_that_is_down_then_finish(e2e: E2E) -> None:
    d = e2e.daemon()
    e2e.libvirtd.stop_libvirtd(signal.SIGKILL)
    try:
        ids = [create(d, "two")["id"] for _ in range(3)]
        time.sleep(1.0)  # they are stuck on the unreachable host now
        assert all(d.call("GET", f"/v1/requests/{i}").body["state"] not in ("done", "failed")
                   for i in ids)
        assert d.call("GET", "/v1/health").body["hosts"] == {"e2e": "disconnected"}
    finally:
        e2e.libvirtd.start()
    finals = [d.wait_terminal(i, timeout=60) for i in ids]
    assert [f["state"] for f in finals] == ["done"] * 3, [f["reason"] for f in finals]
    assert e2e.our_volumes() == sorted(f"provisiond-{i}.qcow2" for i in ids)
    assert all(len(e2e.domains_of(i)) == 1 for i in ids)
    triggers = {e["trigger"] for e in d.call("GET", f"/v1/requests/{ids[0]}/log").body["log"]}
    assert {"connection-lost", "resync"} <= triggers or "host-unreachable" in triggers
    assert_database_sound(d)


def test_libvirt_daemon_restart_with_requests_in_flight(e2e: E2E) -> None:
    d = e2e.daemon()
    ids = [create(d, "two")["id"] for _ in range(6)]
    e2e.libvirtd.restart(signal.SIGKILL, down_for=0.5)
    finals = [d.wait_terminal(i, timeout=60) for i in ids]
    assert [f["state"] for f in finals] == ["done"] * 6, [f["reason"] for f in finals]
    assert e2e.our_volumes() == sorted(f"provisiond-{i}.qcow2" for i in ids)
    assert all(len(e2e.domains_of(i)) == 1 for i in ids)
    assert d.call("POST", "/v1/reconcile", {}, as_user=OTHER_USER).body["orphans"] == []
    assert d.call("GET", "/v1/health").body["hosts"] == {"e2e": "connected"}
    assert_database_sound(d)


def test_a_vm_is_unknown_while_libvirtd_is_down_and_found_running_after(e2e: E2E) -> None:
    d = e2e.daemon()
    rid = d.wait_terminal(create(d, "two")["id"])["id"]
    assert operate(d, rid, "start")["vm"]["state"] == "running"
    e2e.libvirtd.stop_libvirtd(signal.SIGKILL)  # the guest's QEMU lives on
    try:
        deadline = time.monotonic() + 20
        while d.call("GET", f"/v1/requests/{rid}").body["vm"]["state"] != "unknown":
            assert time.monotonic() < deadline, "the VM never became unknown"
            time.sleep(0.1)
        refused = d.call("POST", f"/v1/requests/{rid}/stop")
        assert refused.status == 503 and "unknown" in refused.body["error"]["message"]
    finally:
        e2e.libvirtd.start()
    deadline = time.monotonic() + 60
    while d.call("GET", f"/v1/requests/{rid}").body["vm"]["state"] != "running":
        assert time.monotonic() < deadline, "the VM was not looked up again"
        time.sleep(0.1)
    moves = [(e["from"], e["to"]) for e in d.call("GET", f"/v1/requests/{rid}/log").body["log"]
             if e["kind"] == "transition"]
    assert moves[-2:] == [("running", "unknown"), ("unknown", "running")], moves
    assert e2e.virsh("domstate", domain_uuid_for(rid)).strip() == "running"


def assert_database_sound(d: Daemon) -> None:
    assert d.stop() == 0
    db = sqlite3.connect(d.database)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


def test_changes_behind_the_daemons_back_are_in_the_request_log(e2e: E2E) -> None:
    d = e2e.daemon()
    done = d.wait_terminal(create(d, "two")["id"])
    e2e.virsh("undefine", domain_uuid_for(done["id"]))
    e2e.virsh("pool-destroy", e2e.pool)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            log = d.call("GET", f"/v1/requests/{done['id']}/log").body["log"]
            triggers = [e["trigger"] for e in log]
            if "libvirt:UNDEFINED" in triggers and "libvirt:pool-STOPPED" in triggers:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"events missing from {triggers}")
    finally:
        e2e.virsh("pool-start", e2e.pool)


def test_pool_reads_during_volume_creation_do_not_fail_requests(e2e: E2E) -> None:
    """libvirt lists a volume being created before its file exists; reading the pool
    then (each `virsh pool-refresh` makes provisiond re-read it) must not fail anyone."""
    import threading

    d = e2e.daemon()
    stop = threading.Event()

    def refresh() -> None:
        while not stop.is_set():
            e2e.virsh("pool-refresh", e2e.pool, check=False)

    refresher = threading.Thread(target=refresh)
    refresher.start()
    try:
        ids = [create(d, "two")["id"] for _ in range(12)]
        finals = [d.wait_terminal(i, timeout=60) for i in ids]
    finally:
        stop.set()
        refresher.join()
    assert [f["state"] for f in finals] == ["done"] * 12, [f["reason"] for f in finals]
    assert "not updated" not in d.log()  # every re-read of the pool succeeded
    assert "Traceback" not in d.log()
