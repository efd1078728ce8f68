"""Issue 12, point 13: the database and the directories made for it are private (0600 and
0700) whatever the umask; with umask 022 another local user could read every request."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterator

import pytest

from daemon.store import Store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(params=[0o022, 0o002, 0o277], ids=["umask-022", "umask-002", "umask-277"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def test_the_database_its_wal_and_the_directories_made_for_it_are_private(
        tmp_path: Path, umask: int) -> None:
    database = tmp_path / "state" / "provisiond" / "provisiond.db"
    store = Store(database)
    try:
        store.migrate()  # writes: the -wal and -shm files exist from here
        assert {p.name for p in database.parent.iterdir()} == {
            "provisiond.db", "provisiond.db-wal", "provisiond.db-shm"}
        for path in (tmp_path / "state", database.parent):
            assert mode(path) == 0o700, path
        for path in database.parent.iterdir():
            assert mode(path) == 0o600, path
    finally:
        store.close()


def test_a_directory_that_already_existed_is_left_as_it_was(tmp_path: Path,
                                                            umask: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp
    store = Store(shared / "mine" / "provisiond.db")
    store.close()
    assert mode(shared) == 0o1777
    assert mode(shared / "mine") == 0o700
    assert mode(shared / "mine" / "provisiond.db") == 0o600


def test_an_existing_database_keeps_its_mode_and_content(tmp_path: Path) -> None:
    database = tmp_path / "provisiond.db"
    store = Store(database)
    store.migrate()
    store.close()
    database.chmod(0o640)  # the administrator's choice (e.g. a backup group)
    store = Store(database)
    try:
        assert store.schema_version() > 0
        assert mode(database) == 0o640
    finally:
        store.close()
