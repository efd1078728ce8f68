"""An OpenSSH public key line made without ssh-keygen (not on every bare machine).

The key is an ed25519 public key of random bytes: its format is exactly what
``ssh-keygen`` writes, which is all a seed's user-data (and provisiond's check) sees.
"""

from __future__ import annotations

import base64
import os


def public_key(comment: str) -> str:
    """``ssh-ed25519 BASE64 COMMENT``, as in an ``id_ed25519.pub`` file."""
    kind = b"ssh-ed25519"
    blob = len(kind).to_bytes(4, "big") + kind + (32).to_bytes(4, "big") + os.urandom(32)
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}"
