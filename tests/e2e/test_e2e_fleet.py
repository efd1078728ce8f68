"""provisiond over a fleet of two real libvirt daemons that share one storage directory.

The hosts h1 and h2 are ``libvirtd`` and ``second_libvirtd`` (two daemons on this one
machine); ``shared_pool`` gives both a dir pool ``shared`` on one directory, as an NFS
export mounted on two hosts would. First the set-up itself is checked through virsh, then
provisiond over the two hosts as one hardware pool (see "provisiond" below).
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterator

import pytest

from daemon.virt.domain_xml import domain_uuid_for
from harness.daemon import REPO, Daemon, daemon_config
from harness.libvirtd import IPXE_ISO, LibvirtDaemon, make_iso
from tests.e2e.conftest import SharedStorage

GUEST_XML = """\
<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='cdrom'/></os>
  <devices>
    <disk type='volume' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source pool='shared' volume='{volume}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='{iso}'/>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def host_uuid(d: LibvirtDaemon) -> str:
    """The host UUID a daemon reports in its capabilities."""
    return ET.fromstring(d.virsh("capabilities")).findtext("./host/uuid") or ""


def pools(d: LibvirtDaemon) -> list[str]:
    """The storage pools defined on a daemon."""
    return d.virsh("pool-list", "--all", "--name").split()


def test_two_daemons_see_one_shared_directory(libvirtd: LibvirtDaemon,
                                              second_libvirtd: LibvirtDaemon,
                                              shared_pool: SharedStorage,
                                              daemon_dir: Path) -> None:
    h1, h2 = libvirtd, second_libvirtd
    assert h1.running and h2.running and h1.uri != h2.uri
    assert h1.virsh("uri").strip() == h1.uri and h2.virsh("uri").strip() == h2.uri
    assert host_uuid(h1) != host_uuid(h2)  # two hosts, as a client tells hosts apart
    # Each daemon has its own state: a pool defined on one only is not on the other.
    private = h1.create_dir_pool(f"only-h1-{uuid.uuid4().hex[:6]}")
    try:
        assert private.name in pools(h1) and private.name not in pools(h2)
    finally:
        h1.remove_pool(private.name)
    # Both pools named shared are on the one directory, the test process sees it too.
    for d in (h1, h2):
        target = ET.fromstring(d.virsh("pool-dumpxml", "shared")).findtext("./target/path")
        assert target == str(shared_pool.path)

    made = h1.create_volume("shared", "smoke.qcow2", "64M")
    assert made == shared_pool.path / "smoke.qcow2" and shared_pool.files() == ["smoke.qcow2"]
    assert shared_pool.volumes(h2) == []  # as with NFS: not seen before a refresh
    h2.virsh("pool-refresh", "shared")
    assert shared_pool.volumes(h2) == ["smoke.qcow2"]
    assert h2.virsh("vol-path", "--pool", "shared", "smoke.qcow2").strip() == str(made)

    # QEMU under the second daemon reaches the file: a guest on it starts there.
    iso = make_iso(daemon_dir / "boot.iso")
    name = f"fleet-smoke-{uuid.uuid4().hex[:6]}"
    h2.define_xml("define", GUEST_XML.format(name=name, volume="smoke.qcow2", iso=iso))
    try:
        h2.virsh("start", name)
        assert h2.virsh("domstate", name).strip() == "running"
        assert str(made) in h2.host_path(f"/var/log/libvirt/qemu/{name}.log").read_text()
        assert name not in h1.virsh("list", "--all", "--name").split()
    finally:
        h2.virsh("destroy", name, check=False)
        h2.virsh("undefine", name, check=False)

    # Deleted through the second daemon, the one file is gone for the first one too.
    h2.virsh("vol-delete", "--pool", "shared", "smoke.qcow2")
    assert shared_pool.files() == []
    h1.virsh("pool-refresh", "shared")
    assert shared_pool.volumes(h1) == []
    # A file put there behind both daemons' backs is listed by both after a refresh.
    shared_pool.add_volume("free.qcow2", "1G")
    assert shared_pool.volumes(h1) == shared_pool.volumes(h2) == ["free.qcow2"]


