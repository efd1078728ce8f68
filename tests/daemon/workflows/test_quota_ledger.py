"""The quota counted in memory agrees with the store, whenever it is first read."""

from __future__ import annotations

from daemon.store import QuotaUsage
from daemon.workflows.provisioning import QuotaLedger
from statemachines.provisioning import State


class Req:
    resource_pool = "rp"
    owner = "alice"
    cpus, memory_kib, storage_gb = 2, 1024, 10


def test_a_request_that_fails_before_the_pool_was_read_is_not_subtracted_twice() -> None:
    # After a restart, the first thing a pool sees may be a resumed request failing: the
    # store has already recorded it as failed when the ledger first reads it.
    stored = {"rp": QuotaUsage(3, 6, 3072, 30)}
    ledger = QuotaLedger(lambda pool, owner: stored[pool])
    ledger.on_transition(Req(), State.DEFINING, State.FAILED)
    assert ledger.usage("rp") == QuotaUsage(3, 6, 3072, 30)


def test_counted_in_when_authorized_and_out_when_failed() -> None:
    ledger = QuotaLedger(lambda pool, owner: QuotaUsage(0, 0, 0, 0))
    assert ledger.usage("rp") == QuotaUsage(0, 0, 0, 0)  # read before, as authorize does
    ledger.on_transition(Req(), State.REQUESTED, State.AUTHORIZED)
    assert ledger.usage("rp") == QuotaUsage(1, 2, 1024, 10)
    ledger.on_transition(Req(), State.AUTHORIZED, State.STORAGE_SEARCHING)
    assert ledger.usage("rp") == QuotaUsage(1, 2, 1024, 10)
    ledger.on_transition(Req(), State.STORAGE_SEARCHING, State.FAILED)
    assert ledger.usage("rp") == QuotaUsage(0, 0, 0, 0)


def test_each_users_share_is_counted_apart_from_the_pools() -> None:
    ledger = QuotaLedger(lambda pool, owner: QuotaUsage(0, 0, 0, 0))
    assert ledger.usage("rp", "alice") == ledger.usage("rp", "bob") == QuotaUsage(0, 0, 0, 0)
    assert ledger.usage("rp") == QuotaUsage(0, 0, 0, 0)
    ledger.on_transition(Req(), State.REQUESTED, State.AUTHORIZED)
    ledger.on_transition(Req(), State.REQUESTED, State.AUTHORIZED)
    assert ledger.usage("rp") == ledger.usage("rp", "alice") == QuotaUsage(2, 4, 2048, 20)
    assert ledger.usage("rp", "bob") == QuotaUsage(0, 0, 0, 0)


def test_a_host_holds_a_request_from_its_binding_until_it_fails_or_its_vm_is_deleted():
    from statemachines.vm import VmState

    class Bound(Req):
        host = "h1"

    ledger = QuotaLedger(lambda pool, owner: QuotaUsage(0, 0, 0, 0), lambda: {})
    assert ledger.host_usage() == {}
    ledger.on_transition(Bound(), State.REQUESTED, State.AUTHORIZED)  # no host yet
    ledger.on_transition(Bound(), State.AUTHORIZED, State.STORAGE_SEARCHING)
    assert ledger.host_usage() == {}  # the host is chosen as storage-searching ends
    ledger.on_transition(Bound(), State.STORAGE_SEARCHING, State.STORAGE_CREATING)
    ledger.on_transition(Bound(), State.STORAGE_SEARCHING, State.DEFINING)
    assert ledger.host_usage() == {"h1": (4, 2048)}
    ledger.on_transition(Bound(), State.STORAGE_CREATING, State.FAILED)
    ledger.on_vm_transition(Bound(), VmState.DELETING, VmState.DELETED)
    assert ledger.host_usage() == {"h1": (0, 0)}
