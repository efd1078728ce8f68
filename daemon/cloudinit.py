"""cloud-init's NoCloud seed: what a request may give, checked, and the ISO made from it.

A request for an appliance may carry SSH public keys, user-data (``#cloud-config`` YAML)
and network-config; its template may give defaults. The seed is an ISO 9660 image
labelled ``cidata`` holding ``meta-data``, ``user-data`` and (if any) ``network-config``,
made in memory with pycdlib (no tool on the host, no temporary file). Its meta-data's
``instance-id`` derives from the request id, so a step that runs again writes the same
seed; ``local-hostname`` is the VM's name.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from typing import Any

import pycdlib
import yaml

from daemon.errors import InvalidInput

MAX_USER_DATA = 64 * 1024
"""The most bytes of user-data (or network-config) a request may carry."""
MAX_SSH_KEYS = 32
SSH_KEY_TYPES = frozenset({
    "ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com", "ssh-dss",
})
"""The OpenSSH public key types accepted (as ``ssh-keygen -l`` knows them)."""
_COMMENT_RE = re.compile(r"[\x20-\x7e]{0,200}")
SEED_LABEL = "cidata"
PAD_SECTORS = 150


def check_ssh_key(text: Any, field: str = "ssh_keys") -> str:
    """One OpenSSH public key line (``TYPE BASE64 [COMMENT]``), checked; returned tidy."""
    if not isinstance(text, str):
        raise InvalidInput(f"an SSH key must be a string, got {type(text).__name__}",
                           field=field)
    parts = text.strip().split(None, 2)
    if "\n" in text.strip() or len(parts) < 2:
        raise InvalidInput("an SSH key must be one line: TYPE BASE64 [COMMENT] (the "
                           "content of a .pub file)", field=field)
    kind, blob = parts[0], parts[1]
    comment = parts[2] if len(parts) > 2 else ""
    if kind not in SSH_KEY_TYPES:
        raise InvalidInput(f"unknown SSH key type {kind[:40]!r} (expected one of: "
                           f"{', '.join(sorted(SSH_KEY_TYPES))})", field=field)
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"the {kind} key is not valid base64", field=field) from None
    # The blob starts with its own type, as a length-prefixed string: a key pasted under
    # the wrong type (or cut short) is caught here.
    size = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    if size != len(kind) or raw[4:4 + size] != kind.encode() or len(raw) < 4 + size + 8:
        raise InvalidInput(f"the key's content is not a {kind} public key", field=field)
    if not _COMMENT_RE.fullmatch(comment):
        raise InvalidInput("an SSH key's comment must be printable ASCII (at most 200)",
                           field=field)
    return f"{kind} {blob}" + (f" {comment}" if comment else "")


def check_ssh_keys(value: Any, field: str = "ssh_keys") -> list[str]:
    """A list of OpenSSH public keys, each checked."""
    if not isinstance(value, list):
        raise InvalidInput("ssh_keys must be a list of public keys", field=field)
    if len(value) > MAX_SSH_KEYS:
        raise InvalidInput(f"at most {MAX_SSH_KEYS} SSH keys", field=field)
    return [check_ssh_key(k, field) for k in value]


def _yaml_document(text: Any, field: str, what: str) -> dict[str, Any]:
    if not isinstance(text, str):
        raise InvalidInput(f"{field} must be a string ({what})", field=field)
    if len(text.encode()) > MAX_USER_DATA:
        raise InvalidInput(f"{field} is larger than {MAX_USER_DATA // 1024} KiB", field=field)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise InvalidInput(f"{field} is not valid YAML{where}: "
                           f"{getattr(exc, 'problem', None) or exc}", field=field) from None
    if not isinstance(data, dict):
        raise InvalidInput(f"{field} must be a YAML mapping ({what})", field=field)
    return data


def check_user_data(text: Any, field: str = "user_data") -> str:
    """user-data: a ``#cloud-config`` YAML mapping of at most 64 KiB."""
    if isinstance(text, str) and not text.startswith("#cloud-config"):
        raise InvalidInput(f"{field} must start with '#cloud-config' (only cloud-config "
                           "user-data is accepted)", field=field)
    _yaml_document(text, field, "#cloud-config")
    return str(text)


def check_network_config(text: Any, field: str = "network_config") -> str:
    """network-config: a YAML mapping (version 1 or 2) of at most 64 KiB."""
    data = _yaml_document(text, field, "cloud-init network config, version 1 or 2")
    body = data.get("network", data)
    if not isinstance(body, dict) or body.get("version") not in (1, 2):
        raise InvalidInput(f"{field} must say 'version: 1' or 'version: 2'", field=field)
    return str(text)


def user_data(base: str | None, ssh_keys: list[str]) -> str:
    """The user-data of the seed: ``base`` (the request's, else the template's, else
    empty) with the SSH keys added to ``ssh_authorized_keys``."""
    config = yaml.safe_load(base) if base else {}
    if not ssh_keys:
        return base or "#cloud-config\n"
    config = dict(config or {})
    known = list(config.get("ssh_authorized_keys") or [])
    config["ssh_authorized_keys"] = known + [k for k in ssh_keys if k not in known]
    return "#cloud-config\n" + yaml.safe_dump(config, sort_keys=False, width=1 << 16)


def meta_data(request_id: str, hostname: str) -> str:
    """meta-data: the instance id (from the request id: the same on every run of the
    step) and the hostname (the VM's name)."""
    return yaml.safe_dump({"instance-id": f"provisiond-{request_id}",
                           "local-hostname": hostname}, sort_keys=False)


def seed_iso(meta: str, user: str, network: str | None = None) -> bytes:
    """The NoCloud seed: an ISO 9660 image (Joliet and Rock Ridge names) labelled
    ``cidata`` with the files cloud-init reads."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=SEED_LABEL)
    files = [("meta-data", meta), ("user-data", user)]
    if network is not None:
        files.append(("network-config", network))
    for index, (name, text) in enumerate(files):
        data = text.encode()
        iso.add_fp(io.BytesIO(data), len(data), f"/FILE{index};1", rr_name=name,
                   joliet_path=f"/{name}")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    # 150 blank sectors after the image, as genisoimage's default -pad: some readers read
    # ahead past a small image's end and then see no filesystem at all (busybox's
    # findfs, which the test guest uses, reads its first 68 KiB in one go).
    return out.getvalue() + bytes(PAD_SECTORS * 2048)
