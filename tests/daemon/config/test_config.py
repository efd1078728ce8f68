"""Configuration loading: the embedded default, and every error naming file, key and expectation.

Each error test writes a valid configuration with ``write_config`` and corrupts one file.
Messages name files by their absolute path; ``problems_of`` checks that, then leaves out
the test's temporary directory, so files read as ``cfg/<file>``.
"""

from __future__ import annotations

import getpass
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from daemon.config import DEFAULT_CONFIG, Size, load_config
from daemon.errors import ConfigError
from harness.daemon import REPO, write_config

PROVISIOND = Path(sys.executable).parent / "provisiond"


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A valid configuration in ``tmp_path/cfg``, with ``tmp_path`` as working directory."""
    monkeypatch.chdir(tmp_path)
    return write_config(tmp_path / "cfg")


def problems_of(main: Path) -> list[str]:
    """The problems ``load_config`` reports, as the user sees them, each file (absolute,
    checked) shortened to the part below the test's temporary directory."""
    with pytest.raises(ConfigError) as err:
        load_config(main)
    assert err.value.exit_code == 2
    assert all(Path(p.file).is_absolute() for p in err.value.problems), err.value.problems
    return [str(p).removeprefix(f"{main.parent.parent.resolve()}/")
            for p in err.value.problems]


def edit_yaml(path: Path, change: Callable[[Any], None]) -> None:
    """Load a YAML file, let ``change`` mutate it, write it back."""
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def hw_pool(data: dict[str, Any]) -> dict[str, Any]:
    return data["hardware_pools"]["hw"]


# --------------------------------------------------------------------------- valid configs


def test_the_embedded_default_config_loads() -> None:
    config = load_config()

    assert config.source == DEFAULT_CONFIG == REPO / "config" / "provisiond.yml"
    assert set(config.sizes) == {"tiny", "small", "medium", "large"}
    assert set(config.templates) == {"ipxe", "ipxe-file", "debian-cloud", "fedora-ks"}
    assert config.templates["debian-cloud"].kind == "appliance"
    host = config.hardware_pools["default"].hosts[0]
    # ${config_dir} became the config directory, absolute.
    assert host.uri == f"test://{REPO / 'config' / 'testhost.xml'}"
    assert [p.name for p in config.hardware_pools["default"].storage_pools] == [
        "pool-iscsi", "pool-dir", "pool-nfs", "pool-lvm"]
    # ${daemon_user} became whoever runs the daemon.
    grant = config.resource_pools["default"].grants["CLOUD_CREATE"]
    assert grant.users == {getpass.getuser()}
    assert config.daemon.define_event_timeout == 30


def test_daemon_user_placeholder_follows_the_daemon_user() -> None:
    config = load_config(daemon_user="svc-provision")
    assert config.resource_pools["default"].grants["CLOUD_ADMIN"].users == {"svc-provision"}


def test_small_size_is_exactly_the_seeds() -> None:
    config = load_config()
    assert config.sizes["small"] == Size("small", cpus=2, memory=262144, storage_size_in_gb=15)
    assert config.sizes["small"].storage_bytes == 15 * 1024**3
    # The embedded VmSize.yml holds no other keys for it.
    raw = yaml.safe_load((REPO / "config" / "VmSize.yml").read_text())
    assert raw["small"] == {"cpus": 2, "memory": 262144, "storage_size_in_gb": 15}


def test_the_test_configuration_loads(cfg: Path) -> None:
    config = load_config(cfg)
    assert config.sizes["tiny"] == Size("tiny", 1, 131072, 10)
    assert config.templates["ipxe"].volume is not None
    assert config.templates["ipxe"].volume.name == "ipxe.iso"
    assert config.hardware_pool_of("rp").name == "hw"
    assert config.daemon.define_event_timeout == 5.0
    assert config.files["sizes"] == cfg.parent / "VmSize.yml"


