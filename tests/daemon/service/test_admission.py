"""Admission at submit: grants, the pool's quota and each user's share of it, and the cap
on what one user may have in progress; the authorize step still checks (races)."""

from __future__ import annotations

import dataclasses

import pytest

from daemon.auth import Identity
from daemon.config.model import Quota
from daemon.errors import InUse, PermissionDenied, QuotaExceeded, TooManyInProgress
from daemon.service import ProvisioningRequest
from statemachines.provisioning import State
from tests.conftest import ALICE, BOB

DAVE = Identity("dave", frozenset({"admins"}))  # CLOUD_CREATE through his group


def count(h) -> int:
    return len(h.store.list_requests(limit=1000))


async def test_one_users_share_of_the_pool_is_capped_and_the_others_still_create(make_harness):
    h = await make_harness(quota={"vms": 10, "per_user": {"vms": 2, "cpus": 100}})
    for _ in range(2):
        assert (await h.run(size="small")).state == State.DONE
    before = count(h)
    with pytest.raises(QuotaExceeded) as refused:
        h.submit(size="small")
    assert refused.value.http_status == 409
    assert refused.value.message == ("alice's quota in resource pool rp exceeded: "
                                     "vms: 2 used + 1 asked > 2")
    assert count(h) == before  # refused before anything was stored
    assert (await h.run(size="small", who=DAVE)).state == State.DONE


async def test_the_pools_quota_refuses_at_submit_with_the_figures(make_harness):
    h = await make_harness(quota={"vms": 5, "cpus": 3})
    assert (await h.run(size="small")).state == State.DONE  # 2 cpus
    with pytest.raises(QuotaExceeded, match=r"^the quota of resource pool rp exceeded: "
                                            r"cpus: 2 used \+ 2 asked > 3$"):
        h.submit(size="small")
    with pytest.raises(QuotaExceeded):  # the dry run says what a create would get
        await h.service.explain(ALICE, ProvisioningRequest("ipxe", "small", "rp"))


async def test_requests_not_yet_authorized_count_at_submit(make_harness):
    h = await make_harness(quota={"vms": 1})
    h.submit(size="tiny")  # not authorized yet: its task has not run
    with pytest.raises(QuotaExceeded, match="vms: 1 used"):
        h.submit(size="tiny")


async def test_authorize_checks_again_when_the_quota_shrank_meanwhile(make_harness):
    h = await make_harness(quota={"vms": 2})
    first, second = h.submit(size="tiny"), h.submit(size="tiny")
    config = h.service.config
    shrunk = dataclasses.replace(config.resource_pools["rp"], quota=Quota(vms=1))
    h.service.config = dataclasses.replace(config, resource_pools={"rp": shrunk})
    ends = [await h.service.wait_terminal(r.id, timeout=20) for r in (first, second)]
    assert [e.state for e in ends] == [State.DONE, State.FAILED]
    assert ends[1].reason == ("the quota of resource pool rp exceeded: "
                              "vms: 1 used + 1 asked > 1")


async def test_no_grant_anywhere_is_403_not_a_missing_pool(harness):
    with pytest.raises(PermissionDenied, match="bob holds CLOUD_CREATE on no resource pool"):
        harness.service.submit(BOB, ProvisioningRequest("ipxe", "small"))


async def test_one_user_has_at_most_the_cap_in_progress(make_harness):
    h = await make_harness(daemon={"max_in_progress_per_user": 2})
    vm = await h.run(size="tiny")
    h.submit(size="tiny"), h.submit(size="tiny")  # both in progress now
    with pytest.raises(TooManyInProgress) as refused:
        h.submit(size="tiny")
    assert refused.value.http_status == 429 and refused.value.retry_after > 0
    assert "alice has 2 requests and VM operations in progress" in refused.value.message
    with pytest.raises(TooManyInProgress):  # a VM operation is work in progress too
        await h.service.operate(ALICE, vm.id, "start")
    h.submit(size="tiny", who=DAVE)  # another user is not held back


async def test_a_name_taken_by_a_domain_on_the_host_is_refused_before_anything_is_made(
        harness):
    h = harness
    before = count(h)
    with pytest.raises(InUse, match="the name web01 is taken on host testhost") as refused:
        await h.service.create(ALICE, ProvisioningRequest("ipxe", "small", "rp", "web01"))
    assert refused.value.http_status == 409 and refused.value.field == "name"
    assert count(h) == before


async def test_another_users_vm_name_is_refused_without_saying_whose(harness):
    h = harness
    assert (await h.run(size="tiny", name="web9")).state == State.DONE
    with pytest.raises(InUse) as theirs:
        await h.service.create(DAVE, ProvisioningRequest("ipxe", "tiny", "rp", "web9"))
    assert theirs.value.message == "the name web9 is taken in hardware pool hw; choose another"
    with pytest.raises(InUse, match="you already have a VM named web9"):
        h.submit(size="tiny", name="web9")


async def test_a_name_taken_between_submit_and_define_fails_without_the_other_uuid(harness):
    h = harness
    record = h.submit(size="tiny", name="late")  # its steps have not run yet
    h.conn.defineXML("<domain type='test'><name>late</name><memory>1024</memory>"
                     "<os><type>hvm</type></os></domain>")  # someone else's, meanwhile
    end = await h.service.wait_terminal(record.id, timeout=20)
    assert end.state == State.FAILED
    assert end.reason == "the name late is taken on host testhost; ask again with another name"
