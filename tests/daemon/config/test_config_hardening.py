"""Issue 12: every configuration ``--check-config`` accepts must run.

Most tests are the regression of one hole: a value that loaded, then made every create a
500 (NaN, infinity, integers past SQLite or libvirt, control characters), or made the
daemon exit at start naming no key (an unknown socket group, a database whose directory
can't be made, a socket path too long for AF_UNIX), or was silently ignored (one host name
with two URIs); and the warnings for what the configuration names but its libvirt host
lacks. A few guard what already held (booleans are not numbers, each bound is accepted).
"""

from __future__ import annotations

import getpass
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import libvirt
import pytest
import yaml

from daemon.config import load_config
from daemon.config.host_checks import host_problems, libvirt_warnings
from daemon.errors import ConfigError
from harness.daemon import DATA, SIZES, write_config

PROVISIOND = Path(sys.executable).parent / "provisiond"
NAN, INF = float("nan"), float("inf")


def problems(main: Path) -> list[str]:
    """What loading ``main`` (then checking it against this host) refuses."""
    try:
        config = load_config(main)
    except ConfigError as exc:
        return [str(p) for p in exc.problems]
    return [str(p) for p in host_problems(config)]


def sizes(**small: Any) -> dict[str, Any]:
    return {**SIZES, "small": {**SIZES["small"], **small}}


def edit_yaml(path: Path, change: Callable[[Any], None]) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("options, file, key, message", [
    ({"storage_pools": [{"name": "pool-lvm", "overcommit": NAN}]}, "pools.yml",
     "hardware_pools.hw.storage_pools[0].overcommit", "expected a finite positive number, "
     "got nan"),
    ({"storage_pools": [{"name": "pool-lvm", "overcommit": INF}]}, "pools.yml",
     "hardware_pools.hw.storage_pools[0].overcommit", "expected a finite positive number, "
     "got inf"),
    ({"daemon": {"body_timeout": NAN}}, "provisiond.yml", "daemon.body_timeout",
     "expected a finite positive number, got nan"),
    ({"daemon": {"host_wait_timeout": INF}}, "provisiond.yml", "daemon.host_wait_timeout",
     "expected a finite positive number, got inf"),
    ({"daemon": {"retention_days": -INF}}, "provisiond.yml", "daemon.retention_days",
     "expected a positive number, got -inf"),
], ids=["overcommit-nan", "overcommit-inf", "body-timeout-nan", "host-wait-inf",
        "retention-minus-inf"])
def test_nan_and_infinity_are_refused(tmp_path: Path, options: dict[str, Any], file: str,
                                      key: str, message: str) -> None:
    main = write_config(tmp_path / "cfg", **options)
    assert problems(main) == [f"{main.parent}/{file}: {key}: {message}"]


@pytest.mark.parametrize("options, file, key, message", [
    ({"sizes": sizes(cpus=10**20)}, "VmSize.yml", "small.cpus",
     "expected a positive integer of at most 4096 (libvirt's and QEMU's vCPU limits are "
     "below it), got 100000000000000000000"),
    ({"sizes": sizes(memory=2**40 + 1)}, "VmSize.yml", "small.memory",
     "expected a positive integer (KiB) of at most 1099511627776 (1 PiB: libvirt takes it in "
     "bytes, quotas sum it in SQLite), got 1099511627777"),
    ({"sizes": sizes(storage_size_in_gb=2**20 + 1)}, "VmSize.yml",
     "small.storage_size_in_gb", "expected a positive integer (GiB) of at most 1048576 "
     "(1 PiB: libvirt takes it in bytes, quotas sum it in SQLite), got 1048577"),
    ({"quota": {"cpus": 2**63}}, "pools.yml", "resource_pools.rp.quota.cpus",
     "expected a positive integer (cpus) of at most 9223372036854775807 (SQLite's largest "
     "integer), got 9223372036854775808"),
    ({"tolerance_gb": 2**20 + 1}, "pools.yml", "hardware_pools.hw.reuse_tolerance_gb",
     "expected an integer >= 0 of at most 1048576 (1 PiB: libvirt takes it in bytes, quotas "
     "sum it in SQLite), got 1048577"),
    ({"daemon": {"max_in_progress_per_user": 2**64}}, "provisiond.yml",
     "daemon.max_in_progress_per_user", "expected a positive integer of at most "
     "9223372036854775807 (SQLite's largest integer), got 18446744073709551616"),
    ({"daemon": {"stop_timeout": 10**9 + 1}}, "provisiond.yml", "daemon.stop_timeout",
     "expected a positive number of at most 1000000000 (about 31 years), got 1000000001"),
    ({"storage_pools": [{"name": "pool-lvm", "overcommit": 10**6 + 0.5}]}, "pools.yml",
     "hardware_pools.hw.storage_pools[0].overcommit", "expected a positive number of at "
     "most 1000000 (a factor of the pool's capacity), got 1000000.5"),
], ids=["cpus", "memory", "storage", "quota", "tolerance", "limit", "timeout", "overcommit"])
def test_integers_past_what_sqlite_or_libvirt_take_are_refused_naming_the_bound(
        tmp_path: Path, options: dict[str, Any], file: str, key: str, message: str) -> None:
    main = write_config(tmp_path / "cfg", **options)
    assert problems(main) == [f"{main.parent}/{file}: {key}: {message}"]


