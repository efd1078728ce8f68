"""provctl's human output: aligned tables, a request's page, its timeline."""

from __future__ import annotations

import json

from daemon.cli.client import one_line
from daemon.cli.contract import STATES

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every run
    from datetime import datetime
    from typing import Any, Iterable, Sequence


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]],
                 right: Iterable[int] = ()) -> str:
    """Rows as an aligned plain-text table under its headers (None shows as '-')."""
    right_cols = set(right)
    cells = [[str(h) for h in headers]]
    cells += [["-" if v is None or v == "" else str(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [cell.rjust(widths[i]) if i in right_cols else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _mib(kib: Any) -> str:
    if not isinstance(kib, (int, float)) or isinstance(kib, bool):
        return "-"
    mib = kib / 1024
    return f"{mib:.0f}" if mib == int(mib) else f"{mib:.1f}"


def _quota_text(quota: Any) -> str:
    """A pool's quota compactly: ``vms=10 cpus=16 memory=32768MiB storage=500GiB``."""
    if not isinstance(quota, dict):
        return "-" if quota is None else str(quota)
    units = {"memory": lambda v: f"{_mib(v)}MiB", "storage_gb": lambda v: f"{v}GiB"}
    names = {"storage_gb": "storage"}
    parts = []
    for key, value in quota.items():
        if value is None:
            continue
        if isinstance(value, dict):  # e.g. {"limit": .., "used": ..}
            used, limit = value.get("used"), value.get("limit")
            shown = (f"{used}/{limit}" if "used" in value and "limit" in value
                     else json.dumps(value, separators=(",", ":")))
        elif isinstance(value, (int, float)) and key in units:
            shown = units[key](value)
        else:
            shown = str(value)
        parts.append(f"{names.get(key, key)}={shown}")
    return " ".join(parts) if parts else "unlimited"


def _pool_quota_text(quota: Any) -> str:
    """The pool's quota, then each user's: ``vms=50 ...; per user vms=10 ...``."""
    if not isinstance(quota, dict) or not isinstance(quota.get("per_user"), dict):
        return _quota_text(quota)
    pool = {k: v for k, v in quota.items() if k != "per_user"}
    return f"{_quota_text(pool)}; per user {_quota_text(quota['per_user'])}"


def render_whoami(me: dict[str, Any]) -> str:
    """Who the caller is, and the pools of each privilege ("none" where they hold it
    nowhere)."""
    privileges = me.get("privileges") or {}
    return "\n".join([f"user:          {me.get('user')}",
                      f"groups:        {', '.join(me.get('groups') or []) or '-'}",
                      *(f"{name + ':':<15}{', '.join(pools) or 'none'}"
                        for name, pools in privileges.items())])


def render_catalog(catalog: dict[str, Any]) -> str:
    """The catalog as three tables: templates, sizes (memory in KiB and MiB), pools."""
    flags = {"ssh_keys": "--ssh-key", "user_data": "--user-data",
             "network_config": "--network-config"}
    templates = render_table(
        ["TEMPLATE", "KIND", "CREATE MAY ADD", "DESCRIPTION"],
        [[t.get("name"), t.get("kind"),
          " ".join(flags.get(a, a) for a in t.get("accepts") or []) or "-",
          t.get("description")] for t in catalog.get("templates", [])])
    sizes = render_table(
        ["SIZE", "CPUS", "MEMORY KiB", "MEMORY MiB", "STORAGE GiB", "NETWORK"],
        [[s.get("name"), s.get("cpus"), s.get("memory"), _mib(s.get("memory")),
          s.get("storage_size_in_gb"), s.get("network")] for s in catalog.get("sizes", [])],
        right={1, 2, 3, 4})
    pools = render_table(
        ["RESOURCE POOL", "HARDWARE POOL", "QUOTA", "USED", "YOURS", "DESCRIPTION"],
        [[p.get("name"), p.get("hardware_pool"), _pool_quota_text(p.get("quota")),
          _quota_text(p.get("used")), _quota_text(p.get("used_by_you")),
          p.get("description")] for p in catalog.get("resource_pools", [])])
    head = f"Catalog for user {catalog['user']}\n\n" if catalog.get("user") else ""
    return f"{head}{templates}\n\n{sizes}\n\n{pools}"


def _short_time(value: Any) -> str:
    """An ISO-8601 UTC time to the second, e.g. ``2026-11-24 01:02:03Z``."""
    when = _parse_time(value)
    if when is None:
        return "-" if value is None else str(value)
    utc = when.utcoffset() is not None and not when.utcoffset()
    return when.strftime("%Y-%m-%d %H:%M:%S") + ("Z" if utc else "")


def render_list(requests: Sequence[dict[str, Any]]) -> str:
    """Requests as a table: full id, name, state, its VM's state (a done request's: a
    deleted VM's request stays done), template, size, pool, creation time."""
    if not requests:
        return "No requests."
    return render_table(
        ["ID", "NAME", "STATE", "VM", "TEMPLATE", "SIZE", "POOL", "CREATED"],
        [[r.get("id"), r.get("name"), r.get("state"),
          (r.get("vm") or {}).get("state") or "-", r.get("template"), r.get("size"),
          r.get("resource_pool"), _short_time(r.get("created_at"))] for r in requests])


def render_request(req: dict[str, Any]) -> str:
    """A Request as aligned ``key: value`` lines, most useful first."""
    volume = req.get("volume")
    domain = req.get("domain")
    vol_text = None
    if isinstance(volume, dict):
        vol_text = f"{volume.get('pool')}/{volume.get('name')}"
        if volume.get("path"):
            vol_text += f" ({volume['path']})"
        vol_text += ", created for this request" if volume.get("owned") else ", reused"
    dom_text = (f"{domain.get('name')} ({domain.get('uuid')})" if isinstance(domain, dict)
                else None)
    memory = req.get("memory_kib")
    pairs: list[tuple[str, Any]] = [
        ("id", req.get("id")),
        ("name", req.get("name")),
        ("state", req.get("state")),
        ("reason", req.get("reason")),
        ("owner", req.get("owner")),
        ("template", req.get("template")),
        ("size", req.get("size")),
        ("resource pool", req.get("resource_pool")),
        ("hardware pool", req.get("hardware_pool")),
        ("host", req.get("host")),
        ("cpus", req.get("cpus")),
        ("memory", f"{memory} KiB ({_mib(memory)} MiB)" if memory is not None else None),
        ("storage", f"{req['storage_gb']} GiB" if req.get("storage_gb") is not None else None),
        ("volume", vol_text),
        ("domain", dom_text),
        ("vm", _vm_text(req.get("vm"))),
        ("created", req.get("created_at")),
        ("updated", req.get("updated_at")),
    ]
    known = {"id", "name", "state", "reason", "owner", "template", "size", "resource_pool",
             "hardware_pool", "host", "cpus", "memory_kib", "storage_gb", "volume", "domain",
             "vm", "created_at", "updated_at"}
    pairs += [(k, v if not isinstance(v, (dict, list)) else json.dumps(v))
              for k, v in req.items() if k not in known]
    width = max(len(k) for k, _ in pairs) + 1
    return "\n".join(f"{k + ':':<{width}} {'-' if v is None or v == '' else v}"
                     for k, v in pairs)


def _vm_text(vm: Any) -> str | None:
    """A done request's VM: its state, and why its last operation failed if it did."""
    if not isinstance(vm, dict):
        return None
    reason = vm.get("reason")
    text = f"{vm.get('state')}" + (f" (last operation: {one_line(reason)})" if reason else "")
    addresses = vm.get("addresses")
    if addresses:
        text += ", addresses " + ", ".join(
            f"{a.get('address')}/{a.get('prefix')} ({a.get('interface')}, {a.get('source')})"
            for a in addresses if isinstance(a, dict))
    elif addresses is None and "addresses" in vm and vm.get("state") in ("running", "paused"):
        text += ", addresses unknown (its host could not be asked)"
    return text


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    from datetime import datetime  # only for times shown: not on every command's path

    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def format_duration(seconds: float) -> str:
    """A time span as ``+0.012s``, ``+12.345s`` or ``+3m05.000s``."""
    if seconds < 60:
        return f"+{seconds:.3f}s"
    minutes, rest = divmod(seconds, 60)
    return f"+{int(minutes)}m{rest:06.3f}s"


def _states_text(entry: dict[str, Any], from_width: int) -> str:
    """``from -> to`` with the arrows aligned; an event or note shows its one state."""
    src, dst = entry.get("from"), entry.get("to")
    if entry.get("kind") != "transition":
        return str(dst or src or "-")
    return f"{src or '':<{from_width}} -> {dst}"


def render_log(entries: Sequence[dict[str, Any]]) -> str:
    """A request's log, one line per entry; TOOK is the time spent in the state left.

    For a transition, TOOK is its time minus the previous transition's time: how long the
    request stayed in the ``from`` state. A last line sums the walk when there are at least
    two transitions.
    """
    if not entries:
        return "No log entries."
    from_width = max((len(e.get("from") or "") for e in entries
                      if e.get("kind") == "transition"), default=0)
    rows = []
    first_at = last_at = None
    first_state = last_state = None
    for entry in entries:
        took = None
        at = _parse_time(entry.get("at"))
        if entry.get("kind") == "transition":
            if at is not None and last_at is not None:
                took = format_duration((at - last_at).total_seconds())
            if at is not None:
                last_at = at
                first_at = first_at or at
            first_state = first_state or entry.get("from") or entry.get("to")
            last_state = entry.get("to")
        rows.append([entry.get("at"), entry.get("kind"), _states_text(entry, from_width),
                     entry.get("trigger"), took, one_line(entry.get("detail") or "")])
    table = render_table(["TIME", "KIND", "STATE", "TRIGGER", "TOOK", "DETAIL"], rows,
                         right={4})
    transitions = sum(1 for e in entries if e.get("kind") == "transition")
    if transitions >= 2 and first_at is not None and last_at is not None:
        total = format_duration((last_at - first_at).total_seconds())
        table += f"\n\n{first_state} -> {last_state} in {total}"
    return table


class Timeline:
    """A request's log rendered one entry at a time, in fixed columns (``log --follow``).

    The columns are ``render_log``'s; TOOK is the time spent in the state a transition
    leaves. Events (libvirt's, e.g. ``libvirt:DEFINED``) and notes show the state they
    happened in.
    """

    WIDTHS = (24, 10, 2 * max(len(s) for s in STATES) + 4, 18, 10)
    HEADERS = ("TIME", "KIND", "STATE", "TRIGGER", "TOOK", "DETAIL")

    def __init__(self) -> None:
        self.first_at: datetime | None = None
        self.last_at: datetime | None = None
        self.first_state: str | None = None
        self.last_state: str | None = None
        self.transitions = 0

    def _row(self, cells: Sequence[str]) -> str:
        parts = [cell.rjust(width) if i == 4 else cell.ljust(width)
                 for i, (cell, width) in enumerate(zip(cells[:-1], self.WIDTHS, strict=True))]
        return "  ".join([*parts, cells[-1]]).rstrip()

    def header(self) -> str:
        """The column headers."""
        return self._row(self.HEADERS)

    def line(self, entry: dict[str, Any]) -> str:
        """One entry as one line; a transition's TOOK is measured from the previous one."""
        took = ""
        if entry.get("kind") == "transition":
            at = _parse_time(entry.get("at"))
            if at is not None and self.last_at is not None:
                took = format_duration((at - self.last_at).total_seconds())
            if at is not None:
                self.last_at = at
                self.first_at = self.first_at or at
            self.first_state = self.first_state or entry.get("from") or entry.get("to")
            self.last_state = entry.get("to")
            self.transitions += 1
        width = max(len(s) for s in STATES)
        cells = [str(entry.get("at") or "-"), str(entry.get("kind") or "-"),
                 _states_text(entry, width), str(entry.get("trigger") or "-"), took,
                 one_line(entry.get("detail") or "")]
        return self._row(cells)

    def summary(self) -> str | None:
        """``requested -> done in +0.044s`` once at least two transitions were seen."""
        if self.transitions < 2 or self.first_at is None or self.last_at is None:
            return None
        total = format_duration((self.last_at - self.first_at).total_seconds())
        return f"{self.first_state} -> {self.last_state} in {total}"


def render_explain(result: dict[str, Any]) -> str:
    """The placement decision as one line, then a table of every candidate's verdict."""
    action = result.get("action") or "none"
    pool, volume = result.get("pool"), result.get("volume")
    reason = one_line(result.get("reason") or "")
    if reason:  # the daemon's reason names the volume or pool already
        line = f"{action}: {reason}"
    elif action == "reuse":
        line = f"reuse: free volume {pool}/{volume}"
    elif action == "create":
        line = f"create: a new volume in pool {pool}"
    else:
        line = "none: no storage"
    hosts = result.get("hosts") or []
    host_table = ("\n\n" + render_table(
        ["HOST", "VERDICT", "REASON"],
        [[h.get("host"), h.get("verdict"), one_line(h.get("reason") or "")] for h in hosts])
        if len(hosts) > 1 else "")
    candidates = result.get("candidates") or []
    if not candidates:
        return f"{line}{host_table}\n\nNo candidates."
    table = render_table(
        ["STAGE", "POOL", "VOLUME", "VERDICT", "REASON"],
        [[c.get("stage"), c.get("pool"), c.get("volume"), c.get("verdict"),
          one_line(c.get("reason") or "")] for c in candidates])
    where = f" (on host {result['host']})" if result.get("host") and len(hosts) > 1 else ""
    return f"{line}{where}{host_table}\n\n{table}"


def render_reconcile(result: dict[str, Any]) -> str:
    """Orphans found (and what was done with each), as a table."""
    orphans = result.get("orphans") or []
    hosts = ", ".join(result.get("hosts") or []) or "no host"
    if not orphans:
        return f"No orphans on {hosts}."
    table = render_table(
        ["HOST", "KIND", "POOL", "NAME", "REQUEST", "ACTION", "WHY"],
        [[o.get("host"), o.get("kind"), o.get("pool"), o.get("name"), o.get("request_id"),
          o.get("action"), one_line(o.get("reason") or "")] for o in orphans])
    hint = "" if result.get("applied") else "\n\nNothing was removed; run with --apply to remove."
    return f"{len(orphans)} orphan(s) on {hosts}:\n\n{table}{hint}"


def render_transition(entry: dict[str, Any]) -> str:
    """One reached state, as ``create --wait`` prints it: ``  storage-searching  (detail)``."""
    state = str(entry.get("to") or "-")
    detail = one_line(entry.get("detail") or "")
    width = max(len(s) for s in STATES)
    return f"  {state:<{width}}  ({detail})" if detail else f"  {state}"


def render_outcome(req: dict[str, Any]) -> str:
    """The one-line outcome of a done request: what was defined, where, on what disk."""
    domain = req.get("domain") if isinstance(req.get("domain"), dict) else {}
    volume = req.get("volume") if isinstance(req.get("volume"), dict) else {}
    text = f"done: {domain.get('name') or req.get('name')}"
    if req.get("host"):
        text += f" defined on {req['host']}"
    if domain.get("uuid"):
        text += f" (domain {domain['uuid']})"
    if volume:
        text += f", volume {volume.get('pool')}/{volume.get('name')}"
    return text
