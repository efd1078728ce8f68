"""The VM after done, on private test-driver hosts: operations, events, storage, quota.

The test driver emits STARTED on create and STOPPED on shutdown and destroy, and cannot
wipe a volume (``../shared/LIBVIRT_NOTES.md``): what needs a real libvirtd is elsewhere.
"""

from __future__ import annotations

import asyncio

import pytest

from daemon.errors import HostUnreachable, InvalidState, QuotaExceeded, UnknownName
from daemon.virt.domain_xml import domain_uuid_for
from statemachines.vm import VmState
from tests.conftest import ALICE, BOB, Identity

CAROL = Identity("carol")  # CLOUD_ADMIN of the pool in the test configuration


async def settle(h, request_id: str) -> VmState:
    """The VM's state once its operation in progress (if any) has ended."""
    await h.service.wait_terminal(request_id, timeout=20)
    vm = h.store.get_vm(request_id)
    return vm.state


async def until(h, request_id: str, state: VmState) -> None:
    for _ in range(200):
        if h.store.get_vm(request_id).state == state:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"VM {request_id} is {h.store.get_vm(request_id).state}, "
                         f"not {state}")


def transitions(h, request_id: str) -> list[str]:
    return [e.to_state for e in h.store.get_log(request_id) if e.kind == "transition"]


async def test_a_done_request_has_a_stopped_vm_that_starts_stops_and_is_deleted(harness):
    h = harness
    done = await h.run(size="small")
    assert h.store.get_vm(done.id).state == VmState.STOPPED
    dom = h.conn.lookupByUUIDString(domain_uuid_for(done.id))

    await h.service.operate(ALICE, done.id, "start")
    assert await settle(h, done.id) == VmState.RUNNING and dom.isActive()
    await h.service.operate(ALICE, done.id, "stop")
    assert await settle(h, done.id) == VmState.STOPPED and not dom.isActive()
    await h.service.operate(ALICE, done.id, "start")
    await settle(h, done.id)
    await h.service.operate(ALICE, done.id, "stop", force=True)
    assert await settle(h, done.id) == VmState.STOPPED
    await h.service.operate(ALICE, done.id, "delete")
    assert await settle(h, done.id) == VmState.DELETED

    # One timeline, from the request to the VM's end.
    assert transitions(h, done.id) == [
        "requested", "authorized", "storage-searching", "defining", "done",
        "starting", "running", "stopping", "stopped", "starting", "running",
        "powering-off", "stopped", "deleting", "deleted"]
    with pytest.raises(Exception):
        h.conn.lookupByUUIDString(domain_uuid_for(done.id))


async def test_a_vm_operation_right_when_its_request_is_done_is_not_refused(harness):
    h = harness
    record = h.submit(size="small")
    while h.store.get_request(record.id).state != "done":  # as a client polling GET sees it
        await asyncio.sleep(0)
    await h.service.operate(ALICE, record.id, "start")  # the request's task may not be over
    assert await settle(h, record.id) == VmState.RUNNING


async def test_the_table_refuses_with_409_naming_the_state_and_delete_twice_is_one(harness):
    h = harness
    done = await h.run(size="small")
    with pytest.raises(InvalidState, match="is stopped: it cannot be stopped now"):
        await h.service.operate(ALICE, done.id, "stop")
    await h.service.operate(ALICE, done.id, "delete")
    again = await h.service.operate(ALICE, done.id, "delete")  # the running delete, no error
    assert again.id == done.id
    assert await settle(h, done.id) == VmState.DELETED
    with pytest.raises(InvalidState, match="is deleted: it cannot be started"):
        await h.service.operate(ALICE, done.id, "start")
    assert transitions(h, done.id).count("deleting") == 1


async def test_deleting_a_request_in_progress_points_to_cancel(harness):
    h = harness
    record = h.submit(size="small")  # still requested: no VM yet
    with pytest.raises(InvalidState, match="is requested: only the VM of a done request "
                                           "can be operated; a request in progress is "
                                           r"stopped by cancelling it \(provctl cancel\)"):
        await h.service.operate(ALICE, record.id, "delete")
    await h.service.wait_terminal(record.id, timeout=20)


