"""Choosing a request's host and storage together, over a hardware pool's hosts.

``place_on_hosts`` decides on the live inventories with no libvirt call and no await
(the step that calls it records the claim in the same transaction); ``host_capacities``
and ``disk_sizes`` read what it needs from libvirt first. The dry run calls the same functions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from daemon.config import HardwarePool, Template
from daemon.config.model import BootFile
from daemon.errors import ProvisiondError
from daemon.placement import Decision, place_storage
from daemon.placement.hosts import HostFigures, HostVerdict, chosen_first, rank_hosts
from daemon.virt.connection import HostConnection
from daemon.workflows import appliance

if TYPE_CHECKING:
    from daemon.workflows.provisioning import ProvisioningContext


async def host_capacities(ctx: ProvisioningContext,
                          hardware: HardwarePool) -> dict[str, tuple[int, int] | None]:
    """Each host's (cpus, memory in KiB) from its node info (read once per connection),
    None for a host that is unreachable now."""
    names = [h.name for h in hardware.hosts]
    up = ctx.reachable_hosts(names)
    capacities: dict[str, tuple[int, int] | None] = {}
    for name in names:
        host = up.get(name)
        capacity = host.known_capacity() if host is not None else None
        if host is not None and capacity is None:
            try:
                capacity = await host.node_capacity()
            except ProvisiondError:
                pass
        capacities[name] = capacity
    return capacities


def _figures(ctx: ProvisioningContext,
             capacities: dict[str, tuple[int, int] | None]) -> list[HostFigures]:
    """The hosts as host choice sees them: capacity, and what provisiond placed there
    (read here, with no await before the decision is recorded; a host lost since its
    capacity was read is unreachable)."""
    usage = ctx.host_usage()
    up = ctx.reachable_hosts(list(capacities))
    figures = []
    for name, capacity in capacities.items():
        used = usage.get(name, (0, 0))
        figures.append(HostFigures(name, False) if capacity is None or name not in up else
                       HostFigures(name, True, capacity[0], capacity[1], used[0], used[1]))
    return figures


async def disk_sizes(ctx: ProvisioningContext, hosts: list[str], template: Template | None,
                     storage_gb: int) -> tuple[dict[str, int], dict[str, str]]:
    """The disk's size on each host (an appliance's depends on its image there), and
    why a host cannot take it at all (its image is missing, or unusable)."""
    if not appliance.is_appliance(template):
        return {name: storage_gb * 1024**3 for name in hosts}, {}
    assert template is not None
    sizes: dict[str, int] = {}
    refused: dict[str, str] = {}
    for name in hosts:
        try:
            image = await appliance.image_of(ctx.host(name), template)
        except ProvisiondError as exc:
            refused[name] = exc.message
            continue
        sizes[name] = max(storage_gb * 1024**3, image.capacity)
    return sizes, refused


async def place_request(ctx: ProvisioningContext, hardware: HardwarePool,
                        capacities: dict[str, tuple[int, int] | None],
                        template: Template | None, cpus: int, memory_kib: int,
                        storage_gb: int, request_id: str, *, explain: bool = False) -> Decision:
    """Read what only libvirt knows (the disk's size on each reachable host), then decide
    (``place_on_hosts``): nothing is awaited after the decision."""
    reachable = [name for name, capacity in capacities.items() if capacity is not None]
    sizes, refused = await disk_sizes(ctx, reachable, template, storage_gb)
    return place_on_hosts(ctx, hardware, capacities, cpus, memory_kib, sizes, refused,
                          request_id, template=template, explain=explain)


def place_on_hosts(ctx: ProvisioningContext, hardware: HardwarePool,
                   capacities: dict[str, tuple[int, int] | None], cpus: int, memory_kib: int,
                   sizes: dict[str, int], refused: dict[str, str], request_id: str, *,
                   template: Template | None = None, explain: bool = False) -> Decision:
    """The host and the storage for a request, on the live inventories (no libvirt call,
    no await): among the hosts that can hold it (``daemon.placement.hosts``), first a
    free volume of the right size on any of them (best fit; ties: earlier pool, then the
    host the policy prefers), else a new volume in the earliest pool with room on any
    of them (ties: the host the policy prefers). Storage several hosts share is one
    storage: its volume is found once, on the first host the policy prefers. The
    decision's ``host`` is None when no host can take it (``failure`` set: none that
    could hold it had storage), and ``hosts`` has every host's verdict."""
    ranked, verdicts = rank_hosts(_figures(ctx, capacities), cpus, memory_kib,
                                  policy=hardware.host_policy,
                                  cpu_ratio=hardware.cpu_allocation_ratio,
                                  ram_ratio=hardware.ram_allocation_ratio)
    if refused:
        verdicts = [v._replace(fits=False, refusal=refused[v.host])
                    if v.host in refused else v for v in verdicts]
        ranked = [name for name in ranked if name not in refused]
    inputs = _placement_inputs(ctx, template)
    usable = [ref for ref in hardware.storage_pools if not ref.templates_only]
    # The pools in the order step 2 tries them (an appliance's image pool first).
    pool_order = {ref.name: i for i, ref in enumerate(usable)}
    if inputs.image_pool in pool_order:
        pool_order[inputs.image_pool] = -1
    best: tuple[tuple[int, ...], str, Decision] | None = None
    # Step 1 on every host that can hold it: the best-fitting free volume (never for an
    # appliance, whose disk must hold its image).
    tolerance = hardware.reuse_tolerance_gb * 1024**3
    for rank, name in enumerate(ranked if inputs.image_pool is None else ()):
        host = ctx.host(name)
        if not host.inventory.any_free_between(sizes[name], sizes[name] + tolerance):
            continue
        decision = place(ctx, host, hardware, sizes[name], request_id,
                         template=template, create=False, inputs=inputs)
        if decision.action == "reuse":
            assert decision.volume is not None
            key = (decision.volume.capacity, pool_order.get(decision.volume.pool, 0), rank)
            if best is None or key < best[0]:
                best = (key, name, decision)
    # Else step 2, down the ranked hosts: the earliest pool with room; the first host
    # with room in the first pool that could have any ends the search.
    failures: list[str] = []
    first_pool = min(pool_order.values(), default=0)
    if best is None:
        for rank, name in enumerate(ranked):
            decision = place(ctx, ctx.host(name), hardware, sizes[name], request_id,
                             template=template, reuse=False, inputs=inputs)
            if decision.action != "create":
                failures.append(f"{name}: {decision.reason}")
                continue
            key = (pool_order.get(decision.pool or "", 0), rank)
            if best is None or key < best[0]:
                best = (key, name, decision)
            if key[0] == first_pool:
                break
    if best is None:
        if not ranked:  # no host can hold it: the hosts' verdicts say why
            return Decision("none", hosts=tuple(verdicts))
        failure = (failures[0].split(": ", 1)[1] if len(failures) == 1 else
                   "no host that can hold it has storage for it: " + "; ".join(failures))
        shown = (place(ctx, ctx.host(ranked[0]), hardware, sizes[ranked[0]], request_id,
                       template=template, explain=True) if explain else Decision("none"))
        return dataclasses.replace(shown, hosts=tuple(verdicts), failure=failure)
    _key, chosen, decision = best
    if explain:
        decision = place(ctx, ctx.host(chosen), hardware, sizes[chosen], request_id,
                         template=template, explain=True)
    return dataclasses.replace(decision, host=chosen, hosts=tuple(
        chosen_first(chosen, hardware.host_policy, verdicts)))


