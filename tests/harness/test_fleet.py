"""harness/fleet.py: the generated node XMLs open on the test driver as generated, and a
provisiond runs on them."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

import libvirt

from harness.daemon import Daemon, daemon_config
from harness.fleet import SHARED_VOLUME_GIB, fleet_shapes, shared_volume_name, write_fleet


def test_shapes_vary_and_follow_the_seed() -> None:
    shapes = fleet_shapes(50)
    assert shapes == fleet_shapes(50, seed=0) != fleet_shapes(50, seed=1)
    assert len({cpus for cpus, _ in shapes}) > 1 and len({mem for _, mem in shapes}) > 1
    assert all(cpus in (4, 8, 16, 32) and 8 * 1024**2 <= mem <= 128 * 1024**2
               for cpus, mem in shapes)


def test_hosts_open_with_their_shapes_and_one_shared_export(tmp_path: Path) -> None:
    hosts = write_fleet(tmp_path / "fleet", 3, seed=7, shared_volumes=4)
    assert [h["name"] for h in hosts] == ["host-00", "host-01", "host-02"]
    seen = []
    for host, (cpus, memory_kib) in zip(hosts, fleet_shapes(3, seed=7)):
        assert host["uri"].startswith("test:///")
        conn = libvirt.open(host["uri"])
        try:
            info = conn.getInfo()
            assert (info[2], info[1]) == (cpus, memory_kib // 1024)  # memory in MiB
            local = conn.storagePoolLookupByName("pool-dir")
            assert local.listVolumes() == ["ipxe.iso"]
            shared = conn.storagePoolLookupByName("pool-shared")
            assert shared.isActive()
            source = ET.fromstring(shared.XMLDesc()).findall("source/*")
            volumes = {v.name(): (v.path(), v.info()[1]) for v in shared.listAllVolumes()}
            seen.append(([(e.tag, dict(e.attrib)) for e in source], shared.UUIDString(),
                         volumes))
        finally:
            conn.close()
    expected = {shared_volume_name(i): (f"/pools/shared/{shared_volume_name(i)}",
                                        SHARED_VOLUME_GIB * 1024**3) for i in range(4)}
    export = [("host", {"name": "nfs.example"}), ("dir", {"path": "/export/vms"}),
              ("format", {"type": "nfs"})]
    assert all(s[0] == export and s[2] == expected for s in seen)
    assert len({s[1] for s in seen}) == 3  # each host's libvirt defined it: its own uuid


def test_without_local_pool_the_iso_is_shared(tmp_path: Path) -> None:
    [host] = write_fleet(tmp_path, 1, local_pool=False)
    conn = libvirt.open(host["uri"])
    try:
        assert conn.listStoragePools() == ["pool-shared"]
        assert conn.storagePoolLookupByName("pool-shared").listVolumes() == ["ipxe.iso"]
    finally:
        conn.close()


def test_provisiond_places_on_the_fleet(tmp_path: Path) -> None:
    hosts = write_fleet(tmp_path / "fleet", 3)
    d = Daemon(tmp_path, daemon_config(tmp_path, hosts=hosts, storage_pools=["pool-dir"]))
    d.start()
    try:
        ids = [d.call("POST", "/v1/requests", {"template": "ipxe", "size": "tiny",
                                               "resource_pool": "rp"}).body["id"]
               for _ in range(3)]
        done = [d.wait_terminal(i) for i in ids]
    finally:
        d.stop()
    assert [r["state"] for r in done] == ["done"] * 3
    assert {r["host"] for r in done} <= {h["name"] for h in hosts}