def test_the_shared_pool_survives_a_restart_of_either_daemon(
        libvirtd: LibvirtDaemon, second_libvirtd: LibvirtDaemon,
        shared_pool: SharedStorage) -> None:
    shared_pool.add_volume("kept.qcow2", "64M")
    second_libvirtd.stop_libvirtd()
    assert not second_libvirtd.running
    assert shared_pool.volumes(libvirtd) == ["kept.qcow2"]  # the other host goes on
    second_libvirtd.start()
    assert "shared" in second_libvirtd.virsh("pool-list", "--name").split()  # active
    assert shared_pool.volumes(second_libvirtd) == ["kept.qcow2"]


# --------------------------------------------------------------------------- provisiond
# provisiond's hardware pool: h1 and h2, and the pool ``shared`` listed as ``shared: true``
# (one pool seen from several hosts: a volume in it claimed once, its space reserved once,
# a VM on a host that sees its volume). The allocation ratios let each host hold exactly
# PER_HOST VMs of size ``one``, so where each request lands is known. Guests are defined,
# and started only where that proves something.

PER_HOST = 2
MEMORY_KIB = 131072
SIZES = {"one": {"cpus": 1, "memory": MEMORY_KIB, "storage_size_in_gb": 1}}
PROVCTL = str(Path(sys.executable).parent / "provctl")
EXPLAIN = {"template": "ipxe", "size": "one", "resource_pool": "rp"}


def node_memory_kib(d: LibvirtDaemon) -> int:
    """The host's memory as ``virsh nodeinfo`` gives it."""
    for line in d.virsh("nodeinfo").splitlines():
        if line.startswith("Memory size:"):
            return int(line.split()[2])
    raise AssertionError(f"no memory size in {d.virsh('nodeinfo')}")


class Fleet:
    """h1 and h2 with the shared pool, and provisiond processes configured on them."""

    def __init__(self, h1: LibvirtDaemon, h2: LibvirtDaemon, shared: SharedStorage,
                 directory: Path) -> None:
        self.hosts = {"h1": h1, "h2": h2}
        self.shared = shared
        self.directory = directory
        memory = {node_memory_kib(d) for d in self.hosts.values()}
        assert len(memory) == 1, memory  # one machine: the same figures on both
        # Room for PER_HOST and a half: exactly PER_HOST fit, whatever the machine.
        ratio = (PER_HOST + 0.5) * MEMORY_KIB / memory.pop()
        self.main = daemon_config(
            directory, storage_pools=[{"name": "shared", "shared": True}], sizes=SIZES,
            templates={"ipxe": {"kind": "iso", "path": str(IPXE_ISO)}},
            daemon={"host_wait_timeout": 60, "define_event_timeout": 30, "stop_timeout": 3},
            hosts=[{"name": name, "uri": d.uri, "domain_type": "qemu"}
                   for name, d in self.hosts.items()],
            hardware={"cpu_allocation_ratio": 1000, "ram_allocation_ratio": ratio,
                      "host_policy": "spread"})
        self.started: list[Daemon] = []

    def daemon(self) -> Daemon:
        """A started provisiond on the fleet's configuration."""
        d = Daemon(self.directory, self.main)
        self.started.append(d)
        d.start()
        return d

    def submit(self, d: Daemon, count: int) -> list[str]:
        """Ask for ``count`` VMs at once (none waited for); their request ids."""
        ids = []
        for _ in range(count):
            reply = d.call("POST", "/v1/requests", {"template": "ipxe", "size": "one",
                                                     "resource_pool": "rp"})
            assert reply.status == 202, reply.body
            ids.append(reply.body["id"])
        return ids

    def finish(self, d: Daemon, ids: list[str]) -> list[dict[str, Any]]:
        """Wait for the requests; each must be done."""
        finals = [d.wait_terminal(i, timeout=60) for i in ids]
        assert [f["state"] for f in finals] == ["done"] * len(ids), \
            [(f["host"], f["reason"]) for f in finals]
        return finals

    def operate(self, d: Daemon, request_id: str, operation: str,
                **body: Any) -> dict[str, Any]:
        """A VM operation; the request once it is over."""
        reply = d.call("POST", f"/v1/requests/{request_id}/{operation}", body or None)
        assert reply.status == 202, reply.body
        return d.call("GET", f"/v1/requests/{request_id}?wait=60").body

    def domains(self, host: str) -> set[str]:
        """The UUIDs of the domains defined on a host, as virsh lists them."""
        return set(self.hosts[host].virsh("list", "--all", "--uuid").split())

    def disk_of(self, host: str, uuid: str) -> dict[str, str]:
        """A domain's disk source (its pool and volume) as the host has it."""
        dom = ET.fromstring(self.hosts[host].virsh("dumpxml", uuid))
        source = dom.find("./devices/disk[@device='disk']/source")
        assert source is not None, ET.tostring(dom)
        return dict(source.attrib)

    def wait_host(self, d: Daemon, host: str, state: str, timeout: float = 30) -> None:
        """Wait until provisiond's health says the host is ``state``."""
        deadline = time.monotonic() + timeout
        while (seen := d.call("GET", "/v1/health").body["hosts"].get(host)) != state:
            assert time.monotonic() < deadline, f"{host} still {seen}, not {state}"
            time.sleep(0.05)

    def cleanup(self) -> None:
        """Stop the provisiond processes (their logs printed), undefine every domain."""
        for d in self.started:
            if d.proc is not None and d.proc.poll() is None:
                d.stop()
            print(d.log())
        for host in self.hosts.values():
            if not host.running:
                host.start()
            for name in host.virsh("list", "--all", "--name").split():
                host.virsh("destroy", name, check=False)
                host.virsh("undefine", name, check=False)


