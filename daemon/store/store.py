"""The store: the only module with SQL. Requests, their state log, storage claims.

SQLite through sqlite-utils, in WAL mode with ``synchronous=FULL`` so a committed
transition survives a crash of the process or the machine. The schema comes from numbered
migrations applied at start-up (``PRAGMA user_version`` records the last one applied).

Writes that belong together go through ``atomic()`` (one transaction, nested blocks are
savepoints): a new state and its log row; a claim and the transition it enables.

Group commit (``enable_group_commit``, used by the daemon): writes join one open
transaction that is committed at the end of the next pass of the event loop, so one
fsync covers the transitions of every request that moved in those passes (and what the
first write woke, such as a new request's first steps, joins it). Whoever is about to
act on what it wrote awaits ``durable()`` first: the state is on disk before its work
starts, and a crash before the commit loses only writes whose work never started.
A libvirt event's log row (``append_log`` of kind ``event``) does not ask for a commit of
its own: it joins the next one (an operation's end comes a few ms after the events of
its libvirt calls), or is committed ``EVENT_COMMIT_DELAY`` later if no other write comes.
Nothing acts on such a row, so no work waits for it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import sqlite_utils

from daemon.errors import StaleState
from daemon.store.claims import StorageClaims
from daemon.store.records import LogEntry, QuotaUsage, RequestRecord, Reservation, VmRecord
from daemon.store.schema import MIGRATIONS
from statemachines.provisioning import HOLDS_QUOTA, IN_PROGRESS, ON_HOST, State
from statemachines.vm import TABLE as VM_TABLE
from statemachines.vm import VmState

# --------------------------------------------------------------------------- store

EVENT_COMMIT_DELAY = 0.1
"""Seconds at most a libvirt event's log row waits for another write to share a commit."""

REQUEST_UPDATABLE = {
    "host", "reason", "volume_pool", "volume_name", "volume_path", "volume_format", "volume_owned",
    "domain_uuid", "domain_name", "cleaned_up", "vm_state", "seed_volume", "installing",
}


_REQUEST_DEFAULTS: dict[str, Any] = {
    "host": None, "network": None, "reason": None, "volume_pool": None, "volume_name": None,
    "volume_path": None, "volume_format": None, "volume_owned": 0, "domain_uuid": None,
    "domain_name": None, "idempotency_key": None, "cleaned_up": 0, "vm_state": None,
    "vm_reason": None, "cloud_init": None, "seed_volume": None, "installing": 0,
}
"""What a new ``requests`` row holds in the columns ``insert_request`` leaves out."""


