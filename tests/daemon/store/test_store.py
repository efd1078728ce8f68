"""The store: migrations, atomic transitions with their log, volume claims, quota usage."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Iterator

import pytest

from daemon.errors import AlreadyClaimed, StaleState
from daemon.store import MIGRATIONS, QuotaUsage, Reservation, Store
from statemachines import HOLDS_QUOTA, State

GiB = 1024**3


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state" / "provisiond.db", clock=Clock())
    s.migrate()
    yield s
    s.close()


def request(request_id: str, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "id": request_id, "name": f"vm-{request_id}", "owner": "alice",
        "owner_groups": ["staff", "admins"], "template": "ipxe", "size": "small",
        "resource_pool": "rp", "hardware_pool": "hw", "cpus": 2, "memory_kib": 262144,
        "storage_gb": 15,
    }
    values.update(overrides)
    return values


# The triggers that lead from requested to each state, along the table.
PATHS: dict[State, list[tuple[State, State, str]]] = {
    State.REQUESTED: [],
    State.AUTHORIZED: [(State.REQUESTED, State.AUTHORIZED, "authorize")],
}
PATHS[State.STORAGE_SEARCHING] = PATHS[State.AUTHORIZED] + [
    (State.AUTHORIZED, State.STORAGE_SEARCHING, "search_storage")]
PATHS[State.STORAGE_CREATING] = PATHS[State.STORAGE_SEARCHING] + [
    (State.STORAGE_SEARCHING, State.STORAGE_CREATING, "create_storage")]
PATHS[State.SEEDING] = PATHS[State.STORAGE_CREATING] + [
    (State.STORAGE_CREATING, State.SEEDING, "seed")]
PATHS[State.DEFINING] = PATHS[State.STORAGE_SEARCHING] + [
    (State.STORAGE_SEARCHING, State.DEFINING, "reuse_volume")]
PATHS[State.DONE] = PATHS[State.DEFINING] + [(State.DEFINING, State.DONE, "finish")]
PATHS[State.FAILED] = PATHS[State.AUTHORIZED] + [(State.AUTHORIZED, State.FAILED, "fail")]


def put_in_state(store: Store, request_id: str, state: State, **overrides: Any) -> None:
    store.insert_request(request(request_id, **overrides))
    for source, dest, trigger in PATHS[state]:
        store.record_transition(request_id, source, dest, trigger)


def log_count(store: Store) -> int:
    return int(store.db.execute("SELECT COUNT(*) FROM state_log").fetchone()[0])


# --------------------------------------------------------------------------- lifecycle


def test_migrations_apply_at_start(tmp_path: Path) -> None:
    s = Store(tmp_path / "new.db")
    try:
        assert s.schema_version() == 0
        assert s.migrate() == len(MIGRATIONS)
        assert s.schema_version() == len(MIGRATIONS)
        assert {"requests", "state_log", "volume_claims", "pool_reservations"} <= set(
            s.db.table_names())
    finally:
        s.close()


def test_migrating_again_is_harmless_and_keeps_the_data(tmp_path: Path) -> None:
    path = tmp_path / "db" / "provisiond.db"
    s = Store(path)
    s.migrate()
    s.insert_request(request("r1"))
    assert s.migrate() == len(MIGRATIONS)
    s.close()

    reopened = Store(path)
    try:
        assert reopened.migrate() == len(MIGRATIONS)
        record = reopened.get_request("r1")
        assert record is not None and record.state == State.REQUESTED
    finally:
        reopened.close()


def test_a_database_of_the_first_schema_gets_its_done_vms_stopped(tmp_path: Path) -> None:
    # A provisiond from before the VM lifecycle left done requests: their VMs start out
    # stopped (the look at start-up then finds those that run).
    path = tmp_path / "old.db"
    s = Store(path)
    with s.db.atomic():
        MIGRATIONS[0](s.db)
        s.db.execute("PRAGMA user_version=1")
    s.insert_request(request("old-done"))
    for source, dest in ((State.REQUESTED, State.AUTHORIZED),
                         (State.AUTHORIZED, State.STORAGE_SEARCHING),
                         (State.STORAGE_SEARCHING, State.DEFINING),
                         (State.DEFINING, State.DONE)):
        s.record_transition("old-done", source, dest, "t")
    s.insert_request(request("old-live"))
    assert s.migrate() == len(MIGRATIONS)
    assert s.get_vm("old-done").state == "stopped"
    assert s.get_vm("old-live") is None
    s.close()


def test_wal_mode_and_full_sync_are_on(store: Store) -> None:
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert store.db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_integrity_check_is_ok(store: Store) -> None:
    put_in_state(store, "r1", State.DONE)
    assert store.integrity_check() == "ok"


def test_a_committed_transition_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "provisiond.db"
    s = Store(path)
    s.migrate()
    put_in_state(s, "r1", State.STORAGE_SEARCHING)
    s.close()

    reopened = Store(path)
    try:
        record = reopened.get_request("r1")
        assert record is not None and record.state == State.STORAGE_SEARCHING
        assert [e.to_state for e in reopened.get_log("r1")] == [
            "requested", "authorized", "storage-searching"]
    finally:
        reopened.close()


# --------------------------------------------------------------------------- requests


def test_insert_request_stores_it_with_its_first_log_row(store: Store) -> None:
    record = store.insert_request(request("r1"), detail="alice asked for ipxe / small")

    assert record.state == State.REQUESTED
    assert record.owner == "alice" and record.owner_groups == ["admins", "staff"]
    assert (record.cpus, record.memory_kib, record.storage_gb) == (2, 262144, 15)
    assert not record.volume_owned and not record.cleaned_up
    assert store.get_request("r1") == record
    [entry] = store.get_log("r1")
    assert (entry.kind, entry.from_state, entry.to_state, entry.trigger, entry.detail) == (
        "transition", None, "requested", "submit", "alice asked for ipxe / small")
    assert entry.at == record.created_at


def test_insert_request_stores_nothing_when_its_log_row_fails(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_log(*_args: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_insert_log", broken_log)
    with pytest.raises(sqlite3.OperationalError):
        store.insert_request(request("r1"))
    monkeypatch.undo()

    assert store.get_request("r1") is None
    assert log_count(store) == 0


def test_a_request_id_is_stored_once(store: Store) -> None:
    store.insert_request(request("r1"))
    with pytest.raises(sqlite3.IntegrityError):
        store.insert_request(request("r1", name="other"))
    assert store.get_request("r1").name == "vm-r1"  # type: ignore[union-attr]
    assert log_count(store) == 1


def test_record_transition_writes_state_fields_and_log_row(store: Store) -> None:
    store.insert_request(request("r1"))
    put = [(State.REQUESTED, State.AUTHORIZED, "authorize"),
           (State.AUTHORIZED, State.STORAGE_SEARCHING, "search_storage")]
    for source, dest, trigger in put:
        store.record_transition("r1", source, dest, trigger)
    store.record_transition("r1", State.STORAGE_SEARCHING, State.DEFINING, "reuse_volume",
                            "claimed pool-dir/free-15g.qcow2",
                            updates={"host": "testhost", "volume_pool": "pool-dir",
                                     "volume_name": "free-15g.qcow2"})

    record = store.get_request("r1")
    assert record is not None
    assert record.state == State.DEFINING
    assert (record.host, record.volume_pool, record.volume_name) == (
        "testhost", "pool-dir", "free-15g.qcow2")
    assert record.updated_at > record.created_at
    last = store.get_log("r1")[-1]
    assert (last.from_state, last.to_state, last.trigger, last.detail) == (
        "storage-searching", "defining", "reuse_volume", "claimed pool-dir/free-15g.qcow2")
    assert last.at == record.updated_at


def test_a_stale_transition_changes_nothing(store: Store) -> None:
    put_in_state(store, "r1", State.AUTHORIZED)
    before_record = store.get_request("r1")
    before_log = store.get_log("r1")

    with pytest.raises(StaleState):
        # The caller thinks r1 is still requested: it is not.
        store.record_transition("r1", State.REQUESTED, State.FAILED, "fail", "too late",
                                updates={"reason": "too late"})

    assert store.get_request("r1") == before_record
    assert store.get_log("r1") == before_log


def test_a_transition_of_an_unknown_request_is_stale(store: Store) -> None:
    with pytest.raises(StaleState):
        store.record_transition("nope", State.REQUESTED, State.AUTHORIZED, "authorize")
    assert log_count(store) == 0


def test_state_and_log_row_are_one_transaction(store: Store,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    put_in_state(store, "r1", State.AUTHORIZED)

    def broken_log(*_args: Any) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(store, "_insert_log", broken_log)
    with pytest.raises(sqlite3.OperationalError):
        store.record_transition("r1", State.AUTHORIZED, State.STORAGE_SEARCHING,
                                "search_storage", updates={"host": "testhost"})
    monkeypatch.undo()

    record = store.get_request("r1")
    assert record is not None
    assert record.state == State.AUTHORIZED and record.host is None
    assert [e.to_state for e in store.get_log("r1")] == ["requested", "authorized"]


def test_record_transition_refuses_fields_it_may_not_change(store: Store) -> None:
    store.insert_request(request("r1"))
    with pytest.raises(ValueError, match="owner"):
        store.record_transition("r1", State.REQUESTED, State.AUTHORIZED, "authorize",
                                updates={"owner": "mallory"})
    record = store.get_request("r1")
    assert record is not None and record.state == State.REQUESTED and record.owner == "alice"
    assert log_count(store) == 1


def test_live_requests_are_the_ones_in_progress(store: Store) -> None:
    for i, state in enumerate(State):
        put_in_state(store, f"r{i}", state)
    live = {r.state for r in store.live_requests()}
    assert live == set(State) - {State.DONE, State.FAILED}


# --------------------------------------------------------------------------- claims


def test_a_volume_claim_is_unique(store: Store) -> None:
    store.claim_volume("testhost", "pool-dir", "free-15g.qcow2", "r1")
    store.claim_volume("testhost", "pool-dir", "free-15g.qcow2", "r1")  # again: fine

    with pytest.raises(AlreadyClaimed, match="r1"):
        store.claim_volume("testhost", "pool-dir", "free-15g.qcow2", "r2")
    assert store.claims_on("testhost") == {("pool-dir", "free-15g.qcow2"): "r1"}


def test_claims_are_per_host_and_pool(store: Store) -> None:
    store.claim_volume("host-a", "pool-dir", "v1", "r1")
    store.claim_volume("host-b", "pool-dir", "v1", "r2")
    store.claim_volume("host-a", "pool-nfs", "v1", "r3")
    assert store.claims_on("host-a") == {("pool-dir", "v1"): "r1", ("pool-nfs", "v1"): "r3"}
    assert store.claims_on("host-b") == {("pool-dir", "v1"): "r2"}


def test_a_refused_claim_inside_a_transaction_keeps_the_rest(store: Store) -> None:
    store.claim_volume("testhost", "pool-dir", "v1", "r1")
    with store.atomic():
        store.claim_volume("testhost", "pool-dir", "v2", "r2")
        with pytest.raises(AlreadyClaimed):
            store.claim_volume("testhost", "pool-dir", "v1", "r2")
    assert store.claims_on("testhost") == {("pool-dir", "v1"): "r1", ("pool-dir", "v2"): "r2"}


def test_release_storage_drops_claims_and_reservations(store: Store) -> None:
    store.claim_volume("testhost", "pool-dir", "free-15g.qcow2", "r1")
    store.claim_volume("testhost", "pool-dir", "other.qcow2", "r2")
    store.reserve_space(Reservation("r1", "testhost", "pool-lvm", "provisiond-r1", 15 * GiB))
    store.reserve_space(Reservation("r2", "testhost", "pool-lvm", "provisiond-r2", 10 * GiB))

    store.release_storage("r1")

    assert store.claims_on("testhost") == {("pool-dir", "other.qcow2"): "r2"}
    assert store.reservations_on("testhost") == [
        Reservation("r2", "testhost", "pool-lvm", "provisiond-r2", 10 * GiB)]
    # The released volume can be claimed by another request now.
    store.claim_volume("testhost", "pool-dir", "free-15g.qcow2", "r3")
    assert store.claims_on("testhost")[("pool-dir", "free-15g.qcow2")] == "r3"


def test_a_request_holds_one_reservation(store: Store) -> None:
    store.reserve_space(Reservation("r1", "testhost", "pool-dir", "a", 15 * GiB))
    store.reserve_space(Reservation("r1", "testhost", "pool-nfs", "b", 10 * GiB))
    assert store.reservations_on("testhost") == [
        Reservation("r1", "testhost", "pool-nfs", "b", 10 * GiB)]


def test_a_reservation_rolled_back_holds_no_space(store: Store) -> None:
    store.reserve_space(Reservation("r1", "testhost", "pool-dir", "a", 15 * GiB))
    with pytest.raises(RuntimeError), store.atomic():
        store.reserve_space(Reservation("r2", "testhost", "pool-dir", "b", 10 * GiB))
        store.drop_reservation("r1")
        raise RuntimeError("the transition after it failed")
    assert store.reservations_on("testhost") == [
        Reservation("r1", "testhost", "pool-dir", "a", 15 * GiB)]
    # As a fresh start of the daemon reads them from the database.
    assert Store(store.path).reservations_on("testhost") == store.reservations_on("testhost")


# --------------------------------------------------------------------------- quota


def test_quota_usage_counts_only_quota_holding_states(store: Store) -> None:
    sizes = {State.REQUESTED: (1, 100, 1), State.AUTHORIZED: (2, 200, 10),
             State.STORAGE_SEARCHING: (3, 300, 20), State.STORAGE_CREATING: (4, 400, 30),
             State.DEFINING: (5, 500, 40), State.DONE: (6, 600, 50),
             State.FAILED: (7, 700, 60), State.SEEDING: (8, 800, 70)}
    for state, (cpus, memory, storage) in sizes.items():
        put_in_state(store, state.value, state, cpus=cpus, memory_kib=memory,
                     storage_gb=storage)
    put_in_state(store, "elsewhere", State.DONE, resource_pool="rp2", cpus=64)

    holding = [sizes[s] for s in HOLDS_QUOTA]
    assert store.quota_usage("rp") == QuotaUsage(
        vms=len(holding), cpus=sum(h[0] for h in holding), memory=sum(h[1] for h in holding),
        storage_gb=sum(h[2] for h in holding))
    assert store.quota_usage("rp") == QuotaUsage(vms=6, cpus=28, memory=2800, storage_gb=220)
    # A request can be left out (the one being checked).
    assert store.quota_usage("rp", excluding="done") == QuotaUsage(5, 22, 2200, 170)
    assert store.quota_usage("rp2") == QuotaUsage(1, 64, 262144, 15)


def test_quota_usage_of_an_empty_pool_is_zero(store: Store) -> None:
    put_in_state(store, "r1", State.REQUESTED)
    put_in_state(store, "r2", State.FAILED)
    assert store.quota_usage("rp") == QuotaUsage(0, 0, 0, 0)


def test_a_database_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "newer.db"
    store = Store(path)
    store.migrate()
    store.db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    store.close()
    with pytest.raises(RuntimeError, match="newer than this provisiond knows"):
        Store(path).migrate()


async def test_group_commit_makes_writes_durable_together(tmp_path: Path) -> None:
    store = Store(tmp_path / "group.db")
    store.migrate()
    store.enable_group_commit()
    other = sqlite3.connect(tmp_path / "group.db")  # what is on disk, as a reader sees it
    commits = []
    store.db.conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)
    try:
        for i in range(3):
            store.insert_request({"id": f"r{i}", "name": f"vm{i}", "owner": "alice",
                                  "template": "ipxe", "size": "small", "resource_pool": "rp",
                                  "hardware_pool": "hw", "cpus": 1, "memory_kib": 1024,
                                  "storage_gb": 1})
        assert other.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 0
        await store.durable()
        assert other.execute("SELECT COUNT(*) FROM requests").fetchone()[0] == 3
        assert len(commits) == 1  # one commit for the three requests and their log rows
    finally:
        other.close()
        store.close()
