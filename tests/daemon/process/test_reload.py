"""SIGHUP: the configuration is re-read and swapped in, or kept when the new one is bad."""

from __future__ import annotations

import shutil
import signal
import time

import yaml

from harness.daemon import DATA, Daemon, SIZES, wait_for_request_log

RELOADED = "configuration reloaded from"
KEPT = "configuration not reloaded; the old one stays in force"


def sizes_of(d: Daemon) -> set[str]:
    return {s["name"] for s in d.call("GET", "/v1/catalog").body["sizes"]}


def hup_and_wait(d: Daemon, text: str) -> str:
    """Send SIGHUP; wait for ``text`` to appear in the log after the signal."""
    assert d.proc is not None
    before = len(d.log())
    d.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tail = d.log()[before:]
        if text in tail:
            return tail
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged after SIGHUP:\n{d.log()[before:]}")


def test_sighup_applies_a_new_size(make_daemon) -> None:
    d: Daemon = make_daemon()
    assert sizes_of(d) == {"small", "tiny"}
    sizes = d.main.parent / "VmSize.yml"
    sizes.write_text(yaml.safe_dump({**SIZES, "huge": {
        "cpus": 8, "memory": 16777216, "storage_size_in_gb": 10}}))

    hup_and_wait(d, RELOADED)

    assert sizes_of(d) == {"small", "tiny", "huge"}
    rid = d.call("POST", "/v1/requests", {"template": "ipxe", "size": "huge",
                                           "resource_pool": "rp"}).body["id"]
    assert d.wait_terminal(rid)["state"] == "done"


def test_an_invalid_file_keeps_the_old_configuration_and_says_where(make_daemon) -> None:
    d: Daemon = make_daemon()
    sizes = d.main.parent / "VmSize.yml"
    sizes.write_text(yaml.safe_dump({**SIZES, "small": {
        "cpus": "lots", "memory": 262144, "storage_size_in_gb": 15}}))

    tail = hup_and_wait(d, KEPT)

    problem = [line for line in tail.splitlines() if "small.cpus" in line]
    assert len(problem) == 1, tail  # one line per problem, naming the file and the key
    assert "ERROR" in problem[0]
    assert "VmSize.yml: small.cpus: expected a positive integer, got 'lots'" in problem[0]
    assert d.call("GET", "/v1/health").status == 200
    assert sizes_of(d) == {"small", "tiny"}
    rid = d.call("POST", "/v1/requests", {"template": "ipxe", "size": "small",
                                           "resource_pool": "rp"}).body["id"]
    assert d.wait_terminal(rid)["state"] == "done"  # served on the old configuration

    sizes.write_text(yaml.safe_dump(SIZES))  # fixed: the next SIGHUP applies it
    hup_and_wait(d, RELOADED)


def test_a_new_host_is_refused_until_a_restart(make_daemon) -> None:
    d: Daemon = make_daemon()
    pools_file = d.main.parent / "pools.yml"
    pools = yaml.safe_load(pools_file.read_text())
    pools["hardware_pools"]["hw"]["hosts"].append(
        {"name": "otherhost", "uri": f"test://{DATA / 'host_basic.xml'}"})
    pools_file.write_text(yaml.safe_dump(pools))

    tail = hup_and_wait(d, KEPT)

    assert "pools.yml: hardware_pools.hw.hosts: host otherhost" in tail
    assert "adding a host needs a restart" in tail
    assert set(d.call("GET", "/v1/health").body["hosts"]) == {"testhost"}


def test_a_request_in_flight_across_a_reload_ends_done(make_daemon) -> None:
    # The host's node XML appears only later: the request waits for its host, in flight.
    d: Daemon = make_daemon(start=False, daemon={"host_wait_timeout": 60})
    late = d.directory / "late-host.xml"
    pools_file = d.main.parent / "pools.yml"
    pools_file.write_text(pools_file.read_text().replace(str(DATA / "host_basic.xml"),
                                                         str(late)))
    d.start()
    rid = d.call("POST", "/v1/requests", {"template": "ipxe", "size": "small",
                                           "resource_pool": "rp"}).body["id"]
    wait_for_request_log(d, rid, "host-unreachable")
    assert d.call("GET", f"/v1/requests/{rid}").body["state"] == "storage-searching"

    sizes = d.main.parent / "VmSize.yml"
    sizes.write_text(yaml.safe_dump({**SIZES, "huge": {
        "cpus": 8, "memory": 16777216, "storage_size_in_gb": 10}}))
    hup_and_wait(d, RELOADED)
    assert "huge" in sizes_of(d)

    shutil.copy(DATA / "host_basic.xml", late)  # the host comes up
    final = d.wait_terminal(rid, timeout=40)
    assert final["state"] == "done", final["reason"]
    assert (final["size"], final["cpus"]) == ("small", 2)
