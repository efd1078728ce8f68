"""The database schema: numbered migrations, applied in order at start-up.

``PRAGMA user_version`` records the last one applied; each runs in its own transaction.
Never edit a released migration: add the next one.
"""

from __future__ import annotations

from typing import Callable

import sqlite_utils


def _m1_initial(db: sqlite_utils.Database) -> None:
    db["requests"].create(
        {
            "id": str,
            "name": str,
            "owner": str,
            "owner_groups": str,  # JSON list, as seen when the request was made
            "template": str,
            "size": str,
            "resource_pool": str,
            "hardware_pool": str,
            "host": str,
            "cpus": int,
            "memory_kib": int,
            "storage_gb": int,
            "network": str,
            "state": str,
            "reason": str,
            "volume_pool": str,
            "volume_name": str,
            "volume_path": str,
            "volume_format": str,
            "volume_owned": int,  # 1: the request creates this volume (delete on rollback)
            "domain_uuid": str,
            "domain_name": str,
            "idempotency_key": str,
            "cleaned_up": int,
            "created_at": float,
            "updated_at": float,
        },
        pk="id",
        not_null={"name", "owner", "template", "size", "resource_pool", "hardware_pool",
                  "state", "cpus", "memory_kib", "storage_gb", "created_at", "updated_at"},
        defaults={"volume_owned": 0, "cleaned_up": 0, "owner_groups": "[]"},
    )
    db["requests"].create_index(["state"])
    db["requests"].create_index(["resource_pool", "state"])
    db["requests"].create_index(["owner", "idempotency_key"], unique=True)
    db["requests"].create_index(["domain_uuid"])
    db["state_log"].create(
        {
            "id": int,
            "request_id": str,
            "kind": str,  # transition | event | note
            "from_state": str,
            "to_state": str,
            "trigger": str,
            "at": float,
            "detail": str,
        },
        pk="id",
        not_null={"request_id", "kind", "at"},
        foreign_keys=[("request_id", "requests", "id")],
    )
    db["state_log"].create_index(["request_id", "id"])
    # A volume is claimed by at most one live request: the primary key makes it so.
    db["volume_claims"].create(
        {"host": str, "pool": str, "volume": str, "request_id": str, "at": float},
        pk=("host", "pool", "volume"),
        not_null={"request_id", "at"},
    )
    db["volume_claims"].create_index(["request_id"])
    db["pool_reservations"].create(
        {"request_id": str, "host": str, "pool": str, "volume": str, "bytes": int, "at": float},
        pk="request_id",
        not_null={"host", "pool", "volume", "bytes", "at"},
    )
    db["pool_reservations"].create_index(["host", "pool"])


def _m2_vm_lifecycle(db: sqlite_utils.Database) -> None:
    # The VM's lifecycle state (statemachines.vm), NULL until its request is done.
    db["requests"].add_column("vm_state", str)
    db["requests"].add_column("vm_reason", str)
    db["requests"].create_index(["vm_state"])
    # VMs made before: stopped until the look at start-up finds them running.
    db.execute("UPDATE requests SET vm_state = 'stopped' WHERE state = 'done'")


def _m3_cloud_init(db: sqlite_utils.Database) -> None:
    # What an appliance's request adds for cloud-init (JSON: ssh_keys, user_data,
    # network_config), and the seed volume its step made (in the disk's pool).
    db["requests"].add_column("cloud_init", str)
    db["requests"].add_column("seed_volume", str)


def _m4_installing(db: sqlite_utils.Database) -> None:
    # 1 while a kickstart VM's domain boots its installer directly (until its first
    # power-off, when the domain is redefined to boot from its disk).
    db["requests"].add_column("installing", int, not_null_default=0)


MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    _m1_initial, _m2_vm_lifecycle, _m3_cloud_init, _m4_installing)
