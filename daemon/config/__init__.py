"""Configuration: the typed model (``model``) and its strict loader (``loader``), which
names the file and key path of every problem it finds."""

from daemon.config.loader import (
    DEFAULT_CONFIG,
    default_database_path,
    default_socket_path,
    load_config,
)
from daemon.config.model import (
    PRIVILEGES,
    Config,
    DaemonSettings,
    Grant,
    HardwarePool,
    Host,
    Quota,
    ResourcePool,
    Size,
    StoragePoolRef,
    Template,
    VolumeRef,
)

__all__ = ["DEFAULT_CONFIG", "PRIVILEGES", "Config", "DaemonSettings", "Grant",
           "HardwarePool", "Host", "Quota", "ResourcePool", "Size", "StoragePoolRef",
           "Template", "VolumeRef", "default_database_path", "default_socket_path",
           "load_config"]
