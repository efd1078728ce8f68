"""Issue 12, point 7: every configuration the loader accepts runs.

Hypothesis writes configurations over the test driver: valid values at their extremes,
structural variations (a second hardware pool, storage pools and template volumes the host
lacks, socket and database paths that cannot work), and a few nasty values put anywhere
(NaN, infinity, huge integers, booleans, empty strings, unknown keys). Each one is either
refused (``load_config``, then ``host_problems`` as ``--check-config`` and the daemon's
start do) with every problem naming an absolute file and a key, or a Service started on it
takes a create that ends done or failed with a reason: never an internal error, never an
exception.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from daemon.auth import Identity
from daemon.config import Config, load_config
from daemon.config.host_checks import host_problems
from daemon.errors import ConfigError, ConfigProblem, ProvisiondError
from daemon.service import ProvisioningRequest, Service
from daemon.store import Store
from harness.daemon import DATA
from statemachines import State

NAN, INF = float("nan"), float("inf")
NASTY = [NAN, INF, -INF, 0, -1, True, False, 2**63, 10**20, 10**400, 1.5, 1e-300, "", "2",
         None, [], {}, "${nope}", "a\x00b", "a\x1bb"]
"""Values put where anything might go wrong."""
POOLS = ["pool-dir", "pool-lvm", "pool-nfs", "pool-iscsi", "pool-x"]
"""The storage pools of tests/data/host_*.xml, and one no host has."""
ALICE = Identity("alice", frozenset({"staff"}))
FILES = {"provisiond.yml", "VmSize.yml", "templates.yml", "pools.yml"}


def uri(xml: str) -> str:
    return f"test://{DATA / xml}"


@st.composite
def configurations(draw: st.DrawFn) -> dict[str, Any]:
    """The four files' contents, with ``@DIR@`` for the directory they are written to.

    The first value of each choice is the one that serves (Hypothesis starts, and shrinks,
    towards it)."""
    size = {"cpus": draw(st.sampled_from([2, 1, 4096])),
            "memory": draw(st.sampled_from([262144, 65536, 2**40])),
            "storage_size_in_gb": draw(st.sampled_from([15, 10, 1, 40, 2**20]))}
    if draw(st.booleans()):
        size["network"] = draw(st.sampled_from(["default", "nonet"]))
    template = draw(st.one_of(
        st.builds(lambda p, n: {"kind": "iso", "volume": {"pool": p, "name": n}},
                  st.sampled_from(["pool-dir", "pool-nfs", "isos"]),
                  st.sampled_from(["ipxe.iso", "no.iso"])),
        st.just({"kind": "iso", "path": "/usr/lib/ipxe/ipxe.iso"})))
    storage_pools = [
        {"name": name, **draw(st.fixed_dictionaries({}, optional={
            "overcommit": st.sampled_from([1e-9, 0.5, 1, 1.5, 10**6]),
            "on_release": st.sampled_from(["wipe", "keep", "delete"])}))}
        for name in draw(st.lists(st.sampled_from(POOLS), min_size=1, max_size=4, unique=True))]
    host = {"name": "testhost",
            "uri": uri(draw(st.sampled_from(["host_basic.xml", "host_tight.xml",
                                             "host_scarce.xml"]))),
            "domain_type": draw(st.sampled_from(["auto", "qemu", "kvm"]))}
    hardware = {"hw": {"hosts": [host], "storage_pools": storage_pools,
                       "reuse_tolerance_gb": draw(st.sampled_from([0, 1, 5, 2**20]))}}
    if draw(st.booleans()):  # a second hardware pool, maybe on the same host name
        hardware["hw2"] = {"hosts": [{"name": draw(st.sampled_from(["testhost", "other"])),
                                      "uri": uri(draw(st.sampled_from(["host_basic.xml",
                                                                       "host_tight.xml"])))}],
                           "storage_pools": [{"name": "pool-dir"}, {"name": "pool-lvm"}]}
    limits = st.sampled_from([2**63 - 1, 100, 2, 1])
    quota_keys = {"vms": limits, "cpus": limits, "memory": limits, "storage_gb": limits}
    quota = draw(st.fixed_dictionaries({}, optional={
        **quota_keys, "per_user": st.fixed_dictionaries({}, optional=quota_keys)}))
    grant = draw(st.sampled_from([{"users": ["alice"]}, {"groups": ["staff"]},
                                  {"users": ["bob"]}]))
    resource = {"hardware_pool": draw(st.sampled_from(sorted(hardware))),
                "grants": {"CLOUD_CREATE": grant}, "quota": quota}
    seconds = st.sampled_from([0.3, 1, 30, 10**9])
    daemon = {  # what cannot work comes last, and once in a few draws
        "socket": draw(st.sampled_from(["@DIR@/provisiond.sock"] * 4 + ["@DIR@/" + "s" * 120])),
        "database": draw(st.sampled_from(["@DIR@/state/provisiond.db", "provisiond.db"] * 2 + [
            "@DIR@/VmSize.yml/provisiond.db", "/proc/provisiond-test/provisiond.db"])),
        "socket_group": draw(st.sampled_from([None] * 3 + ["root", "no-such-group-x"])),
        **draw(st.fixed_dictionaries({}, optional={
            **{key: seconds for key in ("define_event_timeout", "body_timeout", "stop_timeout",
                                        "session_idle_timeout")},
            "retention_days": st.sampled_from([1e-6, 90, 10**6])})),
        "host_wait_timeout": draw(st.sampled_from([1, 5])),  # a create ends within the wait
        "libvirt_call_timeout": draw(st.sampled_from([1, 120, 10**9])),
        "max_in_progress_per_user": draw(st.sampled_from([1, 32, 2**63 - 1])),
    }
    files = {
        "VmSize.yml": {"small": size},
        "templates.yml": {"t": template},
        "pools.yml": {"hardware_pools": hardware, "resource_pools": {"rp": resource}},
        "provisiond.yml": {"daemon": daemon, "include": {
            "sizes": "VmSize.yml", "templates": "templates.yml", "pools": "pools.yml"}},
    }
    for _ in range(draw(st.integers(0, 2))):  # a nasty value at a random place
        put_nasty(files, draw)
    return files


def put_nasty(files: dict[str, Any], draw: st.DrawFn) -> None:
    """Replace a value somewhere in one file (or add an unknown key) with a nasty one."""
    node: Any = files[draw(st.sampled_from(sorted(files)))]
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return
        key = draw(st.sampled_from(keys))
        if not isinstance(node[key], (dict, list)) or not node[key] or draw(st.booleans()):
            break
        node = node[key]
    if isinstance(node, dict) and draw(st.integers(0, 4)) == 0:
        key = "colour"  # an unknown key
    node[key] = draw(st.sampled_from(NASTY))


def write(files: dict[str, Any], directory: Path) -> Path:
    for name, content in files.items():
        text = yaml.safe_dump(content, sort_keys=False).replace("@DIR@", str(directory))
        (directory / name).write_text(text)
    return directory / "provisiond.yml"


def refusal(main: Path) -> tuple[Config | None, list[ConfigProblem]]:
    """The configuration, or what ``--check-config`` refuses in it."""
    try:
        config = load_config(main)
    except ConfigError as exc:
        return None, exc.problems
    return config, host_problems(config)


async def serve_one_create(config: Config) -> None:
    """Start a Service on ``config`` and ask for one VM: done, or failed with a reason."""
    store = Store(config.daemon.database)
    store.migrate()
    service = Service(config, store)
    try:
        await service.start()
        try:
            record = service.submit(ALICE, ProvisioningRequest("t", "small", "rp"))
        except ProvisiondError as exc:  # refused with a reason (grant, quota, limit)
            assert exc.http_status != 500, exc
            return
        record = await service.wait_terminal(record.id, timeout=20)
        assert record.state in (State.DONE, State.FAILED), record
        if record.state == State.FAILED:
            assert record.reason and not record.reason.startswith("internal error"), record
    finally:
        await service.stop()
        store.close()


def example_with(changes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A valid configuration with ``changes`` ({file: {dotted.key: value}}) made to it."""
    files: dict[str, Any] = {
        "VmSize.yml": {"small": {"cpus": 2, "memory": 262144, "storage_size_in_gb": 15}},
        "templates.yml": {"t": {"kind": "iso", "path": "/usr/lib/ipxe/ipxe.iso"}},
        "pools.yml": {"hardware_pools": {"hw": {
            "hosts": [{"name": "testhost", "uri": uri("host_basic.xml")}],
            "storage_pools": [{"name": "pool-lvm"}]}},
            "resource_pools": {"rp": {"hardware_pool": "hw",
                                      "grants": {"CLOUD_CREATE": {"users": ["alice"]}}}}},
        "provisiond.yml": {"daemon": {"socket": "@DIR@/provisiond.sock",
                                      "database": "@DIR@/provisiond.db"},
                           "include": {"sizes": "VmSize.yml", "templates": "templates.yml",
                                       "pools": "pools.yml"}},
    }
    for file, values in changes.items():
        for dotted, value in values.items():
            node = files[file]
            *parents, last = dotted.split(".")
            for part in parents:
                node = node[int(part)] if isinstance(node, list) else node[part]
            node[last] = value
    return files


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(configurations())
# What passed before issue 12 and then failed every create: a NaN over-commit where a
# volume must be created (a 500), and cpus past SQLite's INTEGER (OverflowError).
@example(example_with({"pools.yml": {"hardware_pools.hw.storage_pools.0.overcommit": NAN}}))
@example(example_with({"VmSize.yml": {"small.cpus": 10**20}}))
@example(example_with({"pools.yml": {"hardware_pools.hw.hosts.0.uri": "test:///nowhere.xml"},
                       "provisiond.yml": {"daemon.host_wait_timeout": 1}}))
async def test_every_configuration_is_refused_with_file_and_key_or_serves_a_create(
        files: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="provisiond-prop-") as directory:
        main = write(files, Path(directory))
        config, problems = refusal(main)
        for problem in problems:
            assert Path(problem.file).is_absolute(), problem
            assert Path(problem.file).name in FILES and problem.key_path, problem
        if not problems:
            assert config is not None
            await serve_one_create(config)


@pytest.mark.parametrize("files", [
    example_with({"pools.yml": {"hardware_pools.hw.storage_pools.0.overcommit": NAN}}),
    example_with({"VmSize.yml": {"small.cpus": 10**20}}),
], ids=["nan-overcommit", "cpus-past-sqlite"])
def test_the_examples_that_used_to_fail_every_create_are_refused(
        files: dict[str, Any], tmp_path: Path) -> None:
    _config, problems = refusal(write(files, tmp_path))
    assert len(problems) == 1, problems
