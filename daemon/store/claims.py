"""Volume claims and space reservations: the store's part that keeps two requests (on one
host, or on hosts sharing storage) from taking the same volume or the same room.

Keyed by *location*: a host's name for its own storage, or the key of storage several
hosts share (``daemon.placement.shared``). A mixin of ``Store``, whose connection,
transactions and clock it uses.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import Any, Callable, Sequence

from daemon.errors import AlreadyClaimed
from daemon.store.records import Reservation

log = logging.getLogger("provisiond.store")


class StorageClaims:
    """Claims and reservations (mixed into ``Store``)."""

    db: Any
    clock: Callable[[], float]
    _reservations: dict[str, dict[str, Reservation]] | None

    def claim_volume(self, host: str, pool: str, volume: str, request_id: str) -> None:
        """Claim a volume for a request; raises AlreadyClaimed if another request holds it.
        ``host`` is the volume's location (a host's name, or shared storage's key)."""
        try:
            with self.atomic():
                self.db.conn.execute(
                    "INSERT INTO volume_claims (host, pool, volume, request_id, at)"
                    " VALUES (?, ?, ?, ?, ?)", (host, pool, volume, request_id, self.clock()))
        except sqlite3.IntegrityError:
            holder = self.db.execute(
                "SELECT request_id FROM volume_claims WHERE host = ? AND pool = ? AND volume = ?",
                (host, pool, volume)).fetchone()
            if holder and holder[0] == request_id:
                return
            raise AlreadyClaimed(f"{pool}/{volume} is claimed by request {holder and holder[0]}")

    def claims_on(self, location: str) -> dict[tuple[str, str], str]:
        """Claimed volumes at a location (a host's name, or shared storage's key; see
        ``daemon.placement.shared``): (pool, volume) -> request id."""
        return {(r["pool"], r["volume"]): r["request_id"] for r in self.db.query(
            "SELECT pool, volume, request_id FROM volume_claims WHERE host = ?", [location])}

    def kept_claims(self) -> list[tuple[str, str, str, str]]:
        """Claims no VM holds any more (a deleted VM's, or a forgotten one's): kept because
        the volume could not be wiped. (location, pool, volume, request id)."""
        return [(r["host"], r["pool"], r["volume"], r["request_id"]) for r in self.db.query(
            "SELECT c.host, c.pool, c.volume, c.request_id FROM volume_claims c"
            " LEFT JOIN requests r ON r.id = c.request_id"
            " WHERE r.id IS NULL OR r.vm_state = 'deleted'")]

    def release_claim(self, location: str, pool: str, volume: str) -> None:
        """Drop one claim (the reconciler found its volume gone)."""
        with self.atomic():
            self.db.conn.execute(
                "DELETE FROM volume_claims WHERE host = ? AND pool = ? AND volume = ?",
                (location, pool, volume))

    def shared_claims(self) -> list[tuple[str, str, str, str]]:
        """Claims on shared storage: (location, pool, volume, request id)."""
        return [(r["host"], r["pool"], r["volume"], r["request_id"]) for r in self.db.query(
            "SELECT host, pool, volume, request_id FROM volume_claims"
            " WHERE host LIKE 'shared:%'")]

    def reserve_space(self, reservation: Reservation) -> None:
        """Hold space in a pool for a request's new volume (replaces its earlier one)."""
        with self.atomic():
            self._reserve(reservation)

    def _reserve(self, reservation: Reservation) -> None:
        self.db.conn.execute(
            "INSERT OR REPLACE INTO pool_reservations (request_id, host, pool, volume, bytes, at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (reservation.request_id, reservation.host, reservation.pool, reservation.volume,
             reservation.bytes, self.clock()))
        self._forget_reservation(reservation.request_id)
        self._reservations_by_host().setdefault(reservation.host, {})[
            reservation.request_id] = reservation

    def drop_reservation(self, request_id: str) -> None:
        """A request's volume exists: its reservation has done its job."""
        with self.atomic():
            self.db.conn.execute("DELETE FROM pool_reservations WHERE request_id = ?",
                                 [request_id])
            self._forget_reservation(request_id)

    def reservations_on(self, host: str) -> list[Reservation]:
        """Space held in the pools of a host by live requests."""
        return list(self._reservations_by_host().get(host, {}).values())

    def _reservations_by_host(self) -> dict[str, dict[str, Reservation]]:
        # Kept in memory: placement asks for them once per request.
        if self._reservations is None:
            by_host: dict[str, dict[str, Reservation]] = {}
            for r in self.db.query("SELECT request_id, host, pool, volume, bytes"
                                   " FROM pool_reservations ORDER BY rowid"):
                by_host.setdefault(r["host"], {})[r["request_id"]] = Reservation(**r)
            self._reservations = by_host
        return self._reservations

    def _forget_reservation(self, request_id: str) -> None:
        for held in self._reservations_by_host().values():
            held.pop(request_id, None)

    def relocate_storage(self, hosts: Sequence[str], locate: Callable[[str, str], str]
                         ) -> list[tuple[str, str, str, str]]:
        """Move the claims and reservations recorded under one of these hosts' names to
        where ``locate(host, pool)`` now says the pool's volumes are (the key of storage
        several hosts share); return the claims moved: (location, pool, volume, request).
        A claim another request already holds under that key stays where it was."""
        moved: list[tuple[str, str, str, str]] = []
        marks = ",".join("?" * len(hosts))
        if not hosts:
            return moved
        with self.atomic():
            for host, pool, volume, holder in self.db.execute(
                    "SELECT host, pool, volume, request_id FROM volume_claims"
                    f" WHERE host IN ({marks})", list(hosts)).fetchall():
                where = locate(host, pool)
                if where == host:
                    continue
                try:
                    with self.atomic():
                        self.db.conn.execute(
                            "UPDATE volume_claims SET host = ? WHERE host = ? AND pool = ?"
                            " AND volume = ?", (where, host, pool, volume))
                except sqlite3.IntegrityError:
                    log.warning("volume %s/%s is claimed by request %s under host %s and by "
                                "another request on storage %s", pool, volume, holder, host,
                                where)
                    continue
                moved.append((where, pool, volume, holder))
            for request_id, host, pool in self.db.execute(
                    "SELECT request_id, host, pool FROM pool_reservations"
                    f" WHERE host IN ({marks})", list(hosts)).fetchall():
                where = locate(host, pool)
                if where != host:
                    self.db.conn.execute("UPDATE pool_reservations SET host = ?"
                                         " WHERE request_id = ?", (where, request_id))
            self._reservations = None  # read again, under their new keys
        return moved

    def release_storage(self, request_id: str) -> list[tuple[str, str, str]]:
        """Drop a request's volume claims and space reservations; return the claims
        dropped: (location, pool, volume)."""
        with self.atomic():
            released = [(r[0], r[1], r[2]) for r in self.db.execute(
                "SELECT host, pool, volume FROM volume_claims WHERE request_id = ?",
                [request_id]).fetchall()]
            self.db.conn.execute("DELETE FROM volume_claims WHERE request_id = ?", [request_id])
            self.db.conn.execute("DELETE FROM pool_reservations WHERE request_id = ?",
                                 [request_id])
            self._forget_reservation(request_id)
        return released