def test_known_placeholders_are_expanded(cfg: Path) -> None:
    (cfg.parent / "templates.yml").write_text(
        "local:\n  kind: iso\n  path: ${config_dir}/images/install.iso\n")
    edit_yaml(cfg.parent / "pools.yml", lambda d: d["resource_pools"]["rp"]["grants"].update(
        CLOUD_ADMIN={"users": ["${daemon_user}"]}))

    config = load_config(cfg, daemon_user="carol")
    assert config.templates["local"].path == f"{cfg.parent.resolve()}/images/install.iso"
    assert config.resource_pools["rp"].grants["CLOUD_ADMIN"].users == {"carol"}


# --------------------------------------------------------------------------- error reports


def test_a_bad_value_names_file_key_and_what_was_expected(cfg: Path) -> None:
    (cfg.parent / "VmSize.yml").write_text(
        "small: {cpus: 2, memory: lots, storage_size_in_gb: 15}\n")

    assert problems_of(cfg) == [
        "cfg/VmSize.yml: small.memory: expected a positive integer (KiB), got 'lots'"]


@pytest.mark.parametrize("cwd", ["/", "cfg", "elsewhere"])
def test_files_show_their_full_path_wherever_the_working_directory_is(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cwd: str) -> None:
    main = write_config(tmp_path / "cfg")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / cwd)  # "/": as under systemd
    (main.parent / "VmSize.yml").write_text(
        "small: {cpus: 2, memory: lots, storage_size_in_gb: 15}\n")
    with pytest.raises(ConfigError) as err:
        load_config(main if cwd == "/" else Path("..", "cfg", "provisiond.yml")
                    if cwd == "elsewhere" else Path("provisiond.yml"))

    assert [str(p) for p in err.value.problems] == [
        f"{main.parent.resolve()}/VmSize.yml: small.memory: "
        "expected a positive integer (KiB), got 'lots'"]


@pytest.mark.parametrize("text, expected", [
    ("small: {cpus: 0, memory: 1024, storage_size_in_gb: 15}\n",
     "small.cpus: expected a positive integer, got 0"),
    ("small: {cpus: 2, memory: 1024, storage_size_in_gb: -15}\n",
     "small.storage_size_in_gb: expected a positive integer (GiB), got -15"),
    ("small: {cpus: true, memory: 1024, storage_size_in_gb: 15}\n",
     "small.cpus: expected a positive integer, got True"),
    ("small: {cpus: 2, memory: 1.5, storage_size_in_gb: 15}\n",
     "small.memory: expected a positive integer (KiB), got 1.5"),
    ("small: 3\n", "small: expected a mapping, got 3"),
    ("'bad name!': {cpus: 2, memory: 1024, storage_size_in_gb: 15}\n",
     "bad name!: expected a name of 1-63 letters, digits"),
])
def test_bad_size_values(cfg: Path, text: str, expected: str) -> None:
    (cfg.parent / "VmSize.yml").write_text(text)
    found = problems_of(cfg)
    assert len(found) == 1 and found[0].startswith(f"cfg/VmSize.yml: {expected}"), found


@pytest.mark.parametrize("file, change, expected", [
    ("VmSize.yml", lambda d: d["small"].update(colour="red"),
     "cfg/VmSize.yml: small.colour: unknown key "
     "(expected one of: cpus, memory, network, storage_size_in_gb)"),
    ("provisiond.yml", lambda d: d.update(extra=1),
     "cfg/provisiond.yml: extra: unknown key (expected one of: daemon, include)"),
    ("provisiond.yml", lambda d: d["daemon"].update(sokcet="/tmp/x"),
     "cfg/provisiond.yml: daemon.sokcet: unknown key (expected one of: body_timeout, "
     "database, define_event_timeout, host_wait_timeout, libvirt_call_timeout, "
     "max_connections_per_user, max_in_progress_per_user, retention_days, "
     "session_idle_timeout, socket, socket_group, stop_timeout)"),
    ("pools.yml", lambda d: hw_pool(d).update(hostz=[]),
     "cfg/pools.yml: hardware_pools.hw.hostz: unknown key (expected one of: "
     "cpu_allocation_ratio, host_policy, hosts, ram_allocation_ratio, reuse_tolerance_gb, "
     "storage_pools)"),
    ("pools.yml", lambda d: d["resource_pools"]["rp"]["grants"].update(CLOUD_DESTROY={}),
     "cfg/pools.yml: resource_pools.rp.grants.CLOUD_DESTROY: unknown key "
     "(expected one of: CLOUD_ADMIN, CLOUD_CREATE)"),
    ("templates.yml", lambda d: d["ipxe"].update(checksum="abc"),
     "cfg/templates.yml: ipxe.checksum: unknown key "
     "(expected one of: description, kind, path, volume)"),
    ("pools.yml", lambda d: hw_pool(d)["storage_pools"][1].update(on_release="shred"),
     "cfg/pools.yml: hardware_pools.hw.storage_pools[1].on_release: expected one of wipe, "
     "keep, delete, got 'shred'"),
], ids=["size", "main", "daemon", "hardware-pool", "privilege", "template", "on-release"])
def test_unknown_keys_are_errors_naming_the_key(cfg: Path, file: str,
                                                 change: Callable[[Any], None],
                                                 expected: str) -> None:
    edit_yaml(cfg.parent / file, change)
    assert problems_of(cfg) == [expected]


