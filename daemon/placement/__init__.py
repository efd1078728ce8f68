"""Placement: where a request's storage comes from (the seed's attach-or-create rule)."""

from daemon.placement.decision import CREATABLE_POOL_TYPES, QCOW2_POOL_TYPES, Decision, Verdict
from daemon.placement.storage import place_storage

__all__ = ["CREATABLE_POOL_TYPES", "QCOW2_POOL_TYPES", "Decision", "Verdict",
           "place_storage"]
