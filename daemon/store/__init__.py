"""The store: the only place with SQL."""

from daemon.store.store import *  # noqa: F401,F403