async def test_only_the_owner_or_an_admin_of_the_pool_may_operate(harness):
    h = harness
    done = await h.run(size="small")
    with pytest.raises(UnknownName):
        await h.service.operate(BOB, done.id, "start")  # 404: existence is not leaked
    await h.service.operate(CAROL, done.id, "start")
    assert await settle(h, done.id) == VmState.RUNNING


async def test_a_deleted_vm_gives_back_its_quota_and_its_created_volume(make_harness):
    h = await make_harness(quota={"vms": 1}, sizes={
        "small": {"cpus": 2, "memory": 262144, "storage_size_in_gb": 15},
        "seven": {"cpus": 1, "memory": 1024, "storage_size_in_gb": 7}})
    first = await h.run(size="small")          # reuses free-15g.qcow2
    with pytest.raises(QuotaExceeded):         # the pool holds one VM
        h.submit(size="seven")
    await h.service.operate(ALICE, first.id, "delete")
    await settle(h, first.id)
    second = await h.run(size="seven")          # the quota came back: a new 7 GiB volume
    assert second.state == "done", second.reason

    # A volume the request created is deleted with its VM.
    created = second.volume_name
    assert second.volume_owned and created in h.volume_names(second.volume_pool)
    await h.service.operate(ALICE, second.id, "delete")
    await settle(h, second.id)
    assert created not in h.volume_names(second.volume_pool)
    assert h.store.claims_on("testhost") == {("pool-dir", "free-15g.qcow2"): first.id}


async def test_a_reused_volume_the_host_cannot_wipe_is_never_handed_on(harness):
    h = harness
    first = await h.run(size="small")
    assert (first.volume_name, first.volume_owned) == ("free-15g.qcow2", False)
    await h.service.operate(ALICE, first.id, "delete")
    await settle(h, first.id)
    note = h.store.get_log(first.id)[-1].detail
    assert "volume pool-dir/free-15g.qcow2 kept out of the free set" in note
    assert "free-15g.qcow2" in h.volume_names("pool-dir")  # not deleted either

    second = await h.run(size="small")  # the old volume is not offered again
    assert second.volume_name != "free-15g.qcow2" and second.volume_owned

    # The reconciler lists the claim; it is released once the volume is deleted by hand.
    _hosts, orphans = await h.service.reconcile(CAROL, apply=True)
    claims = [o for o in orphans if o.kind == "claim"]
    assert [(o.name, o.request_id, o.action) for o in claims] == [
        ("free-15g.qcow2", first.id, "kept")]
    assert "it cannot be wiped there (delete it by hand" in claims[0].reason
    h.conn.storagePoolLookupByName("pool-dir").storageVolLookupByName(
        "free-15g.qcow2").delete(0)  # virsh vol-delete
    _hosts, orphans = await h.service.reconcile(CAROL, apply=True)
    assert [(o.kind, o.name, o.action) for o in orphans] == [
        ("claim", "free-15g.qcow2", "released")]
    assert ("pool-dir", "free-15g.qcow2") not in h.store.claims_on("testhost")
    _hosts, orphans = await h.service.reconcile(CAROL, apply=False)
    assert orphans == []


async def test_a_reused_volume_deleted_by_hand_does_not_hold_up_the_delete(harness):
    h = harness
    done = await h.run(size="small")
    assert not done.volume_owned
    h.conn.storagePoolLookupByName(done.volume_pool).storageVolLookupByName(
        done.volume_name).delete(0)  # an administrator's virsh vol-delete
    await h.service.operate(ALICE, done.id, "delete")
    assert await settle(h, done.id) == VmState.DELETED  # it failed, every time
    assert "was already gone (its claim released)" in h.store.get_log(done.id)[-1].detail
    assert h.store.claims_on("testhost") == {}


