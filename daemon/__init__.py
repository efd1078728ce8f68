"""provisiond: a self-service VM provisioning daemon for libvirt."""

__version__ = "0.1.0"