LOGGED_HOSTS = 5
"""How many other hosts' verdicts the log names (``provctl explain`` shows them all)."""


def hosts_said(verdicts: tuple[HostVerdict, ...]) -> str:
    """For the log: the chosen host's reason and the others' (a summary where there are
    many)."""
    chosen, *others = verdicts
    if not others:
        return chosen.reason
    if len(others) <= LOGGED_HOSTS:
        return f"{chosen.reason}; other hosts: " + "; ".join(f"{v.host}: {v.reason}"
                                                             for v in others)
    fit = sum(v.fits for v in others)
    down = sum(not v.reachable for v in others)
    return (f"{chosen.reason}; of {len(others)} other hosts, {fit} could hold it, "
            f"{len(others) - fit - down} could not, {down} unreachable")


@dataclass(frozen=True)
class PlacementInputs:
    """What placement needs from the configuration, the same for every host."""

    template_volumes: list[tuple[str, str]]
    template_paths: list[str]
    image_pool: str | None


def _placement_inputs(ctx: ProvisioningContext, template: Template | None) -> PlacementInputs:
    templates = ctx.config.templates.values()
    return PlacementInputs(
        [(f.volume.pool, f.volume.name) for t in templates for f in _files_of(t) if f.volume],
        [f.path for t in templates for f in _files_of(t) if f.path],
        template.volume.pool if template is not None and template.kind == "appliance"
        and template.volume is not None else None)


def place(ctx: ProvisioningContext, host: HostConnection, hardware: HardwarePool,
          size_bytes: int, request_id: str, *, template: Template | None = None,
          explain: bool = False, reuse: bool = True, create: bool = True,
          inputs: PlacementInputs | None = None) -> Decision:
    """The seed's placement rule on the host's live inventory (no libvirt call); with
    ``explain``, every candidate's verdict too (the dry run). An appliance's disk is
    never a reused blank volume, and goes to its image's pool first. Reservations count
    wherever the host's pools are (shared storage's are other hosts' too)."""
    inputs = inputs or _placement_inputs(ctx, template)
    pools = hardware.storage_pools
    return place_storage(
        host.inventory, pools, size_bytes=size_bytes, request_id=request_id,
        tolerance_bytes=hardware.reuse_tolerance_gb * 1024**3,
        reservations=[r for where in ctx.storage.locations(host.name, [p.name for p in pools])
                      for r in ctx.store.reservations_on(where)] if create or explain else [],
        template_volumes=inputs.template_volumes, template_paths=inputs.template_paths,
        image_pool=inputs.image_pool, explain=explain, reuse=reuse, create=create,
        used_elsewhere=lambda vol: ctx.storage.user_elsewhere(host.name, vol))


def _files_of(template: Template) -> list[BootFile]:
    """Everything a template is made of on a host (ISO, image, kernel, initrd): never a
    free volume for a VM's disk."""
    files = [BootFile(template.path, template.volume), template.kernel, template.initrd]
    return [f for f in files if f is not None]
