"""The service: the facade front ends call (submit, cancel, wait, look, explain)."""

from daemon.service.intake import IDEMPOTENCY_KEY_RE, ProvisioningRequest
from daemon.service.service import Service

__all__ = ["IDEMPOTENCY_KEY_RE", "ProvisioningRequest", "Service"]