async def test_keep_and_delete_policies_release_a_reused_volume_as_the_pool_says(
        make_harness):
    for policy, survives in (("keep", True), ("delete", False)):
        h = await make_harness(storage_pools=[
            "pool-iscsi", {"name": "pool-dir", "on_release": policy}, "pool-nfs"])
        done = await h.run(size="small")
        await h.service.operate(ALICE, done.id, "delete")
        await settle(h, done.id)
        assert ("free-15g.qcow2" in h.volume_names("pool-dir")) is survives
        assert h.store.claims_on("testhost") == {}


async def test_a_delete_that_fails_once_its_domain_is_gone_leaves_the_vm_vanished(
        make_harness):
    # The delete's own UNDEFINED event is left alone while the step runs; when the step
    # fails after the undefine (libvirt refuses to delete the volume), the VM, back to
    # stopped, is found vanished, its storage kept: the owner deletes it again.
    h = await make_harness(faults={"delete": "refused"}, sizes={
        "seven": {"cpus": 1, "memory": 1024, "storage_size_in_gb": 7}})
    done = await h.run(size="seven")  # a volume of its own
    await h.service.operate(ALICE, done.id, "delete")
    assert await settle(h, done.id) == VmState.VANISHED
    moves = [(e.to_state, e.trigger) for e in h.store.get_log(done.id)
             if e.kind == "transition"]
    assert moves[-3:] == [("deleting", "delete"), ("stopped", "fail"),
                          ("vanished", "vanished")], moves
    assert done.volume_name in h.volume_names(done.volume_pool)  # still there: delete again
    assert h.store.claims_on("testhost") != {}  # and still its own


async def test_what_libvirt_does_behind_provisiond_s_back_moves_the_vm(make_harness):
    h = await make_harness(sizes={"seven": {"cpus": 1, "memory": 1024,
                                            "storage_size_in_gb": 7}})
    done = await h.run(size="seven")  # a volume of its own
    dom = h.conn.lookupByUUIDString(domain_uuid_for(done.id))
    dom.create()                                   # virsh start
    await until(h, done.id, VmState.RUNNING)
    dom.suspend()                                  # virsh suspend
    await until(h, done.id, VmState.PAUSED)
    dom.resume()
    await until(h, done.id, VmState.RUNNING)
    dom.destroy()                                  # virsh destroy
    await until(h, done.id, VmState.STOPPED)
    xml = dom.XMLDesc(0)
    dom.undefine()                                 # virsh undefine: the storage is kept
    await until(h, done.id, VmState.VANISHED)
    log = h.store.get_log(done.id)
    assert [e.trigger for e in log if e.kind == "event"][-1] == "libvirt:UNDEFINED"
    assert done.volume_name in h.volume_names(done.volume_pool)
    h.conn.defineXML(xml)                          # ... and virsh define brings it back
    await until(h, done.id, VmState.STOPPED)
    h.conn.lookupByUUIDString(domain_uuid_for(done.id)).undefine()
    await until(h, done.id, VmState.VANISHED)
    await h.service.operate(ALICE, done.id, "delete")  # the owner gives it back
    assert await settle(h, done.id) == VmState.DELETED
    log = h.store.get_log(done.id)
    assert "already gone" in log[-1].detail and "deleted volume" in log[-1].detail
    assert done.volume_name not in h.volume_names(done.volume_pool)


async def test_a_renamed_domain_keeps_its_vm_and_its_disk(harness):
    h = harness
    done = await h.run(size="small")
    h.conn.lookupByUUIDString(domain_uuid_for(done.id)).rename("renamed-by-admin")
    for _ in range(200):  # UNDEFINED (renamed), then DEFINED under its new name
        if transitions(h, done.id)[-2:] == ["vanished", "stopped"]:
            break
        await asyncio.sleep(0.01)
    assert transitions(h, done.id)[-2:] == ["vanished", "stopped"], transitions(h, done.id)
    dom = h.conn.lookupByUUIDString(domain_uuid_for(done.id))
    assert dom.name() == "renamed-by-admin"  # neither destroyed nor undefined
    assert done.volume_name in h.volume_names(done.volume_pool)


