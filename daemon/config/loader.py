"""Load and validate provisiond's YAML configuration into typed, frozen objects.

The main file (``config/provisiond.yml``) holds the daemon's settings and names the other
files, relative to itself: sizes (the seed's ``VmSize.yml`` format, verbatim), templates,
and pools (hardware pools and resource pools). Every problem is reported with its file and
key path, all problems at once, e.g.::

    /etc/provisiond/VmSize.yml: small.memory: expected a positive integer (KiB), got 'lots'

Strings may use two placeholders: ``${config_dir}`` (the main file's directory, absolute)
and ``${daemon_user}`` (the user running the daemon). Unknown keys are errors.
"""

from __future__ import annotations

import getpass
import math
import os
import re
from pathlib import Path
from typing import Any, Callable

import yaml

from daemon.cli import contract
from daemon.config.templates import parse_templates, unlisted_pool_problems
from daemon.config.model import (
    DOMAIN_TYPES,
    HOST_POLICIES,
    ON_RELEASE,
    PRIVILEGES,
    Config,
    DaemonSettings,
    Grant,
    HardwarePool,
    Host,
    Quota,
    ResourcePool,
    Size,
    StoragePoolRef,
    Template,
    VolumeRef,
)
from daemon.errors import ConfigError, ConfigProblem

EMBEDDED_CONFIG = Path(__file__).resolve().parents[2] / "config" / "provisiond.yml"
SYSTEM_CONFIG = Path("/etc/provisiond/provisiond.yml")
DEFAULT_CONFIG = EMBEDDED_CONFIG if EMBEDDED_CONFIG.exists() else SYSTEM_CONFIG
"""Without --config: the embedded default (libvirt's test driver) in a source checkout;
an installed provisiond (whose package has no config/) reads the system's."""


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,62}$")
NAME_EXPECTED = "a name of 1-63 letters, digits, '.', '_', '+' or '-' (not starting with a sign)"
PLACEHOLDER_RE = re.compile(r"\$\{([^}]*)\}")
CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
"""What no string may hold: control characters but tab and line ends, lone surrogates."""

Number = int | float
Bound = tuple[int, str]
"""An upper bound and why it is there, as the message names it."""
INT64_MAX: Bound = (2**63 - 1, "SQLite's largest integer")
MAX_CPUS: Bound = (4096, "libvirt's and QEMU's vCPU limits are below it")
MAX_MEMORY_KIB: Bound = (2**40, "1 PiB: libvirt takes it in bytes, quotas sum it in SQLite")
MAX_GIB: Bound = (2**20, "1 PiB: libvirt takes it in bytes, quotas sum it in SQLite")
MAX_SECONDS: Bound = (10**9, "about 31 years")
MAX_DAYS: Bound = (10**6, "about 2700 years")
MAX_OVERCOMMIT: Bound = (10**6, "a factor of the pool's capacity")
SOCKET_PATH_MAX = 107
"""Bytes of a Unix socket's path: AF_UNIX's sun_path is 108, with the final NUL."""


# --------------------------------------------------------------------------- defaults


def default_socket_path() -> Path:
    """Per-user socket: ``$XDG_RUNTIME_DIR/provisiond/provisiond.sock``, else under /tmp
    (one definition, shared with provctl: ``daemon.cli.contract``)."""
    return Path(contract.default_socket_path())


