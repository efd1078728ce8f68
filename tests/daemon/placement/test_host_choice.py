"""Host choice among a hardware pool's hosts: capacity with allocation ratios, policies,
and on test-driver hosts of different sizes, the request's log naming host and why."""

from __future__ import annotations

from pathlib import Path

from daemon.placement.hosts import HostFigures, choose_host
from harness.daemon import DATA
from statemachines.provisioning import State

GIB = 1024**2  # in KiB


def test_spread_takes_the_most_free_memory_and_pack_the_least_that_holds():
    hosts = [HostFigures("a", True, 8, 16 * GIB, 2, 4 * GIB),   # 12 GiB free
             HostFigures("b", True, 8, 32 * GIB, 6, 8 * GIB),   # 24 GiB free
             HostFigures("c", True, 8, 8 * GIB, 0, 6 * GIB)]    # 2 GiB free
    assert choose_host(hosts, 1, GIB, policy="spread", cpu_ratio=1, ram_ratio=1)[0] == "b"
    assert choose_host(hosts, 1, GIB, policy="pack", cpu_ratio=1, ram_ratio=1)[0] == "c"
    assert choose_host(hosts, 1, 4 * GIB, policy="pack", cpu_ratio=1, ram_ratio=1)[0] == "a"


def test_no_host_holds_it_and_each_says_why():
    hosts = [HostFigures("a", True, 4, 8 * GIB, 4, 0), HostFigures("b", False),
             HostFigures("c", True, 16, 8 * GIB, 0, 7 * GIB)]
    chosen, verdicts = choose_host(hosts, 2, 2 * GIB, policy="spread", cpu_ratio=1,
                                   ram_ratio=1)
    assert chosen is None
    assert [(v.host, v.reason) for v in verdicts] == [
        ("a", "2 vcpus asked, 0 free of 4"), ("b", "unreachable"),
        ("c", "2.0 GiB asked, 1.0 GiB free of 8.0 GiB")]
    # Over-committed as Nova does: the ratios make room on both (a: 8 GiB free, c: 5).
    assert choose_host(hosts, 2, 2 * GIB, policy="spread", cpu_ratio=2,
                       ram_ratio=1.5)[0] == "a"
    assert choose_host(hosts, 2, 2 * GIB, policy="pack", cpu_ratio=2,
                       ram_ratio=1.5)[0] == "c"


def node_xml(tmp: Path, name: str, memory_gib: int, cpus: int) -> Path:
    """host_basic.xml with another memory size and cpu count."""
    text = (DATA / "host_basic.xml").read_text()
    text = text.replace("<memory>67108864</memory>", f"<memory>{memory_gib * GIB}</memory>")
    text = text.replace("<active>16</active>", f"<active>{cpus}</active>")
    path = tmp / f"{name}.xml"
    path.write_text(text)
    return path


async def test_requests_spread_over_hosts_and_never_beyond_one(make_harness, tmp_path):
    hosts = [{"name": f"h{i}", "uri": f"test://{node_xml(tmp_path, f'h{i}', mem, 4)}"}
             for i, mem in enumerate((2, 4))]
    h = await make_harness(hosts=hosts, sizes={"one": {"cpus": 1, "memory": GIB,
                                                       "storage_size_in_gb": 1}},
                           hardware={"cpu_allocation_ratio": 1, "ram_allocation_ratio": 1})
    from daemon.service import ProvisioningRequest
    from tests.conftest import ALICE

    dry = await h.service.explain(ALICE, ProvisioningRequest("ipxe", "one", "rp"))
    assert dry.host == "h1" and [(v.host, v.fits) for v in dry.hosts] == [
        ("h1", True), ("h0", True)]
    placed = [await h.run(size="one") for _ in range(6)]
    assert [r.state for r in placed] == [State.DONE] * 6
    assert sorted(r.host for r in placed) == ["h0", "h0", "h1", "h1", "h1", "h1"]
    assert placed[0].host == "h1"  # 4 GiB free against 2: spread
    first = next(e.detail for e in h.store.get_log(placed[0].id)
                 if e.kind == "transition" and e.from_state == "storage-searching")
    assert first.startswith("creating a 1 GiB volume in pool pool-dir on host h1, chosen "
                            "(spread): 4.0 GiB and 4 vcpus free; other hosts: h0: ")
    dry = await h.service.explain(ALICE, ProvisioningRequest("ipxe", "one", "rp"))
    assert dry.action == "none" and dry.host is None
    assert dry.reason.startswith("no host can hold it: h0: 1.0 GiB asked")
    full = await h.run(size="one")  # 6 GiB placed on 6 GiB of hosts
    assert full.state == State.FAILED
    assert "no host of hw can hold 1 vcpus and 1048576 KiB" in full.reason
    assert "h0: 1.0 GiB asked, 0.0 GiB free of 2.0 GiB" in full.reason
