"""The store: the only place with SQL (``store``), its schema and its records."""

from daemon.store.records import LogEntry, QuotaUsage, RequestRecord, Reservation, VmRecord
from daemon.store.schema import MIGRATIONS
from daemon.store.store import REQUEST_UPDATABLE, RequestRecords, Store, VmRecords

__all__ = ["LogEntry", "MIGRATIONS", "QuotaUsage", "REQUEST_UPDATABLE", "RequestRecord",
           "RequestRecords", "Reservation", "Store", "VmRecord", "VmRecords"]