def test_a_number_too_large_for_a_float_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    main = write_config(tmp_path / "cfg", daemon={"define_event_timeout": 10**400})
    [problem] = problems(main)  # was OverflowError: int too large to convert to float
    assert problem.startswith(f"{main}: daemon.define_event_timeout: expected a positive "
                              "number of at most 1000000000 (about 31 years), got 1000")


def test_each_bound_itself_is_accepted(tmp_path: Path) -> None:
    main = write_config(tmp_path / "cfg", sizes=sizes(cpus=4096, memory=2**40,
                                                      storage_size_in_gb=2**20),
                        quota={"vms": 2**63 - 1}, tolerance_gb=2**20,
                        daemon={"retention_days": 10**6, "body_timeout": 10**9})
    config = load_config(main)
    assert (config.sizes["small"].cpus, config.sizes["small"].memory) == (4096, 2**40)
    assert config.resource_pools["rp"].quota.vms == 2**63 - 1


@pytest.mark.parametrize("key, value", [("cpus", True), ("memory", False),
                                        ("storage_size_in_gb", True)])
def test_yaml_booleans_are_not_numbers(tmp_path: Path, key: str, value: bool) -> None:
    main = write_config(tmp_path / "cfg", sizes=sizes(**{key: value}))
    [problem] = problems(main)
    assert problem.startswith(f"{main.parent}/VmSize.yml: small.{key}: expected a positive "
                              "integer") and problem.endswith(f"got {value}")


def test_overcommit_true_is_not_one(tmp_path: Path) -> None:
    main = write_config(tmp_path / "cfg", storage_pools=[{"name": "pool-lvm",
                                                          "overcommit": True}])
    assert problems(main) == [f"{main.parent}/pools.yml: hardware_pools.hw.storage_pools[0]."
                              "overcommit: expected a positive number, got True"]


@pytest.mark.parametrize("file, key, change", [
    ("provisiond.yml", "include.sizes", lambda d: d["include"].update(sizes="a\x00b")),
    ("provisiond.yml", "daemon.database", lambda d: d["daemon"].update(database="/a\x00b")),
    ("pools.yml", "resource_pools.rp.grants.CLOUD_CREATE.users[0]",
     lambda d: d["resource_pools"]["rp"]["grants"]["CLOUD_CREATE"].update(users=["a\x00b"])),
    ("templates.yml", "ipxe-file.path",
     lambda d: d["ipxe-file"].update(path="/usr/lib/a\x00b.iso")),
    ("templates.yml", "ipxe-file.path",
     lambda d: d["ipxe-file"].update(path="/usr/lib/\x1b[31mipxe.iso")),
], ids=["include", "database", "grant", "template-path-nul", "template-path-escape"])
def test_control_characters_in_strings_are_refused(tmp_path: Path, file: str, key: str,
                                                   change: Callable[[Any], None]) -> None:
    # Were accepted, then: ValueError (embedded null byte) from the loader, from getpwnam()
    # in --check-config, or as every create's internal error; an escape character made
    # every create fail on libvirt's "invalid character in attribute value".
    main = write_config(tmp_path / "cfg")
    edit_yaml(main.parent / file, change)
    [problem] = problems(main)
    assert problem.startswith(f"{main.parent}/{file}: {key}: expected text without control "
                              "characters, got "), problem


# --------------------------------------------------------------------------- daemon settings