async def test_an_event_right_after_an_operation_s_last_step_is_not_lost(harness):
    h = harness
    done = await h.run(size="small")
    durable = h.store.durable

    async def slow_durable() -> None:  # the start's task ends late: its final commit lags
        await asyncio.sleep(0.3)
        await durable()

    h.store.durable = slow_durable
    await h.service.operate(ALICE, done.id, "start")
    while h.store.get_vm(done.id).state != VmState.RUNNING:
        await asyncio.sleep(0.01)
    assert h.service.engine.is_live(done.id)  # recorded running, its task not over yet
    h.conn.lookupByUUIDString(domain_uuid_for(done.id)).destroy()  # the guest powers off
    await until(h, done.id, VmState.STOPPED)
    h.store.durable = durable


async def test_the_real_state_is_looked_up_after_a_reconnect(harness):
    h = harness
    done = await h.run(size="small")
    host = h.service.hosts["testhost"]
    dom = host._conn.lookupByUUIDString(domain_uuid_for(done.id))
    # Started while provisiond's events were lost (the event is swallowed here).
    h.service.events._inbox = asyncio.Queue()  # a gap: nothing consumed
    dom.create()
    await asyncio.sleep(0.05)
    assert h.store.get_vm(done.id).state == VmState.STOPPED
    await h.service.engine.resync("testhost")
    assert h.store.get_vm(done.id).state == VmState.RUNNING
    assert "looked at after a start, a reconnect or a failed operation" in h.store.get_log(done.id)[-1].detail


async def test_a_vm_is_unknown_while_its_host_is_away_and_looked_up_when_back(harness):
    h = harness
    done = await h.run(size="small")
    await h.service.operate(ALICE, done.id, "start")
    assert await settle(h, done.id) == VmState.RUNNING
    h.service.engine.host_lost("testhost", "test: connection reset")
    assert h.store.get_vm(done.id).state == VmState.UNKNOWN
    assert h.service.store.get_request(done.id).vm_state == "unknown"
    with pytest.raises(HostUnreachable, match="state is unknown until the host is back"):
        await h.service.operate(ALICE, done.id, "stop")
    await h.service.engine.resync("testhost")  # what the reconnect does
    assert h.store.get_vm(done.id).state == VmState.RUNNING
    assert transitions(h, done.id)[-2:] == ["unknown", "running"]
    assert "test: connection reset" in [e for e in h.store.get_log(done.id)
                                        if e.to_state == "unknown"][0].detail


async def test_deleted_vms_are_pruned_after_the_retention_but_their_kept_claims_stay(
        make_harness):
    h = await make_harness(daemon={"retention_days": 0.000001})  # 0.09 s
    deleted = await h.run(size="small")              # reuses free-15g: not wipeable here
    kept = await h.run(size="small")                 # stays: its VM is not deleted
    await h.service.operate(ALICE, deleted.id, "delete")
    await settle(h, deleted.id)
    await asyncio.sleep(0.2)

    assert await h.service.prune() == 1
    assert h.store.get_request(deleted.id) is None and h.store.get_log(deleted.id) == []
    assert h.store.get_request(kept.id) is not None
    # The volume its host could not wipe is still kept from other owners.
    assert ("pool-dir", "free-15g.qcow2") in h.store.claims_on("testhost")
    assert await h.service.prune() == 0


def test_a_crash_is_told_from_a_stop_by_the_event_s_detail() -> None:
    from daemon.virt.connection import DomainEvent
    from daemon.workflows.vm import trigger_of
    from statemachines.vm import VmTrigger

    def event(name: str, detail: int) -> DomainEvent:
        return DomainEvent("h", "u", "vm", name, detail, 0.0)

    assert trigger_of(event("STOPPED", 0)) == VmTrigger.STOPPED   # shut down
    assert trigger_of(event("STOPPED", 1)) == VmTrigger.STOPPED   # destroyed
    assert trigger_of(event("STOPPED", 2)) == VmTrigger.CRASHED   # the guest crashed
    assert trigger_of(event("STOPPED", 5)) == VmTrigger.CRASHED   # QEMU failed
    assert trigger_of(event("SUSPENDED", 0)) == VmTrigger.PAUSED
    assert trigger_of(event("DEFINED", 0)) is None  # a vanished VM's host is looked at
    assert trigger_of(event("SHUTDOWN", 0)) is None