@pytest.mark.parametrize("file, change, expected", [
    ("VmSize.yml", lambda d: d["small"].pop("storage_size_in_gb"),
     "cfg/VmSize.yml: small.storage_size_in_gb: required key is missing"),
    ("templates.yml", lambda d: d["ipxe"].pop("kind"),
     "cfg/templates.yml: ipxe.kind: required key is missing"),
    ("pools.yml", lambda d: hw_pool(d)["hosts"][0].pop("uri"),
     "cfg/pools.yml: hardware_pools.hw.hosts[0].uri: required key is missing"),
    ("pools.yml", lambda d: d["resource_pools"]["rp"].pop("hardware_pool"),
     "cfg/pools.yml: resource_pools.rp.hardware_pool: required key is missing"),
    ("provisiond.yml", lambda d: d.pop("include"),
     "cfg/provisiond.yml: include: required key is missing"),
    ("provisiond.yml", lambda d: d["include"].pop("templates"),
     "cfg/provisiond.yml: include.templates: required key is missing"),
], ids=["size", "template", "host", "resource-pool", "main", "include"])
def test_missing_required_keys(cfg: Path, file: str, change: Callable[[Any], None],
                               expected: str) -> None:
    edit_yaml(cfg.parent / file, change)
    assert problems_of(cfg) == [expected]


def test_each_template_kind_takes_only_its_own_keys(cfg: Path) -> None:
    (cfg.parent / "templates.yml").write_text("ks:\n  kind: kickstart\n  path: /srv/ks.cfg\n")
    problems = problems_of(cfg)
    assert "cfg/templates.yml: ks.path: unknown key (expected one of: cmdline, description, " \
           "initrd, kernel, kind)" in problems


def test_an_unknown_template_kind_lists_the_kinds(cfg: Path) -> None:
    (cfg.parent / "templates.yml").write_text("c:\n  kind: docker\n  path: /srv/c\n")
    assert problems_of(cfg) == [
        "cfg/templates.yml: c.kind: expected one of: iso, appliance, kickstart, got 'docker'"]


def test_an_iso_template_needs_exactly_one_source(cfg: Path) -> None:
    (cfg.parent / "templates.yml").write_text(
        "both:\n  kind: iso\n  path: /a.iso\n  volume: {pool: p, name: a.iso}\n"
        "relative:\n  kind: iso\n  path: images/a.iso\n")
    found = problems_of(cfg)
    assert found[0].startswith("cfg/templates.yml: both: an iso template needs exactly one of")
    assert found[1] == "cfg/templates.yml: relative.path: expected an absolute path, " \
                       "got 'images/a.iso'"
    assert len(found) == 2


def test_a_resource_pool_on_an_unknown_hardware_pool(cfg: Path) -> None:
    edit_yaml(cfg.parent / "pools.yml",
              lambda d: d["resource_pools"]["rp"].update(hardware_pool="hw-typo"))
    assert problems_of(cfg) == [
        "cfg/pools.yml: resource_pools.rp.hardware_pool: "
        "unknown hardware pool 'hw-typo' (known: hw)"]


