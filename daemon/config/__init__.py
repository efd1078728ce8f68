"""Configuration: the typed model and its loader (every problem named by file and key)."""

from daemon.config.loader import *  # noqa: F401,F403
from daemon.config.loader import DEFAULT_CONFIG, default_database_path, default_socket_path  # noqa: F401