def test_an_unknown_socket_group_is_refused_naming_the_key(tmp_path: Path) -> None:
    main = write_config(tmp_path / "cfg", daemon={"socket_group": "no-such-group-x"})
    assert problems(main) == [f"{main}: daemon.socket_group: group 'no-such-group-x' does "
                              "not exist on this host"]
    assert problems(write_config(tmp_path / "ok", daemon={"socket_group": "root"})) == []


def test_check_config_refuses_an_unknown_socket_group_and_the_daemon_names_it_at_start(
        tmp_path: Path) -> None:
    main = write_config(tmp_path / "cfg", daemon={"socket_group": "no-such-group-x"})
    expected = (f"{main}: daemon.socket_group: group 'no-such-group-x' does not exist on "
                "this host")
    check = subprocess.run([str(PROVISIOND), "--check-config", "--config", str(main)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 2, check.stderr
    assert check.stderr.splitlines()[0] == expected
    # It used to start, then exit 1 with "getgrnam(): name not found", naming no key.
    start = subprocess.run([str(PROVISIOND), "--config", str(main), "--log-format", "text"],
                           capture_output=True, text=True, timeout=60)
    assert start.returncode == 2, start.stderr
    assert expected in start.stderr.splitlines()
    assert not (main.parent / "provisiond.db").exists()  # refused before anything was made


@pytest.mark.parametrize("where", ["under-a-file", "in-proc"])
def test_a_database_whose_directory_cannot_be_made_is_refused(tmp_path: Path,
                                                              where: str) -> None:
    (tmp_path / "a-file").write_text("")
    database = (tmp_path / "a-file" / "state" / "provisiond.db" if where == "under-a-file"
                else Path("/proc/provisiond-test/provisiond.db"))
    main = write_config(tmp_path / "cfg", daemon={"database": str(database)})
    [problem] = problems(main)
    assert problem.startswith(f"{main}: daemon.database: ")
    assert (f"cannot use {database}: Not a directory" in problem if where == "under-a-file"
            else f"cannot make directory {database.parent} (as user " in problem), problem


def test_a_database_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    main = write_config(tmp_path / "cfg", daemon={"database": str(tmp_path)})
    assert problems(main) == [f"{main}: daemon.database: {tmp_path} exists and is not a file"]


def test_a_database_in_directories_still_to_make_is_accepted_and_nothing_is_made(
        tmp_path: Path) -> None:
    database = tmp_path / "state" / "deep" / "provisiond.db"
    main = write_config(tmp_path / "cfg", daemon={"database": str(database)})
    assert problems(main) == []
    assert not (tmp_path / "state").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg"]  # the trial left nothing


def socket_path_of(tmp_path: Path, length: int) -> Path:
    """A path in ``tmp_path`` of exactly ``length`` bytes."""
    prefix = f"{tmp_path}/"
    assert len(prefix) < length - 5
    return Path(prefix + "s" * (length - len(prefix)))


def test_a_socket_path_longer_than_af_unix_allows_is_refused(tmp_path: Path) -> None:
    longest = socket_path_of(tmp_path, 107)
    main = write_config(tmp_path / "cfg", daemon={"socket": f"{longest}x"})
    assert problems(main) == [f"{main}: daemon.socket: {longest}x is 108 bytes long; a Unix "
                              "socket's path may have at most 107"]

    assert problems(write_config(tmp_path / "ok", daemon={"socket": str(longest)})) == []
    with socket.socket(socket.AF_UNIX) as sock:  # and the longest accepted one binds
        sock.bind(str(longest))
    with socket.socket(socket.AF_UNIX) as sock, pytest.raises(OSError):
        sock.bind(f"{longest}x")


def test_a_too_long_default_socket_path_names_the_key_to_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runtime = socket_path_of(tmp_path, 100)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    main = write_config(tmp_path / "cfg")
    edit_yaml(main, lambda d: d["daemon"].update(socket=None))
    assert problems(main) == [
        f"{main}: daemon.socket: {runtime}/provisiond/provisiond.sock is 127 bytes long (the "
        "default: set daemon.socket); a Unix socket's path may have at most 107"]


# --------------------------------------------------------------------------- pools


def test_one_host_name_with_two_uris_is_refused(tmp_path: Path) -> None:
    main = write_config(tmp_path / "cfg")
    first, second = (f"test://{DATA / xml}" for xml in ("host_basic.xml", "host_scarce.xml"))
    pools = main.parent / "pools.yml"

    def second_pool(uri: str) -> Callable[[Any], None]:
        return lambda d: d["hardware_pools"].update(hw2={
            "hosts": [{"name": "testhost", "uri": uri}],
            "storage_pools": [{"name": "pool-dir"}]})

    edit_yaml(pools, second_pool(second))
    # Was accepted: the daemon opens one connection per host name, so hw2's requests
    # went to host_basic.xml and host_scarce.xml was never opened.
    assert problems(main) == [
        f"{pools}: hardware_pools.hw2.hosts: host 'testhost' is {second} (auto) here but "
        f"{first} (auto) in hardware_pools.hw: one name, one libvirt host"]
    edit_yaml(pools, second_pool(first))
    assert problems(main) == []  # one host shared by two hardware pools is fine


# --------------------------------------------------------------------------- host warnings


async def test_storage_pools_and_template_volumes_missing_on_the_host_are_warned_of(
        tmp_path: Path) -> None:
    main = write_config(tmp_path / "cfg", storage_pools=["pool-dir", "pool-x", "pool-nfs"],
                        templates={"ipxe": {"kind": "iso",
                                            "volume": {"pool": "pool-dir", "name": "ipxe.iso"}},
                                   "gone": {"kind": "iso",
                                            "volume": {"pool": "pool-dir", "name": "no.iso"}},
                                   "isos": {"kind": "iso",
                                            "volume": {"pool": "isos", "name": "d.iso"}}})
    config = load_config(main)

    def opener(uri: str) -> Any:  # pool-nfs is there but stopped
        conn = libvirt.open(uri)
        conn.storagePoolLookupByName("pool-nfs").destroy()
        return conn

    pools, templates = main.parent / "pools.yml", main.parent / "templates.yml"
    assert await libvirt_warnings(config, opener) == [
        f"{pools}: hardware_pools.hw.storage_pools[1] (pool-x): no such storage pool on host "
        "testhost; placement skips it",
        f"{pools}: hardware_pools.hw.storage_pools[2] (pool-nfs): not active on host testhost; "
        "placement skips it until it is",
        f"{pools}: hardware_pools.hw.storage_pools[3] (isos): no such storage pool on host "
        "testhost; placement skips it",
        f"{templates}: gone.volume: no volume no.iso in storage pool pool-dir on host testhost "
        "(hardware pool hw); a VM of this template fails there",
        f"{templates}: isos.volume: no storage pool isos on host testhost (hardware pool hw); "
        "a VM of this template fails there",
    ]


async def test_a_host_that_cannot_be_reached_is_warned_of_not_refused(tmp_path: Path) -> None:
    main = write_config(tmp_path / "cfg", hosts=[
        {"name": "late", "uri": f"test://{tmp_path}/not-yet.xml"}])
    [warning] = await libvirt_warnings(load_config(main))
    assert warning.startswith(f"{main.parent}/pools.yml: hardware_pools.hw.hosts[0] (late): "
                              f"cannot connect to test://{tmp_path}/not-yet.xml")
    assert warning.endswith("; its storage pools and templates were not checked")


def test_check_config_prints_the_host_warnings(tmp_path: Path) -> None:
    me = getpass.getuser()
    main = write_config(tmp_path / "cfg", storage_pools=["pool-dir", "pool-x"],
                        grants={"CLOUD_CREATE": {"users": [me]}})
    result = subprocess.run([str(PROVISIOND), "--check-config", "--config", str(main)],
                            cwd="/", capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"warning: {main.parent}/pools.yml: hardware_pools.hw.storage_pools[1] (pool-x): "
        "no such storage pool on host testhost; placement skips it"]
    assert result.stdout.endswith("1 resource pools; 1 warning)\n")


def test_check_config_names_files_by_absolute_path_when_run_from_root(tmp_path: Path) -> None:
    main = write_config(tmp_path / "cfg", sizes=sizes(cpus="lots"))
    result = subprocess.run([str(PROVISIOND), "--check-config", "--config", str(main)],
                            cwd="/", capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    # was "tmp/pytest-.../cfg/VmSize.yml: ..." (relative to /, as under systemd)
    assert result.stderr.splitlines()[0] == (
        f"{main.parent}/VmSize.yml: small.cpus: expected a positive integer, got 'lots'")