async def test_a_running_vm_s_addresses_are_what_libvirt_answers(make_harness):
    # A size with a network: the VM gets a NIC on the node XML's 'default' network, for
    # which the test driver answers a fixed lease.
    h = await make_harness(sizes={"net": {"cpus": 1, "memory": 131072,
                                          "storage_size_in_gb": 15, "network": "default"}})
    done = await h.run(size="net")
    assert await h.service.addresses(h.store.get_request(done.id)) == []  # not running
    await h.service.operate(ALICE, done.id, "start")
    await settle(h, done.id)
    [address] = await h.service.addresses(h.store.get_request(done.id))
    assert address["source"] == "lease" and address["address"].startswith("192.168.122.")
    assert address["prefix"] == 24 and address["mac"]


async def test_a_forced_stop_while_the_guest_ignores_its_shutdown_forces_it_off(
        make_harness):
    # As virsh shutdown, then virsh destroy: the stop stops waiting for the guest.
    import time

    raw: list = []

    def slow_destroy(*_args):
        time.sleep(0.5)
        return raw[0].lookupByUUIDString(raw[1]).destroy()

    h = await make_harness(faults={"shutdown": lambda *_a: 0,  # deaf to ACPI
                                   "destroy": slow_destroy},
                           daemon={"stop_timeout": 600})
    done = await h.run(size="small")
    raw[:] = [h.conn, domain_uuid_for(done.id)]
    await h.service.operate(ALICE, done.id, "start")
    assert await settle(h, done.id) == VmState.RUNNING
    await h.service.operate(ALICE, done.id, "stop")
    await until(h, done.id, VmState.STOPPING)
    await h.service.operate(CAROL, done.id, "stop", force=True)
    await h.service.operate(CAROL, done.id, "stop", force=True)  # again: the same one
    await until(h, done.id, VmState.POWERING_OFF)  # its destroy takes 0.5 s
    await h.service.operate(ALICE, done.id, "stop", force=True)  # and again: no 409
    assert await settle(h, done.id) == VmState.STOPPED  # not after 600 s
    assert h.service.engine.hurried_by(done.id) is None  # nothing left for a later stop
    assert not h.conn.lookupByUUIDString(domain_uuid_for(done.id)).isActive()
    moves = [(e.to_state, e.trigger) for e in h.store.get_log(done.id)
             if e.kind == "transition"]
    assert moves[-3:] == [("stopping", "stop"), ("powering-off", "force_off"),
                          ("stopped", "stopped")], moves
    forced = [e.detail for e in h.store.get_log(done.id)
              if e.kind == "transition" and e.to_state == "powering-off"]
    assert forced == [f"stop --force by {CAROL.user} while domain "
                      f"{done.name} was shutting down"]


async def test_a_guest_that_dies_as_it_starts_is_recorded_stopped(make_harness):
    # STARTED ends the start; the STOPPED right behind it is not the start's own event,
    # and moves the VM once the start is over (it was dropped: running, and 409 on start).
    raw: list = []

    def dying_create(*_args):
        dom = raw[0].lookupByUUIDString(raw[1])
        dom.create()
        dom.destroy()  # QEMU dies at once
        return 0

    faults = {"create": dying_create}
    h = await make_harness(faults=faults)
    done = await h.run(size="small")
    raw[:] = [h.conn, domain_uuid_for(done.id)]
    await h.service.operate(ALICE, done.id, "start")
    await settle(h, done.id)
    await until(h, done.id, VmState.STOPPED)
    assert transitions(h, done.id)[-3:] == ["starting", "running", "stopped"]
    del faults["create"]
    await h.service.operate(ALICE, done.id, "start")  # and it can be started again
    assert await settle(h, done.id) == VmState.RUNNING