def test_a_hardware_pool_reference_that_is_not_a_name(cfg: Path) -> None:
    edit_yaml(cfg.parent / "pools.yml",
              lambda d: d["resource_pools"]["rp"].update(hardware_pool=["hw"]))
    found = problems_of(cfg)  # a problem, not a crash
    assert len(found) == 1
    assert found[0].startswith("cfg/pools.yml: resource_pools.rp.hardware_pool: expected a name")


@pytest.mark.parametrize("uri, expected", [
    ("localhost", "expected a libvirt URI such as qemu:///system, got 'localhost'"),
    ("qemu:/system", "expected a libvirt URI such as qemu:///system, got 'qemu:/system'"),
    ("", "expected a non-empty string, got ''"),
    (42, "expected a non-empty string, got 42"),
])
def test_bad_host_uris(cfg: Path, uri: Any, expected: str) -> None:
    edit_yaml(cfg.parent / "pools.yml", lambda d: hw_pool(d)["hosts"][0].update(uri=uri))
    # Only the URI is wrong: no knock-on complaints about the pool having no host, or
    # the resource pool's hardware pool being unknown.
    assert problems_of(cfg) == [f"cfg/pools.yml: hardware_pools.hw.hosts[0].uri: {expected}"]


def test_an_empty_host_list_is_reported(cfg: Path) -> None:
    edit_yaml(cfg.parent / "pools.yml", lambda d: hw_pool(d).update(hosts=[]))
    assert "cfg/pools.yml: hardware_pools.hw.hosts: expected at least one host" in \
        problems_of(cfg)


def test_invalid_yaml_reports_line_and_column(cfg: Path) -> None:
    (cfg.parent / "VmSize.yml").write_text(
        "small:\n  cpus: 2\n  memory: 262144\n   storage_size_in_gb: 15\n")
    assert problems_of(cfg) == [
        "cfg/VmSize.yml: line 4, column 22: invalid YAML: mapping values are not allowed here"]


def test_a_missing_included_file(cfg: Path) -> None:
    (cfg.parent / "templates.yml").unlink()
    assert problems_of(cfg) == ["cfg/templates.yml: cannot read: No such file or directory"]


def test_an_empty_file(cfg: Path) -> None:
    (cfg.parent / "VmSize.yml").write_text("# nothing yet\n")
    assert problems_of(cfg) == ["cfg/VmSize.yml: expected a mapping, got nothing"]


def test_an_unknown_placeholder(cfg: Path) -> None:
    edit_yaml(cfg.parent / "templates.yml",
              lambda d: d["ipxe-file"].update(path="${foo}/ipxe.iso"))
    assert problems_of(cfg) == [
        "cfg/templates.yml: ipxe-file.path: unknown placeholder ${foo} "
        "(known: ${config_dir}, ${daemon_user})"]


def test_duplicate_storage_pools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    main = write_config(tmp_path / "cfg", storage_pools=["pool-dir", "pool-nfs", "pool-dir"])
    assert problems_of(main) == [
        "cfg/pools.yml: hardware_pools.hw.storage_pools: storage pool 'pool-dir' is listed twice"]


def test_duplicate_hosts(cfg: Path) -> None:
    edit_yaml(cfg.parent / "pools.yml",
              lambda d: hw_pool(d)["hosts"].append(dict(hw_pool(d)["hosts"][0])))
    assert problems_of(cfg) == [
        "cfg/pools.yml: hardware_pools.hw.hosts: host 'testhost' is listed twice"]


def test_every_problem_in_a_file_is_reported_at_once(cfg: Path) -> None:
    (cfg.parent / "VmSize.yml").write_text(
        "small: {cpus: 0, memory: lots, storage_size_in_gb: 15}\n"
        "tiny: {cpus: 1, memory: 1024}\n")
    assert problems_of(cfg) == [
        "cfg/VmSize.yml: small.cpus: expected a positive integer, got 0",
        "cfg/VmSize.yml: small.memory: expected a positive integer (KiB), got 'lots'",
        "cfg/VmSize.yml: tiny.storage_size_in_gb: required key is missing",
    ]


