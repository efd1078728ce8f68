"""What the workflows' steps see of the service: the narrow contexts the provisioning
steps (``ProvisioningContext``) and the VM lifecycle's (``VmContext``) are given."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from daemon.config import Config
from daemon.engine import Outcome
from daemon.errors import RequestCancelled
from daemon.placement.shared import StorageMap
from daemon.store import RequestRecord, VmRecord
from daemon.virt.connection import DomainEvent, HostConnection
from statemachines.vm import VmTrigger

if TYPE_CHECKING:
    from daemon.service.service import Service


class StepContext:
    """What the provisioning steps see of the service (``ProvisioningContext``)."""

    def __init__(self, service: Service) -> None:
        self._service = service
        self.store = service.store
        self.metrics = service.metrics

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self._service.config

    def host(self, name: str | None) -> HostConnection:
        """A configured host's connection."""
        return self._service.hosts.connection(name)

    def host_reachable(self, name: str) -> bool:
        """Whether the host's connection works now."""
        return self._service.hosts.reachable(name)

    def reachable_hosts(self, names: list[str]) -> dict[str, HostConnection]:
        """The connections of those of these hosts that are reachable now."""
        return self._service.hosts.reachable_connections(names)

    @property
    def storage(self) -> StorageMap:
        """Which hosts' pools are the same storage; claims held on all of them."""
        return self._service.storage

    async def wait_for_any_host(self, names: list[str], timeout: float,
                                request_id: str) -> str | None:
        """Wait until one of these hosts is reachable: its name; None after ``timeout``;
        RequestCancelled as soon as the request is cancelled."""
        hosts = self._service.hosts

        async def up(name: str) -> str | None:
            return name if await hosts.wait_up(name, timeout) else None

        async def first_up() -> str | None:
            waits = [asyncio.ensure_future(up(name)) for name in names]
            try:
                for first in asyncio.as_completed(waits):
                    name = await first
                    if name is not None:
                        return name
                return None
            finally:
                for wait in waits:
                    wait.cancel()

        return await self._service.engine.unless_cancelled(request_id, first_up())

    def repeating(self, request_id: str) -> bool:
        """Whether the request's current step ran before."""
        return self._service.engine.repeating(request_id)

    def quota_usage(self, resource_pool: str, owner: str | None = None) -> Any:
        """What the pool's quota-holding requests add up to (with ``owner``: that user's)."""
        return self._service._ledger.usage(resource_pool, owner)

    def host_usage(self) -> dict[str, tuple[int, int]]:
        """(vCPUs, memory in KiB) by host of what provisiond placed there."""
        return self._service._ledger.host_usage()

    def live_request(self, request_id: str) -> RequestRecord | None:
        """The in-memory record of a request being provisioned (not of its VM's operation)."""
        record = self._service.engine.live_record(request_id)
        return record if isinstance(record, RequestRecord) else None

    def expect_domain_event(self, host: str, uuid: str, event: str,
                            request_id: str) -> asyncio.Future[DomainEvent]:
        """A future resolved by the domain's next ``event``; RequestCancelled if the
        request was cancelled before it got this far (it must not act any more)."""
        by = self._service.engine.cancelled_by(request_id)
        if by is not None:
            raise RequestCancelled(f"cancelled by {by}")
        return self._service.events.expect(host, uuid, event, request_id)

    def forget_domain_event(self, host: str, uuid: str, event: str) -> None:
        """Drop a waiter."""
        self._service.events.forget(host, uuid, event)


class VmStepContext:
    """What the VM lifecycle's steps see of the service (``VmContext``)."""

    def __init__(self, service: Service) -> None:
        self._service = service
        self.store = service.store

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self._service.config

    @property
    def storage(self) -> StorageMap:
        """Which hosts' pools are the same storage; claims held on all of them."""
        return self._service.storage

    def host(self, name: str | None) -> HostConnection:
        """A configured host's connection."""
        return self._service.hosts.connection(name)

    def expect_domain_event(self, host: str, uuid: str, event: str,
                            request_id: str) -> asyncio.Future[DomainEvent]:
        """A future resolved by the domain's next ``event``."""
        return self._service.events.expect(host, uuid, event, request_id)

    def forget_domain_event(self, host: str, uuid: str, event: str) -> None:
        """Drop a waiter."""
        self._service.events.forget(host, uuid, event)

    def move(self, vm: VmRecord, trigger: VmTrigger, detail: str) -> None:
        """Fire an event's trigger on a resting VM."""
        self._service.engine.fire(self._service.vms, vm, Outcome(trigger, detail))

    def driven(self, request_id: str) -> bool:
        """Whether an operation of this VM is in progress."""
        return self._service.engine.is_live(request_id)

    def after_operation(self, request_id: str, callback: Any) -> None:
        """Call ``callback`` once the VM's operation in progress has ended."""
        self._service.engine.after_finished(request_id, callback)

    def forced_off_by(self, request_id: str) -> str | None:
        """Who asked for a forced stop of this stopping VM, if anyone did."""
        return self._service.engine.hurried_by(request_id)

    def now(self) -> float:
        """The clock the records' ``updated_at`` are on."""
        return self._service.clock()

    def look_again(self, host: str) -> None:
        """Look at the host's VMs soon, as after a reconnect (one look at a time per
        host; one asked meanwhile runs after it)."""
        self._service.look_again(host)