@pytest.fixture
def fleet(libvirtd: LibvirtDaemon, second_libvirtd: LibvirtDaemon,
          shared_pool: SharedStorage, daemon_dir: Path) -> Iterator[Fleet]:
    """The two hosts with the shared pool, configured as one hardware pool (``Fleet``)."""
    env = Fleet(libvirtd, second_libvirtd, shared_pool, daemon_dir)
    try:
        yield env
    finally:
        env.cleanup()


def test_requests_spread_over_both_hosts_with_their_volumes_in_one_directory(
        fleet: Fleet) -> None:
    d = fleet.daemon()
    ids = fleet.submit(d, 2 * PER_HOST)
    done = fleet.finish(d, ids)

    placed = {h: {r["id"] for r in done if r["host"] == h} for h in fleet.hosts}
    assert [len(placed[h]) for h in fleet.hosts] == [PER_HOST, PER_HOST], placed
    for host, rids in placed.items():  # virsh agrees with the requests' host field
        assert fleet.domains(host) == {domain_uuid_for(i) for i in rids}
    # Each VM's volume: created once, a file of the one shared directory, its disk there.
    names = []
    for r in done:
        vol = r["volume"]
        assert vol["pool"] == "shared" and vol["owned"], r
        assert vol["name"] == f"provisiond-{r['id']}.qcow2"
        assert vol["path"] == str(fleet.shared.path / vol["name"])
        assert fleet.disk_of(r["host"], domain_uuid_for(r["id"])) == {
            "pool": "shared", "volume": vol["name"]}
        names.append(vol["name"])
    assert fleet.shared.files() == sorted(names)
    # A guest started on each host: each host's QEMU reaches the VM's file.
    for host in fleet.hosts:
        rid = min(placed[host])
        assert fleet.operate(d, rid, "start")["vm"]["state"] == "running"
        assert fleet.hosts[host].virsh("domstate", domain_uuid_for(rid)).strip() == "running"
        assert fleet.operate(d, rid, "stop", force=True)["vm"]["state"] == "stopped"

    # Once each host has listed the directory afresh, the other host's VMs' volumes are
    # there too: in use, not free. A VM given back on h1 makes room for a new one there.
    fleet.shared.refresh()
    gone = min(placed["h1"])
    assert fleet.operate(d, gone, "delete")["vm"]["state"] == "deleted"
    explained = d.call("POST", "/v1/placement/explain", EXPLAIN).body
    assert (explained["host"], explained["action"]) == ("h1", "create"), explained
    [new] = fleet.finish(d, fleet.submit(d, 1))
    assert new["host"] == "h1"
    assert new["volume"]["name"] == f"provisiond-{new['id']}.qcow2", \
        f"took another VM's disk: {new['volume']}"
    names = [*names, new["volume"]["name"]]
    names.remove(f"provisiond-{gone}.qcow2")
    assert fleet.shared.files() == sorted(names)

    for rid in [*ids, new["id"]]:
        if rid != gone:
            assert fleet.operate(d, rid, "delete")["vm"]["state"] == "deleted"
    assert fleet.domains("h1") == fleet.domains("h2") == set()
    assert fleet.shared.files() == []  # every volume deleted once, none left over
    fleet.shared.refresh()
    assert [fleet.shared.volumes(h) for h in fleet.hosts.values()] == [[], []]
    assert "Traceback" not in d.log()