def test_every_problem_in_every_file_is_reported_at_once(cfg: Path) -> None:
    edit_yaml(cfg, lambda d: d["daemon"].update(define_event_timeout="soon"))
    (cfg.parent / "VmSize.yml").write_text(
        "small: {cpus: 2, memory: lots, storage_size_in_gb: 15}\n")
    (cfg.parent / "templates.yml").write_text("ks: {kind: kickstart, path: /srv/ks.cfg}\n")
    edit_yaml(cfg.parent / "pools.yml",
              lambda d: hw_pool(d)["storage_pools"].append({"name": "pool-dir"}))

    assert sorted(problems_of(cfg)) == sorted([
        "cfg/provisiond.yml: daemon.define_event_timeout: expected a positive number, "
        "got 'soon'",
        "cfg/VmSize.yml: small.memory: expected a positive integer (KiB), got 'lots'",
        "cfg/templates.yml: ks.path: unknown key (expected one of: cmdline, description, "
        "initrd, kernel, kind)",
        "cfg/pools.yml: hardware_pools.hw.storage_pools: storage pool 'pool-dir' is listed "
        "twice",
    ])


def test_every_bad_quota_limit_is_reported(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    main = write_config(tmp_path / "cfg", quota={"vms": 0, "cpus": -4, "storage_gb": 100})
    assert problems_of(main) == [
        "cfg/pools.yml: resource_pools.rp.quota.vms: expected a positive integer (VMs), got 0",
        "cfg/pools.yml: resource_pools.rp.quota.cpus: expected a positive integer (cpus), "
        "got -4",
    ]


def test_every_bad_grant_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    main = write_config(tmp_path / "cfg", grants={"CLOUD_CREATE": {"users": "alice"},
                                                  "CLOUD_ADMIN": ["carol"]})
    assert problems_of(main) == [
        "cfg/pools.yml: resource_pools.rp.grants.CLOUD_CREATE.users: "
        "expected a list of strings, got 'alice'",
        "cfg/pools.yml: resource_pools.rp.grants.CLOUD_ADMIN: expected a mapping, got a list",
    ]


def test_config_error_message_lists_every_problem(cfg: Path) -> None:
    (cfg.parent / "VmSize.yml").write_text(
        "small: {cpus: 0, memory: lots, storage_size_in_gb: 15}\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    assert str(err.value).splitlines() == [str(p) for p in err.value.problems]
    assert len(err.value.problems) == 2


# --------------------------------------------------------------------------- the CLI


def run_check(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROVISIOND), "--check-config", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_cli_accepts_a_valid_config(tmp_path: Path) -> None:
    me = getpass.getuser()
    cfg = write_config(tmp_path / "cfg", grants={"CLOUD_CREATE": {"users": [me],
                                                                 "groups": ["nogroup"]}})
    result = run_check("--config", str(cfg), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{cfg.resolve()}: ok" in result.stdout
    assert "2 sizes, 2 templates, 1 hardware pools, 1 resource pools)" in result.stdout
    assert result.stderr == ""


def test_cli_warns_of_grants_to_users_and_groups_the_host_does_not_know(
        tmp_path: Path) -> None:
    write_config(tmp_path / "cfg", grants={
        "CLOUD_CREATE": {"users": ["root", "no-such-user-x"], "groups": ["no-such-group-y"]},
        "CLOUD_ADMIN": {"groups": ["nogroup"]}})
    result = run_check("--config", "cfg/provisiond.yml", cwd=tmp_path)

    assert result.returncode == 0, result.stderr  # valid; it just grants nothing now
    assert "1 resource pools; 2 warnings)" in result.stdout
    pools = tmp_path.resolve() / "cfg" / "pools.yml"
    assert result.stderr.splitlines() == [
        f"warning: {pools}: resource_pools.rp.grants.CLOUD_CREATE.users: user "
        "'no-such-user-x' does not exist on this host; the grant gives nothing until it does",
        f"warning: {pools}: resource_pools.rp.grants.CLOUD_CREATE.groups: group "
        "'no-such-group-y' does not exist on this host; the grant gives nothing until it does",
    ]


def test_cli_checks_the_embedded_default_without_config(tmp_path: Path) -> None:
    result = run_check(cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{DEFAULT_CONFIG}: ok" in result.stdout


def test_cli_reports_every_problem_on_stderr_and_exits_2(cfg: Path) -> None:
    (cfg.parent / "VmSize.yml").write_text(
        "small: {cpus: 0, memory: lots, storage_size_in_gb: 15}\n")
    result = run_check("--config", "cfg/provisiond.yml", cwd=cfg.parent.parent)

    assert result.returncode == 2
    assert result.stdout == ""
    sizes = cfg.parent.resolve() / "VmSize.yml"
    assert result.stderr.splitlines() == [
        f"{sizes}: small.cpus: expected a positive integer, got 0",
        f"{sizes}: small.memory: expected a positive integer (KiB), got 'lots'",
        "provisiond: configuration invalid (2 problems)",
    ]


def test_cli_reports_a_missing_config_file(tmp_path: Path) -> None:
    result = run_check("--config", "nope.yml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[0] == \
        f"{tmp_path.resolve()}/nope.yml: cannot read: No such file or directory"


def test_a_key_given_twice_is_an_error_not_a_silent_override(cfg: Path) -> None:
    sizes = cfg.parent / "VmSize.yml"
    sizes.write_text(sizes.read_text() + "small:\n  cpus: 64\n  memory: 1\n"
                     "  storage_size_in_gb: 1\n")
    [problem] = problems_of(cfg)
    assert "VmSize.yml" in problem and "duplicate key 'small'" in problem


def test_the_real_host_example_is_valid() -> None:
    config = load_config(REPO / "config" / "qemu-system" / "provisiond.yml")
    host = config.hardware_pools["local"].hosts[0]
    assert (host.uri, host.domain_type) == ("qemu:///system", "auto")
    assert config.resource_pools["team-a"].grants["CLOUD_CREATE"].groups == {"team-a"}


def test_a_template_volume_in_a_pool_the_hardware_pool_does_not_list_is_refused(
        cfg: Path) -> None:
    edit_yaml(cfg.parent / "pools.yml", lambda d: hw_pool(d).update(storage_pools=[
        p for p in hw_pool(d)["storage_pools"] if p.get("name", p) != "pool-dir"]))
    assert problems_of(cfg) == [
        "cfg/templates.yml: ipxe.volume.pool: storage pool pool-dir is not listed in hardware "
        "pool hw's storage_pools; list it there (as {name: pool-dir, templates_only: true} "
        "if no VM disk may go to it)"]
    edit_yaml(cfg.parent / "pools.yml", lambda d: hw_pool(d)["storage_pools"].append(
        {"name": "pool-dir", "templates_only": True}))
    assert load_config(cfg).hardware_pools["hw"].storage_pools[-1].templates_only
    edit_yaml(cfg.parent / "pools.yml",
              lambda d: hw_pool(d)["storage_pools"][-1].update(templates_only="yes"))
    assert problems_of(cfg) == [
        "cfg/pools.yml: hardware_pools.hw.storage_pools[3].templates_only: expected true or "
        "false, got 'yes'"]


def test_a_pool_may_be_declared_shared_by_the_hosts(cfg: Path) -> None:
    refs = load_config(cfg).hardware_pools["hw"].storage_pools
    assert all(ref.shared is None for ref in refs)  # by default: decided by type and source
    edit_yaml(cfg.parent / "pools.yml",
              lambda d: hw_pool(d)["storage_pools"][1].update(shared=True))
    assert load_config(cfg).hardware_pools["hw"].storage_pools[1].shared is True
    edit_yaml(cfg.parent / "pools.yml",
              lambda d: hw_pool(d)["storage_pools"][1].update(shared="nfs"))
    assert problems_of(cfg) == [
        "cfg/pools.yml: hardware_pools.hw.storage_pools[1].shared: expected true or false, "
        "got 'nfs'"]