def create_private(path: Path) -> None:
    """Make the database's missing directories 0700 and a missing database file 0600,
    whatever the umask: it holds every request. SQLite gives the -wal and -shm files it
    makes the database file's mode. What exists already is left as it is."""
    missing = []
    directory = path.parent
    while not os.path.lexists(directory):
        missing.append(directory)
        directory = directory.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue  # made meanwhile by someone else: not ours to change
        os.chmod(directory, 0o700)  # the umask may have taken bits from it
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class Store(StorageClaims):
    """All persistent state of provisiond, behind methods; no SQL outside this class."""

    def __init__(self, path: Path | str, *, clock: Callable[[], float] = time.time) -> None:
        if str(path) != ":memory:":
            create_private(Path(path))
        conn = sqlite3.connect(str(path), check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        self.path = path
        self.clock = clock
        self.db.enable_wal()
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA busy_timeout=5000")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: asyncio.Future[None] | None = None
        self._late: asyncio.TimerHandle | None = None
        """The delayed flush of a group opened by an event's log row (see ``atomic``)."""
        self._depth = 0
        self._reservations: dict[str, dict[str, Reservation]] | None = None
        """Reservations by host, read once; dropped when a transaction rolls back."""

    # -- lifecycle

    def migrate(self) -> int:
        """Apply pending migrations, each in its own transaction; return the schema version."""
        version = self.schema_version()
        if version > len(MIGRATIONS):
            raise RuntimeError(f"database {self.path} has schema version {version}, newer than "
                               f"this provisiond knows ({len(MIGRATIONS)}); refusing to use it")
        for number, migration in enumerate(MIGRATIONS, start=1):
            if number <= version:
                continue
            with self.db.atomic():
                migration(self.db)
                self.db.execute(f"PRAGMA user_version={number}")
        return self.schema_version()

    def schema_version(self) -> int:
        """The number of the last migration applied."""
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        """Commit what is pending and close the database."""
        self._flush()
        self._loop = None
        self.db.close()

    def enable_group_commit(self) -> None:
        """From now on, commit by groups (one pass of the loop later); callers await
        ``durable()``."""
        self._loop = asyncio.get_running_loop()

    async def durable(self) -> None:
        """Return once everything written so far is committed."""
        if self._pending is not None:
            self._flush_soon()
            await asyncio.shield(self._pending)

    def _flush_soon(self) -> None:
        # A group opened by an event's log row is committed like any other once a write
        # that matters joins it, or someone waits for it.
        if self._late is not None and self._loop is not None:
            self._late.cancel()
            self._late = None
            self._loop.call_soon(self._loop.call_soon, self._flush)

    def _flush(self) -> None:
        if self._late is not None:
            self._late.cancel()
            self._late = None
        pending, self._pending = self._pending, None
        try:
            if self.db.conn.in_transaction:
                self.db.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self.db.rollback()
            self._reservations = None
            if pending is not None and not pending.done():
                pending.set_exception(exc)
            return
        if pending is not None and not pending.done():
            pending.set_result(None)

    @contextmanager
    def atomic(self, *, late: bool = False) -> Iterator[None]:
        """One transaction (a savepoint when nested, or inside the group's transaction);
        ``late``: a write nothing acts on, committed with the next group (at the latest
        ``EVENT_COMMIT_DELAY`` later)."""
        conn = self.db.conn
        if self._loop is not None and not conn.in_transaction:
            conn.execute("BEGIN IMMEDIATE")
            self._pending = self._loop.create_future()
            if late:
                self._late = self._loop.call_later(EVENT_COMMIT_DELAY, self._flush)
            else:
                # Committed in the next pass of the loop, not this one: what this write
                # woke (a new request's task, a step waiting for an event) writes its next
                # state into the same commit before it waits for the disk.
                self._loop.call_soon(self._loop.call_soon, self._flush)
        elif not late:
            self._flush_soon()
        if conn.in_transaction:
            # A fixed name per depth: the statements stay in sqlite3's statement cache.
            savepoint = f"SAVEPOINT provisiond_{self._depth}"
            begin, end, undo = savepoint, f"RELEASE {savepoint}", (
                f"ROLLBACK TO {savepoint}", f"RELEASE {savepoint}")
        else:
            begin, end, undo = "BEGIN IMMEDIATE", "COMMIT", ("ROLLBACK",)
        conn.execute(begin)
        self._depth += 1
        try:
            yield
            conn.execute(end)
        except BaseException:
            self._rolled_back()
            # An error may have ended the whole transaction, savepoints and all.
            if conn.in_transaction:
                for statement in undo:
                    conn.execute(statement)
            raise
        finally:
            self._depth -= 1

    def _rolled_back(self) -> None:
        self._reservations = None  # may hold what was just undone; read again when asked

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` answer ('ok' when sound)."""
        return str(self.db.execute("PRAGMA integrity_check").fetchone()[0])

    # -- requests

    def insert_request(self, values: dict[str, Any], *, trigger: str = "submit",
                       detail: str | None = None) -> RequestRecord:
        """Store a new request in its initial state, with its first log row, atomically."""
        now = self.clock()
        row = dict(values)
        row["owner_groups"] = json.dumps(sorted(row.get("owner_groups", [])))
        row.update(state=str(State.REQUESTED), created_at=now, updated_at=now)
        columns = ", ".join(row)
        with self.atomic():
            self.db.conn.execute(
                f"INSERT INTO requests ({columns}) VALUES ({', '.join(':' + k for k in row)})",
                row)
            self._insert_log(row["id"], "transition", None, State.REQUESTED, trigger, now, detail)
        return RequestRecord.from_row({**_REQUEST_DEFAULTS, **row})

    def record_transition(self, request_id: str, from_state: State, to_state: State,
                          trigger: str, detail: str | None = None,
                          updates: Mapping[str, Any] | None = None) -> None:
        """Persist a state change and its log row in one transaction.

        Refuses (raises ``StaleState``) if the stored state is not ``from_state``: the
        caller's view was out of date, and nothing is written.
        """
        now = self.clock()
        sets = {"state": str(to_state), "updated_at": now}
        for key, value in (updates or {}).items():
            if key not in REQUEST_UPDATABLE:
                raise ValueError(f"request field {key!r} cannot be updated")
            sets[key] = value
        assignments = ", ".join(f"{k} = :{k}" for k in sets)
        with self.atomic():
            cursor = self.db.conn.execute(
                f"UPDATE requests SET {assignments} WHERE id = :_id AND state = :_from",
                {**sets, "_id": request_id, "_from": str(from_state)},
            )
            if cursor.rowcount != 1:
                raise StaleState(f"request {request_id} is not in state {from_state}")
            self._insert_log(request_id, "transition", from_state, to_state, trigger, now, detail)

    def update_request(self, request_id: str, **updates: Any) -> None:
        """Set fields of a request that do not change its state."""
        bad = set(updates) - REQUEST_UPDATABLE
        if bad:
            raise ValueError(f"request fields {sorted(bad)} cannot be updated")
        if updates:
            sets = {**updates, "updated_at": self.clock()}
            with self.atomic():
                self.db.conn.execute(
                    f"UPDATE requests SET {', '.join(f'{k} = :{k}' for k in sets)}"
                    " WHERE id = :_id", {**sets, "_id": request_id})

    def append_log(self, request_id: str, kind: str, state: State, trigger: str,
                   detail: str | None = None) -> None:
        """Record a libvirt event or a note in a request's log (its state does not change)."""
        with self.atomic(late=kind == "event"):
            self._insert_log(request_id, kind, state, state, trigger, self.clock(), detail)

    def _insert_log(self, request_id: str, kind: str, from_state: State | None,
                    to_state: State | None, trigger: str, at: float,
                    detail: str | None) -> None:
        self.db.conn.execute(
            "INSERT INTO state_log (request_id, kind, from_state, to_state, trigger, at, detail)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (request_id, kind, from_state and str(from_state), to_state and str(to_state),
             trigger, at, detail),
        )

    def _query(self, sql: str, params: Sequence[Any] = ()) -> Iterator[dict[str, Any]]:
        # One statement: sqlite_utils' query() wraps each one in a savepoint (three).
        cursor = self.db.conn.execute(sql, params)
        keys = [d[0] for d in cursor.description]
        return (dict(zip(keys, row)) for row in cursor)

    def get_request(self, request_id: str) -> RequestRecord | None:
        """A request by id, or None."""
        rows = list(self._query("SELECT * FROM requests WHERE id = ?", [request_id]))
        return RequestRecord.from_row(rows[0]) if rows else None

    def find_by_idempotency_key(self, owner: str, key: str) -> RequestRecord | None:
        """The request an owner made earlier with this idempotency key, or None."""
        rows = list(self._query(
            "SELECT * FROM requests WHERE owner = ? AND idempotency_key = ?", [owner, key]))
        return RequestRecord.from_row(rows[0]) if rows else None

    def host_usage(self) -> dict[str, tuple[int, int]]:
        """(vCPUs, memory in KiB) by host of what provisiond placed there: requests bound to
        a host (``ON_HOST``: in progress past the host choice, or done until their VM is
        deleted)."""
        states = sorted(ON_HOST)
        rows = self.db.execute(
            "SELECT host, COALESCE(SUM(cpus), 0), COALESCE(SUM(memory_kib), 0) FROM requests"
            f" WHERE host IS NOT NULL AND state IN ({','.join('?' * len(states))})"
            " AND (vm_state IS NULL OR vm_state != 'deleted') GROUP BY host",
            [str(s) for s in states]).fetchall()
        return {host: (int(cpus), int(memory)) for host, cpus, memory in rows}

    def holder_of_name(self, name: str, hardware_pool: str) -> RequestRecord | None:
        """The request whose VM has (or will have) this name in the hardware pool: not
        failed, and its VM not deleted; None if the name is free there."""
        rows = list(self._query(
            "SELECT * FROM requests WHERE name = ? AND hardware_pool = ? AND state != ?"
            " AND (vm_state IS NULL OR vm_state != 'deleted') LIMIT 1",
            [name, hardware_pool, str(State.FAILED)]))
        return RequestRecord.from_row(rows[0]) if rows else None

    def list_requests(self, *, states: Sequence[State] | None = None, owner: str | None = None,
                      resource_pools: Sequence[str] | None = None,
                      limit: int | None = None, owners: Sequence[str] | None = None,
                      pools: Sequence[str] | None = None, created_since: float | None = None,
                      created_until: float | None = None,
                      after: str | None = None,
                      names: Sequence[str] | None = None) -> list[RequestRecord]:
        """Requests, oldest first, filtered by state, owner and resource pool.

        ``owner`` and ``resource_pools`` say what a caller may see (its own requests, or
        those of these pools: either one when both are given). ``owners``, ``pools`` and
        the creation window ``created_since <= created_at < created_until`` (epoch
        seconds) narrow that down, and ``names`` (the VMs' names); every filter given must
        hold. ``after``: only requests
        that come after this one (by id) in that order, for paging.
        """
        where: list[str] = []
        params: list[Any] = []
        if states is not None:
            where.append(f"state IN ({','.join('?' * len(states))})")
            params += [str(s) for s in states]
        if owners is not None:
            where.append(f"owner IN ({','.join('?' * len(owners))})")
            params += list(owners)
        if pools is not None:
            where.append(f"resource_pool IN ({','.join('?' * len(pools))})")
            params += list(pools)
        if names is not None:
            where.append(f"name IN ({','.join('?' * len(names))})")
            params += list(names)
        if created_since is not None:
            where.append("created_at >= ?")
            params.append(float(created_since))
        if created_until is not None:
            where.append("created_at < ?")
            params.append(float(created_until))
        if owner is not None and resource_pools is not None:
            where.append(f"(owner = ? OR resource_pool IN ({','.join('?' * len(resource_pools))}))")
            params += [owner, *resource_pools]
        elif owner is not None:
            where.append("owner = ?")
            params.append(owner)
        elif resource_pools is not None:
            where.append(f"resource_pool IN ({','.join('?' * len(resource_pools))})")
            params += list(resource_pools)
        if after is not None:
            where.append("(created_at, id) > (SELECT created_at, id FROM requests WHERE id = ?)")
            params.append(after)
        sql = "SELECT * FROM requests"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [RequestRecord.from_row(r) for r in self._query(sql, params)]

    def count_by_state(self) -> dict[str, int]:
        """How many requests are in each state."""
        return {state: count for state, count in self.db.execute(
            "SELECT state, COUNT(*) FROM requests GROUP BY state").fetchall()}

    def live_requests(self) -> list[RequestRecord]:
        """Requests not in a terminal state, oldest first."""
        return self.list_requests(states=sorted(IN_PROGRESS))

    def failed_needing_cleanup(self) -> list[RequestRecord]:
        """Failed requests whose rollback has not finished."""
        return [RequestRecord.from_row(r) for r in self._query(
            "SELECT * FROM requests WHERE state = ? AND cleaned_up = 0 ORDER BY created_at",
            [str(State.FAILED)])]

    def find_by_domain_uuid(self, domain_uuid: str) -> RequestRecord | None:
        """The request whose domain has this UUID, or None."""
        rows = list(self._query("SELECT * FROM requests WHERE domain_uuid = ?", [domain_uuid]))
        return RequestRecord.from_row(rows[0]) if rows else None

    def requests_on_pool(self, host: str, pool: str) -> list[RequestRecord]:
        """Live and done requests whose volume is in this pool of this host."""
        return [RequestRecord.from_row(r) for r in self._query(
            "SELECT * FROM requests WHERE host = ? AND volume_pool = ? AND state != ?",
            [host, pool, str(State.FAILED)])]

    def get_log(self, request_id: str) -> list[LogEntry]:
        """A request's log, oldest first."""
        return [LogEntry(**r) for r in self._query(
            "SELECT * FROM state_log WHERE request_id = ? ORDER BY id", [request_id])]

    def quota_usage(self, resource_pool: str, owner: str | None = None, *,
                    excluding: str | None = None) -> QuotaUsage:
        """What the pool's quota-holding requests (authorized onwards, and done until their
        VM is deleted) add up to; with ``owner``, only that user's."""
        states = sorted(HOLDS_QUOTA)
        row = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(cpus), 0), COALESCE(SUM(memory_kib), 0),"
            " COALESCE(SUM(storage_gb), 0) FROM requests"
            f" WHERE resource_pool = ? AND id != ? AND state IN ({','.join('?' * len(states))})"
            " AND (vm_state IS NULL OR vm_state != 'deleted')"
            + (" AND owner = ?" if owner is not None else ""),
            [resource_pool, excluding or "", *[str(s) for s in states],
             *([owner] if owner is not None else [])],
        ).fetchone()
        return QuotaUsage(*row)

    # -- VMs (the lifecycle after done)

    def record_vm_transition(self, request_id: str, from_state: VmState, to_state: VmState,
                             trigger: str, detail: str | None = None,
                             updates: Mapping[str, Any] | None = None) -> None:
        """Persist a VM's state change (``reason`` is its ``vm_reason``) and its log row."""
        now = self.clock()
        # vm_reason says why the last operation failed: any other transition clears it.
        sets: dict[str, Any] = {"vm_state": str(to_state), "updated_at": now,
                                "vm_reason": None}
        for key, value in (updates or {}).items():
            if key not in ("reason", "installing"):
                raise ValueError(f"VM field {key!r} cannot be updated")
            sets["vm_reason" if key == "reason" else key] = value
        with self.atomic():
            cursor = self.db.conn.execute(
                f"UPDATE requests SET {', '.join(f'{k} = :{k}' for k in sets)}"
                " WHERE id = :_id AND vm_state = :_from",
                {**sets, "_id": request_id, "_from": str(from_state)})
            if cursor.rowcount != 1:
                raise StaleState(f"VM {request_id} is not {from_state}")
            self._insert_log(request_id, "transition", from_state, to_state, trigger, now,
                             detail)

    def get_vm(self, request_id: str) -> VmRecord | None:
        """The VM of a done request, or None."""
        rows = list(self._query("SELECT * FROM requests WHERE id = ? AND vm_state IS NOT"
                                " NULL", [request_id]))
        return VmRecord.from_row(rows[0]) if rows else None

    def vms(self, *, states: Sequence[VmState], host: str | None = None) -> list[VmRecord]:
        """VMs in these states (on this host), oldest first."""
        sql = (f"SELECT * FROM requests WHERE vm_state IN ({','.join('?' * len(states))})"
               + (" AND host = ?" if host is not None else "") + " ORDER BY created_at, id")
        params = [str(s) for s in states] + ([host] if host is not None else [])
        return [VmRecord.from_row(r) for r in self._query(sql, params)]

    def prune_deleted(self, before: float, *, batch: int = 1000) -> int:
        """Forget deleted VMs' requests (and their logs) last moved before ``before``, a
        batch at a time; return how many. A claim a deleted VM kept (a volume its host
        could not wipe) stays: it still keeps that volume from another owner."""
        with self.atomic():
            ids = [row[0] for row in self.db.conn.execute(
                "SELECT id FROM requests WHERE vm_state = 'deleted' AND updated_at < ?"
                " LIMIT ?", (before, batch))]
            if ids:
                marks = ",".join("?" * len(ids))
                self.db.conn.execute(f"DELETE FROM state_log WHERE request_id IN ({marks})",
                                     ids)
                self.db.conn.execute(f"DELETE FROM requests WHERE id IN ({marks})", ids)
        return len(ids)


class RequestRecords:
    """The provisioning workflow's records: the engine's view of the ``requests`` table."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def live(self) -> list[RequestRecord]:
        """Requests in progress, oldest first."""
        return self._store.live_requests()

    def needing_cleanup(self) -> list[RequestRecord]:
        """Failed requests whose rollback has not finished."""
        return self._store.failed_needing_cleanup()

    def record_transition(self, record_id: str, source: State, dest: State, trigger: str,
                          detail: str | None, fields: Mapping[str, Any]) -> None:
        """Persist a request's state change, its fields and its log row together."""
        self._store.record_transition(record_id, source, dest, trigger, detail, fields)

    def append_log(self, record_id: str, kind: str, state: State, trigger: str,
                   detail: str | None = None) -> None:
        """A note or an event in the request's log."""
        self._store.append_log(record_id, kind, state, trigger, detail)


class VmRecords:
    """The VM lifecycle's records: the engine's view of the ``requests`` rows' VM state."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def live(self) -> list[VmRecord]:
        """VMs with an operation in progress, oldest first."""
        return self._store.vms(states=sorted(VM_TABLE.in_progress))

    def needing_cleanup(self) -> list[VmRecord]:
        """None: a deleted VM has given everything back on its way to deleted."""
        return []

    def record_transition(self, record_id: str, source: VmState, dest: VmState, trigger: str,
                          detail: str | None, fields: Mapping[str, Any]) -> None:
        """Persist a VM's state change with its log row."""
        self._store.record_vm_transition(record_id, source, dest, trigger, detail, fields)

    def append_log(self, record_id: str, kind: str, state: VmState, trigger: str,
                   detail: str | None = None) -> None:
        """A note or an event in the request's (and so the VM's) log."""
        self._store.append_log(record_id, kind, state, trigger, detail)