def test_a_free_shared_volume_is_reused_by_one_request_only(fleet: Fleet) -> None:
    fleet.shared.add_volume("free-1g.qcow2", "1G")  # the request size, seen by both hosts
    assert [fleet.shared.volumes(h) for h in fleet.hosts.values()] == [["free-1g.qcow2"]] * 2
    d = fleet.daemon()
    ids = fleet.submit(d, 2 * PER_HOST)  # all at once, placed on both hosts
    done = fleet.finish(d, ids)
    assert sorted(r["host"] for r in done) == ["h1"] * PER_HOST + ["h2"] * PER_HOST

    reused = [r for r in done if not r["volume"]["owned"]]
    assert [r["volume"]["name"] for r in reused] == ["free-1g.qcow2"], \
        [(r["host"], r["volume"]) for r in done]
    created = sorted(r["volume"]["name"] for r in done if r["volume"]["owned"])
    assert created == sorted(f"provisiond-{r['id']}.qcow2" for r in done
                             if r["volume"]["owned"])
    assert fleet.shared.files() == sorted(["free-1g.qcow2", *created])
    # One domain on the two hosts has the free volume as its disk: the reusing one.
    users = [(host, uuid) for host in fleet.hosts for uuid in fleet.domains(host)
             if fleet.disk_of(host, uuid)["volume"] == "free-1g.qcow2"]
    assert users == [(reused[0]["host"], domain_uuid_for(reused[0]["id"]))]

    for rid in ids:
        assert fleet.operate(d, rid, "delete")["vm"]["state"] == "deleted"
    # The created volumes deleted, the reused one wiped and kept, free again.
    assert fleet.shared.files() == ["free-1g.qcow2"]
    last = d.call("GET", f"/v1/requests/{reused[0]['id']}/log").body["log"][-1]
    assert "wiped and released volume shared/free-1g.qcow2" in last["detail"], last
    assert "Traceback" not in d.log()


def test_requests_fail_over_to_the_first_host_while_the_second_is_down(
        fleet: Fleet) -> None:
    d = fleet.daemon()
    fleet.wait_host(d, "h2", "connected")
    h2 = fleet.hosts["h2"]
    h2.stop_libvirtd()
    try:
        fleet.wait_host(d, "h2", "disconnected")
        explained = d.call("POST", "/v1/placement/explain", EXPLAIN)
        assert explained.status == 200, explained.body
        assert explained.body["host"] == "h1" and explained.body["action"] == "create"
        verdicts = {h["host"]: (h["verdict"], h["reason"]) for h in explained.body["hosts"]}
        assert verdicts["h2"] == ("refused", "unreachable"), verdicts
        assert verdicts["h1"][0] == "ok", verdicts
        cli = subprocess.run([PROVCTL, "--socket", d.socket, "explain", "-t", "ipxe",
                              "-s", "one", "-p", "rp"], capture_output=True, text=True,
                             timeout=30, cwd=REPO)
        assert cli.returncode == 0, cli.stderr
        assert any(line.split()[:3] == ["h2", "refused", "unreachable"]
                   for line in cli.stdout.splitlines()), cli.stdout

        done = fleet.finish(d, fleet.submit(d, PER_HOST))
        assert [r["host"] for r in done] == ["h1"] * PER_HOST
        assert fleet.domains("h1") == {domain_uuid_for(r["id"]) for r in done}
        assert all(Path(r["volume"]["path"]).parent == fleet.shared.path for r in done)
    finally:
        if not h2.running:
            h2.start()
    fleet.wait_host(d, "h2", "connected")
    # Back, h2 lists the shared directory afresh: h1's VMs' volumes are there, not free.
    explained = d.call("POST", "/v1/placement/explain", EXPLAIN).body
    assert (explained["host"], explained["action"]) == ("h2", "create"), explained
    [back] = fleet.finish(d, fleet.submit(d, 1))
    assert back["host"] == "h2"  # h1 is full: the host that came back takes it
    assert back["volume"]["name"] == f"provisiond-{back['id']}.qcow2", \
        f"took another VM's disk: {back['volume']} (h1's: {[r['volume'] for r in done]})"
    assert fleet.domains("h2") == {domain_uuid_for(back["id"])}
    assert fleet.shared.files() == sorted(
        f"provisiond-{r['id']}.qcow2" for r in [*done, back])
    assert "Traceback" not in d.log()