def default_database_path() -> Path:
    """Per-user database: ``$XDG_STATE_HOME/provisiond/provisiond.db``."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "provisiond" / "provisiond.db"


# --------------------------------------------------------------------------- validation


class _Checker:
    """Collects problems for one file while walking its parsed YAML."""

    def __init__(self, file: str, problems: list[ConfigProblem], subst: dict[str, str]):
        self.file = file
        self.problems = problems
        self.subst = subst

    def bad(self, path: str, message: str) -> None:
        self.problems.append(ConfigProblem(self.file, path, message))

    def mapping(self, value: Any, path: str, allowed: set[str] | None = None,
                required: set[str] = frozenset()) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.bad(path, f"expected a mapping, got {_show(value)}")
            return None
        for key in value:
            if not isinstance(key, str):
                self.bad(path, f"keys must be strings, got {_show(key)}")
        if allowed is not None:
            for key in value:
                if isinstance(key, str) and key not in allowed:
                    self.bad(_join(path, key),
                             f"unknown key (expected one of: {', '.join(sorted(allowed))})")
        for key in sorted(required):
            if key not in value:
                self.bad(_join(path, key), "required key is missing")
        return value

    def name(self, value: Any, path: str) -> str | None:
        if not isinstance(value, str) or not NAME_RE.fullmatch(value):
            self.bad(path, f"expected {NAME_EXPECTED}, got {_show(value)}")
            return None
        return value

    def positive_int(self, value: Any, path: str, unit: str = "",
                     bound: Bound = INT64_MAX) -> int | None:
        what = f"a positive integer ({unit})" if unit else "a positive integer"
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            self.bad(path, f"expected {what}, got {_show(value)}")
            return None
        return self.at_most(value, path, what, bound)

    def positive_number(self, value: Any, path: str, bound: Bound) -> float | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            self.bad(path, f"expected a positive number, got {_show(value)}")
            return None
        if isinstance(value, float) and not math.isfinite(value):  # YAML's .nan, .inf
            self.bad(path, f"expected a finite positive number, got {_show(value)}")
            return None
        # A huge int is compared as it is: float() of it would raise OverflowError.
        checked = self.at_most(value, path, "a positive number", bound)
        return None if checked is None else float(checked)

    def non_negative_int(self, value: Any, path: str, bound: Bound = INT64_MAX) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            self.bad(path, f"expected an integer >= 0, got {_show(value)}")
            return None
        return self.at_most(value, path, "an integer >= 0", bound)

    def at_most(self, value: Number, path: str, what: str, bound: Bound) -> Number | None:
        """``value`` if within ``bound``; else a problem naming the bound and None."""
        limit, why = bound
        if value > limit:
            self.bad(path, f"expected {what} of at most {limit} ({why}), got {_show(value)}")
            return None
        return value

    def string(self, value: Any, path: str) -> str | None:
        if not isinstance(value, str) or not value:
            self.bad(path, f"expected a non-empty string, got {_show(value)}")
            return None
        if CONTROL_RE.search(value):  # NUL breaks paths; XML, JSON and pwd refuse the rest
            self.bad(path, f"expected text without control characters, got {_show(value)}")
            return None
        return self.expand(value, path)

    def expand(self, value: str, path: str) -> str | None:
        unknown = [m for m in PLACEHOLDER_RE.findall(value) if m not in self.subst]
        if unknown:
            self.bad(path, f"unknown placeholder ${{{unknown[0]}}} "
                           f"(known: {', '.join('${%s}' % k for k in sorted(self.subst))})")
            return None
        return PLACEHOLDER_RE.sub(lambda m: self.subst[m.group(1)], value)

    def string_list(self, value: Any, path: str) -> list[str] | None:
        if not isinstance(value, list):
            self.bad(path, f"expected a list of strings, got {_show(value)}")
            return None
        out = []
        for i, item in enumerate(value):
            s = self.string(item, f"{path}[{i}]")
            if s is not None:
                out.append(s)
        return out


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _show(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path, shown: str, problems: list[ConfigProblem]) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        problems.append(ConfigProblem(shown, "", f"cannot read: {exc.strerror or exc}"))
        return None
    except UnicodeDecodeError:
        problems.append(ConfigProblem(shown, "", "not UTF-8 text"))
        return None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        problems.append(ConfigProblem(shown, "", f"{where}invalid YAML: {problem}"))
        return None


def shown_path(path: Path) -> str:
    """A path as shown in messages: absolute, the file that is read (a path relative to the
    working directory would mislead under systemd, whose working directory is /)."""
    return str(path.resolve())


# --------------------------------------------------------------------------- sections


def _parse_sizes(data: Any, c: _Checker) -> dict[str, Size]:
    sizes: dict[str, Size] = {}
    if c.mapping(data, "") is None:
        return sizes
    for key, entry in data.items():
        name = c.name(key, str(key))
        body = c.mapping(entry, str(key), {"cpus", "memory", "storage_size_in_gb", "network"},
                         {"cpus", "memory", "storage_size_in_gb"})
        if name is None or body is None:
            continue
        cpus = (c.positive_int(body.get("cpus"), f"{key}.cpus", bound=MAX_CPUS)
                if "cpus" in body else None)
        memory = (c.positive_int(body.get("memory"), f"{key}.memory", "KiB", MAX_MEMORY_KIB)
                  if "memory" in body else None)
        storage = (c.positive_int(body.get("storage_size_in_gb"), f"{key}.storage_size_in_gb",
                                  "GiB", MAX_GIB) if "storage_size_in_gb" in body else None)
        network = c.name(body["network"], f"{key}.network") if "network" in body else None
        if None not in (cpus, memory, storage):
            sizes[name] = Size(name, cpus, memory, storage, network)
    if not sizes and not c.problems:
        c.bad("", "defines no size")
    return sizes


def _parse_templates(data: Any, c: _Checker) -> dict[str, Template]:
    return parse_templates(data, c)


def _parse_hardware_pools(data: Any, c: _Checker) -> dict[str, HardwarePool]:
    pools: dict[str, HardwarePool] = {}
    first_seen: dict[str, tuple[str, Host]] = {}  # host name: (hardware pool, host)
    if c.mapping(data, "hardware_pools") is None:
        return pools
    for key, entry in data.items():
        path = f"hardware_pools.{key}"
        name = c.name(key, path)
        body = c.mapping(entry, path, {"hosts", "storage_pools", "reuse_tolerance_gb",
                                       "host_policy", "cpu_allocation_ratio",
                                       "ram_allocation_ratio"}, {"hosts", "storage_pools"})
        if name is None or body is None:
            continue
        hosts = _parse_list(body.get("hosts"), f"{path}.hosts", c, _parse_host)
        spools = _parse_list(body.get("storage_pools"), f"{path}.storage_pools", c,
                             _parse_storage_pool)
        tolerance = (c.non_negative_int(body["reuse_tolerance_gb"], f"{path}.reuse_tolerance_gb",
                                        MAX_GIB) if "reuse_tolerance_gb" in body else 0)
        _no_duplicates([h.name for h in hosts], f"{path}.hosts", "host", c)
        _no_duplicates([s.name for s in spools], f"{path}.storage_pools", "storage pool", c)
        for host in hosts:
            first = first_seen.setdefault(host.name, (name or str(key), host))
            if first[1] != host:  # the daemon opens one connection per host name
                c.bad(f"{path}.hosts", f"host {host.name!r} is {host.uri} "
                      f"({host.domain_type}) here but {first[1].uri} ({first[1].domain_type}) "
                      f"in hardware_pools.{first[0]}: one name, one libvirt host")
        if "hosts" in body and not body["hosts"]:
            c.bad(f"{path}.hosts", "expected at least one host")
        if "storage_pools" in body and not body["storage_pools"]:
            c.bad(f"{path}.storage_pools", "expected at least one storage pool")
        policy = body.get("host_policy", "spread")
        if policy not in HOST_POLICIES:
            c.bad(f"{path}.host_policy", f"expected one of {', '.join(HOST_POLICIES)}, got "
                                         f"{_show(policy)}")
            continue
        ratios = [c.positive_number(body[k], f"{path}.{k}", MAX_OVERCOMMIT) if k in body
                  else 1.0 for k in ("cpu_allocation_ratio", "ram_allocation_ratio")]
        if hosts and spools and tolerance is not None and None not in ratios:
            pools[name] = HardwarePool(name, tuple(hosts), tuple(spools), tolerance, policy,
                                       *ratios)
    return pools


def _parse_list(value: Any, path: str, c: _Checker,
                parse_item: Callable[[Any, str, _Checker], Any]) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        c.bad(path, f"expected a list, got {_show(value)}")
        return []
    items = [parse_item(item, f"{path}[{i}]", c) for i, item in enumerate(value)]
    return [item for item in items if item is not None]


def _parse_host(value: Any, path: str, c: _Checker) -> Host | None:
    body = c.mapping(value, path, {"name", "uri", "domain_type"}, {"name", "uri"})
    if body is None or not {"name", "uri"} <= body.keys():
        return None
    name = c.name(body["name"], f"{path}.name")
    uri = c.string(body["uri"], f"{path}.uri")
    if uri is not None and "://" not in uri:
        c.bad(f"{path}.uri", f"expected a libvirt URI such as qemu:///system, got {_show(uri)}")
        return None
    domain_type = body.get("domain_type", "auto")
    if domain_type not in DOMAIN_TYPES:
        c.bad(f"{path}.domain_type", f"expected one of: {', '.join(DOMAIN_TYPES)}, got "
                                     f"{_show(domain_type)}")
        return None
    return Host(name, uri, domain_type) if name and uri else None


def _parse_storage_pool(value: Any, path: str, c: _Checker) -> StoragePoolRef | None:
    body = c.mapping(value, path, {"name", "overcommit", "on_release", "templates_only",
                                   "shared"}, {"name"})
    if body is None or "name" not in body:
        return None
    name = c.name(body["name"], f"{path}.name")
    overcommit = (c.positive_number(body["overcommit"], f"{path}.overcommit", MAX_OVERCOMMIT)
                  if "overcommit" in body else 1.0)
    on_release = body.get("on_release", "wipe")
    if on_release not in ON_RELEASE:
        c.bad(f"{path}.on_release", f"expected one of {', '.join(ON_RELEASE)}, got "
                                    f"{_show(on_release)}")
        return None
    templates_only = body.get("templates_only", False)
    if not isinstance(templates_only, bool):
        c.bad(f"{path}.templates_only", f"expected true or false, got {_show(templates_only)}")
        return None
    shared = body.get("shared")
    if shared is not None and not isinstance(shared, bool):
        c.bad(f"{path}.shared", f"expected true or false, got {_show(shared)}")
        return None
    return (StoragePoolRef(name, overcommit, on_release, templates_only, shared)
            if name and overcommit else None)


def _no_duplicates(names: list[str], path: str, what: str, c: _Checker) -> None:
    seen: set[str] = set()
    for n in names:
        if n in seen:
            c.bad(path, f"{what} '{n}' is listed twice")
        seen.add(n)


def _parse_resource_pools(data: Any, c: _Checker, hardware_pools: dict[str, HardwarePool],
                          declared: frozenset[str] = frozenset()) -> dict[str, ResourcePool]:
    """``declared``: hardware pool names present in the file (valid or not)."""
    pools: dict[str, ResourcePool] = {}
    if c.mapping(data, "resource_pools") is None:
        return pools
    for key, entry in data.items():
        path = f"resource_pools.{key}"
        name = c.name(key, path)
        body = c.mapping(entry, path, {"hardware_pool", "grants", "quota", "description"},
                         {"hardware_pool"})
        if name is None or body is None or "hardware_pool" not in body:
            continue
        hw = c.name(body["hardware_pool"], f"{path}.hardware_pool")
        if hw is None:
            continue
        if hw not in hardware_pools:
            if hw not in declared:  # a declared but invalid one is reported where it is
                known = ", ".join(sorted(declared | hardware_pools.keys())) or "none defined"
                c.bad(f"{path}.hardware_pool",
                      f"unknown hardware pool {_show(hw)} (known: {known})")
            continue
        grants = _parse_grants(body.get("grants", {}), f"{path}.grants", c)
        quota = _parse_quota(body.get("quota", {}), f"{path}.quota", c)
        description = (c.string(body["description"], f"{path}.description") or ""
                       if "description" in body else "")
        if grants is not None and quota is not None:
            pools[name] = ResourcePool(name, hw, grants, quota, description)
    return pools


def _parse_grants(value: Any, path: str, c: _Checker) -> dict[str, Grant] | None:
    body = c.mapping(value, path, set(PRIVILEGES))
    if body is None:
        return None
    grants = {}
    complete = True  # check every privilege before giving up, so all problems are reported
    for privilege, who in body.items():
        if privilege not in PRIVILEGES:
            continue
        wbody = c.mapping(who, f"{path}.{privilege}", {"users", "groups"})
        if wbody is None:
            complete = False
            continue
        users = c.string_list(wbody.get("users", []), f"{path}.{privilege}.users")
        groups = c.string_list(wbody.get("groups", []), f"{path}.{privilege}.groups")
        if users is None or groups is None:
            complete = False
            continue
        grants[privilege] = Grant(frozenset(users), frozenset(groups))
    return grants if complete else None


def _parse_quota(value: Any, path: str, c: _Checker, *, per_user: bool = True
                 ) -> Quota | None:
    units = {"vms": "VMs", "cpus": "cpus", "memory": "KiB", "storage_gb": "GiB"}
    body = c.mapping(value, path, set(units) | ({"per_user"} if per_user else set()))
    if body is None:
        return None
    limits: dict[str, Any] = {}
    for key, unit in units.items():
        if key in body:
            limits[key] = c.positive_int(body[key], f"{path}.{key}", unit)
    if per_user and body.get("per_user") is not None:
        limits["per_user"] = _parse_quota(body["per_user"], f"{path}.per_user", c,
                                          per_user=False)
    if None in limits.values():  # each bad limit has been reported
        return None
    return Quota(**limits)


def _parse_daemon(data: Any, c: _Checker) -> DaemonSettings | None:
    keys = {"socket", "database", "socket_group", "define_event_timeout", "libvirt_call_timeout",
            "host_wait_timeout", "body_timeout", "stop_timeout", "retention_days",
            "session_idle_timeout", "max_in_progress_per_user", "max_connections_per_user"}
    body = c.mapping(data if data is not None else {}, "daemon", keys)
    if body is None:
        return None

    def path_of(key: str, default: Path) -> Path | None:
        if body.get(key) is None:
            return default
        text = c.string(body[key], f"daemon.{key}")
        if text is None:
            return None
        p = Path(os.path.expanduser(text))
        return p if p.is_absolute() else Path(c.subst["config_dir"]) / p

    socket = path_of("socket", default_socket_path())
    database = path_of("database", default_database_path())
    if socket is not None and len(os.fsencode(socket)) > SOCKET_PATH_MAX:
        unset = " (the default: set daemon.socket)" if body.get("socket") is None else ""
        c.bad("daemon.socket", f"{socket} is {len(os.fsencode(socket))} bytes long{unset}; "
                               f"a Unix socket's path may have at most {SOCKET_PATH_MAX}")
        socket = None
    group = c.string(body["socket_group"], "daemon.socket_group") if body.get(
        "socket_group") is not None else None
    timeouts = {}
    for key in ("define_event_timeout", "libvirt_call_timeout", "host_wait_timeout",
                "body_timeout", "stop_timeout", "retention_days", "session_idle_timeout"):
        if key in body:
            timeouts[key] = c.positive_number(
                body[key], f"daemon.{key}", MAX_DAYS if key == "retention_days" else MAX_SECONDS)
    limits = {}
    for key in ("max_in_progress_per_user", "max_connections_per_user"):
        if key in body:
            limits[key] = c.positive_int(body[key], f"daemon.{key}")
    if None in (socket, database, *timeouts.values(), *limits.values()):
        return None  # each problem has been reported
    return DaemonSettings(socket, database, group, **timeouts, **limits)


# --------------------------------------------------------------------------- entry point

MAIN_KEYS = {"daemon", "include"}
INCLUDE_KEYS = {"sizes", "templates", "pools"}


def load_config(path: Path | str | None = None, *, daemon_user: str | None = None) -> Config:
    """Load and validate the configuration rooted at ``path`` (default: the embedded one).

    Raises ConfigError listing every problem found, each with file and key path.
    """
    main = Path(path) if path is not None else DEFAULT_CONFIG
    main_abs = main.resolve()
    subst = {"config_dir": str(main_abs.parent),
             "daemon_user": daemon_user or getpass.getuser()}
    problems: list[ConfigProblem] = []
    shown = shown_path(main)
    raw = _read_yaml(main, shown, problems)
    c = _Checker(shown, problems, subst)
    if raw is None and not problems:
        c.bad("", "is empty")
    if problems or c.mapping(raw, "", MAIN_KEYS, {"include"}) is None or "include" not in raw:
        raise ConfigError(problems)

    # Problems in the main file do not stop the included files from being checked:
    # every problem is reported at once.
    include = c.mapping(raw["include"], "include", INCLUDE_KEYS, INCLUDE_KEYS)
    daemon = _parse_daemon(raw.get("daemon"), c)
    if include is None or not INCLUDE_KEYS <= include.keys():
        raise ConfigError(problems)

    files: dict[str, Path] = {}
    parsed: dict[str, tuple[Any, _Checker]] = {}
    for key in sorted(INCLUDE_KEYS):
        rel = c.string(include[key], f"include.{key}")
        if rel is None:
            continue
        fpath = main_abs.parent / rel
        files[key] = fpath
        fshown = shown_path(fpath)
        before = len(problems)
        data = _read_yaml(fpath, fshown, problems)
        if len(problems) == before:
            parsed[key] = (data, _Checker(fshown, problems, subst))
    if len(parsed) < len(INCLUDE_KEYS):  # a file is unnamed, unreadable or not YAML
        raise ConfigError(problems)

    sizes = _parse_sizes(*parsed["sizes"])
    templates = _parse_templates(*parsed["templates"])
    pools_data, pc = parsed["pools"]
    pools_body = pc.mapping(pools_data, "", {"hardware_pools", "resource_pools"},
                            {"hardware_pools", "resource_pools"})
    hardware: dict[str, HardwarePool] = {}
    resource: dict[str, ResourcePool] = {}
    if pools_body is not None and {"hardware_pools", "resource_pools"} <= pools_body.keys():
        hardware = _parse_hardware_pools(pools_body["hardware_pools"], pc)
        declared = pools_body["hardware_pools"]
        resource = _parse_resource_pools(
            pools_body["resource_pools"], pc, hardware,
            frozenset(k for k in declared if isinstance(k, str))
            if isinstance(declared, dict) else frozenset())
        if not resource and not problems:
            pc.bad("resource_pools", "defines no resource pool")
        if not problems:  # a pool entry refused above is not listed: say that only
            unlisted_pool_problems(templates, hardware, parsed["templates"][1])
    if problems or daemon is None:
        raise ConfigError(problems)
    return Config(main_abs, daemon, sizes, templates, hardware, resource, files)