async def test_a_look_at_the_host_is_no_older_than_an_event_it_crosses(harness):
    # The power states are read, then the guest powers off and its STOPPED event moves
    # the VM while the answer is on its way: the older look must not move it back.
    h = harness
    done = await h.run(size="small")
    await h.service.operate(ALICE, done.id, "start")
    assert await settle(h, done.id) == VmState.RUNNING
    host = h.service.hosts["testhost"]
    real = host.power_states

    async def answered_late():
        states = await real()  # running
        h.conn.lookupByUUIDString(domain_uuid_for(done.id)).destroy()
        await until(h, done.id, VmState.STOPPED)  # the event, consumed meanwhile
        return states

    host.power_states = answered_late
    try:
        await h.service.engine.resync("testhost")
    finally:
        host.power_states = real
    assert h.store.get_vm(done.id).state == VmState.STOPPED
    assert transitions(h, done.id)[-2:] == ["running", "stopped"]


async def test_a_look_libvirt_refuses_is_tried_again(harness, monkeypatch):
    # One refused look must not leave the VMs unknown (every operation refused with 503)
    # while their host is connected.
    from daemon.errors import VirtTimeout
    from daemon.workflows import vm as vm_workflow

    monkeypatch.setattr(vm_workflow, "RESYNC_FIRST_RETRY", 0.05)
    h = harness
    done = await h.run(size="small")
    host = h.service.hosts["testhost"]
    real = host.power_states
    refusals = [VirtTimeout("cannot list the domains: libvirt did not answer within 120 s")]

    async def refused_once():
        if refusals:
            raise refusals.pop()
        return await real()

    h.service.engine.host_lost("testhost", "test: connection reset")
    assert h.store.get_vm(done.id).state == VmState.UNKNOWN
    host.power_states = refused_once
    try:
        await h.service.engine.host_back("testhost", 1.0)
        await until(h, done.id, VmState.STOPPED)
    finally:
        host.power_states = real
    assert refusals == []
    await h.service.operate(ALICE, done.id, "start")
    assert await settle(h, done.id) == VmState.RUNNING


async def test_after_a_failed_operation_the_vm_is_where_its_domain_is(make_harness):
    # A start whose STARTED event is lost (a reconnect's gap) times out and its fail edge
    # says stopped; the domain runs: it is looked at once the operation has failed.
    h = await make_harness(daemon={"define_event_timeout": 0.5})
    done = await h.run(size="small")
    enqueue = h.service.events.enqueue

    def losing_started(event):
        if getattr(event, "event", None) != "STARTED":
            enqueue(event)

    h.service.hosts["testhost"]._on_event = losing_started  # noqa: SLF001
    await h.service.operate(ALICE, done.id, "start")
    await until(h, done.id, VmState.RUNNING)
    moves = [(e.to_state, e.trigger, e.detail) for e in h.store.get_log(done.id)
             if e.kind == "transition"][-2:]
    assert [m[:2] for m in moves] == [("stopped", "fail"), ("running", "started")], moves
    assert "STARTED event did not arrive within 0.5 s" in moves[0][2]
    assert "the domain is running" in moves[1][2]


async def test_reconcile_wipes_a_kept_volume_once_its_host_can(make_harness):
    faults: dict = {"unused": "x"}  # the connection wrapped, faults added later
    h = await make_harness(faults=faults)
    done = await h.run(size="small")  # the reused free-15g.qcow2
    await h.service.operate(ALICE, done.id, "delete")
    await settle(h, done.id)
    assert ("pool-dir", "free-15g.qcow2") in h.store.claims_on("testhost")  # not wiped
    faults["wipe"] = lambda *_a: 0  # the host can wipe now (its driver upgraded, say)
    _hosts, orphans = await h.service.reconcile(CAROL, apply=True)
    assert [(o.kind, o.name, o.action) for o in orphans] == [
        ("claim", "free-15g.qcow2", "released")]
    assert h.store.claims_on("testhost") == {}
    again = await h.run(size="small")  # and it is offered again
    assert again.volume_name == "free-15g.qcow2"
