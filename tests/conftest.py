"""Shared fixtures: configurations over test-driver node XMLs, engines, fault injection.

Every test gets its own libvirt host: a ``test:///<abs path>`` connection to a node XML in
``tests/data/`` is private to that connection. The libvirt module itself is never faked;
``Faulty`` wraps a real connection to inject failures libvirt can't be made to produce.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator, Callable

import libvirt
import pytest
import yaml

from daemon.auth import Identity
from daemon.config import Config, load_config
from daemon.engine import Engine, ProvisioningRequest
from daemon.store import Store

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).parent.parent

SIZES = {
    "small": {"cpus": 2, "memory": 262144, "storage_size_in_gb": 15},
    "tiny": {"cpus": 1, "memory": 131072, "storage_size_in_gb": 10},
}
TEMPLATES = {
    "ipxe": {"kind": "iso", "volume": {"pool": "pool-dir", "name": "ipxe.iso"}},
    "ipxe-file": {"kind": "iso", "path": "/usr/lib/ipxe/ipxe.iso"},
}
ALICE = Identity("alice", frozenset({"staff"}))
BOB = Identity("bob", frozenset({"others"}))


def write_config(directory: Path, node_xml: str = "host_basic.xml", *,
                 storage_pools: list[Any] | None = None, quota: dict[str, int] | None = None,
                 sizes: dict[str, Any] | None = None, templates: dict[str, Any] | None = None,
                 daemon: dict[str, Any] | None = None, tolerance_gb: int = 0,
                 grants: dict[str, Any] | None = None) -> Path:
    """Write a complete configuration into ``directory``; return its main file."""
    directory.mkdir(parents=True, exist_ok=True)
    pools = storage_pools or ["pool-iscsi", "pool-dir", "pool-nfs", "pool-lvm"]
    rp: dict[str, Any] = {
        "hardware_pool": "hw",
        "grants": grants or {"CLOUD_CREATE": {"users": ["alice"], "groups": ["admins"]},
                             "CLOUD_ADMIN": {"users": ["carol"]}},
    }
    if quota:
        rp["quota"] = quota
    files = {
        "VmSize.yml": sizes or SIZES,
        "templates.yml": templates or TEMPLATES,
        "pools.yml": {
            "hardware_pools": {"hw": {
                "hosts": [{"name": "testhost", "uri": f"test://{DATA / node_xml}"}],
                "storage_pools": [p if isinstance(p, dict) else {"name": p} for p in pools],
                "reuse_tolerance_gb": tolerance_gb,
            }},
            "resource_pools": {"rp": rp},
        },
        "provisiond.yml": {
            "daemon": {"socket": str(directory / "provisiond.sock"),
                       "database": str(directory / "provisiond.db"),
                       "define_event_timeout": 5, **(daemon or {})},
            "include": {"sizes": "VmSize.yml", "templates": "templates.yml",
                        "pools": "pools.yml"},
        },
    }
    for name, content in files.items():
        (directory / name).write_text(yaml.safe_dump(content, sort_keys=False))
    return directory / "provisiond.yml"


class Faulty:
    """A real libvirt object whose named methods raise (or are replaced).

    Objects returned by its methods are wrapped too, so ``faults={"createXML": ...}``
    reaches a storage pool's ``createXML`` through the connection.
    """

    def __init__(self, inner: Any, faults: dict[str, Any]) -> None:
        self._inner = inner
        self._faults = faults

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        fault = self._faults.get(name)
        if fault is not None:
            if callable(fault) and not isinstance(fault, BaseException):
                return fault
            def raising(*_a: Any, **_k: Any) -> Any:
                raise libvirt.libvirtError(f"injected fault: {fault}")
            return raising
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if isinstance(result, (libvirt.virStoragePool, libvirt.virStorageVol,
                                   libvirt.virDomain)):
                return Faulty(result, self._faults)
            return result
        return call


class Harness:
    """An engine over one private test-driver host, with helpers for tests."""

    def __init__(self, config: Config, store: Store, engine: Engine,
                 connections: list[Any]) -> None:
        self.config = config
        self.store = store
        self.engine = engine
        self.connections = connections

    @property
    def conn(self) -> Any:
        """The raw libvirt connection the engine uses (the same private host)."""
        return self.connections[0]

    def submit(self, template: str = "ipxe", size: str = "small", who: Identity = ALICE,
               **kw: Any) -> Any:
        return self.engine.submit(who, ProvisioningRequest(template, size, "rp", **kw))

    async def run(self, template: str = "ipxe", size: str = "small", who: Identity = ALICE,
                  **kw: Any) -> Any:
        record = self.submit(template, size, who, **kw)
        return await self.engine.wait_terminal(record.id, timeout=20)

    def states(self, request_id: str) -> list[str]:
        return [e.to_state for e in self.store.get_log(request_id) if e.kind == "transition"]

    def volume_names(self, pool: str) -> set[str]:
        return {v.name() for v in self.conn.storagePoolLookupByName(pool).listAllVolumes()}


@pytest.fixture
async def make_harness(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Factory: ``await make_harness(node_xml, faults=..., **config options)``."""
    made: list[Harness] = []

    async def make(node_xml: str = "host_basic.xml", *, faults: dict[str, Any] | None = None,
                   **options: Any) -> Harness:
        main = write_config(tmp_path / f"cfg{len(made)}", node_xml, **options)
        config = load_config(main)
        store = Store(config.daemon.database)
        store.migrate()
        connections: list[Any] = []

        def opener(uri: str) -> Any:
            conn = libvirt.open(uri)
            connections.append(conn)
            return Faulty(conn, faults) if faults else conn

        engine = Engine(config, store, opener=opener)
        await engine.start()
        harness = Harness(config, store, engine, connections)
        made.append(harness)
        return harness

    yield make
    for h in made:
        await h.engine.stop()
        h.store.close()


@pytest.fixture
async def harness(make_harness: Callable[..., Any]) -> Harness:
    """An engine on ``tests/data/host_basic.xml`` with the default test configuration."""
    return await make_harness()
