"""``templates.yml``: what gets installed, by kind, checked key by key.

    iso:        {kind, description?, path | volume: {pool, name}}
    appliance:  {kind, description?, volume: {pool, name}, clone?: overlay | full,
                 cloud_init?: {ssh_keys?: [..], user_data?: "#cloud-config ..",
                               network_config?: ".."}}
    kickstart:  {kind, description?, kernel: path | {pool, name},
                 initrd: path | {pool, name}, cmdline: "... inst.ks=URL ..."}

The checker (``loader._Checker``) collects
each problem with its key path; nothing here raises.
"""

from __future__ import annotations

from typing import Any

from daemon import cloudinit
from daemon.config.model import BootFile, CloudInit, Template, VolumeRef
from daemon.errors import InvalidInput

KINDS_SUPPORTED = ("iso", "appliance", "kickstart")
KINDS_RESERVED: tuple[str, ...] = ()
CLONE_MODES = ("overlay", "full")
_KEYS = {"iso": {"kind", "description", "path", "volume"},
         "appliance": {"kind", "description", "volume", "clone", "cloud_init"},
         "kickstart": {"kind", "description", "kernel", "initrd", "cmdline"}}


def parse_templates(data: Any, c: Any) -> dict[str, Template]:
    """Every valid template of the file; each invalid one is a problem of ``c``."""
    templates: dict[str, Template] = {}
    if c.mapping(data, "") is None:
        return templates
    kinds = KINDS_SUPPORTED + KINDS_RESERVED
    for key, entry in data.items():
        name = c.name(key, str(key))
        kind = entry.get("kind") if isinstance(entry, dict) else None
        body = c.mapping(entry, str(key), _KEYS.get(kind) if isinstance(kind, str) else None,
                         {"kind"})
        if name is None or body is None or "kind" not in body:
            continue
        if kind not in kinds:
            c.bad(f"{key}.kind", f"expected one of: {', '.join(kinds)}, got {kind!r}")
            continue
        if kind in KINDS_RESERVED:
            c.bad(f"{key}.kind", f"kind '{kind}' is not supported yet "
                                 f"(supported: {', '.join(KINDS_SUPPORTED)})")
            continue
        if set(body) - _KEYS[kind]:
            continue  # each unknown key is a problem already
        description = (c.string(body["description"], f"{key}.description") or ""
                       if "description" in body else "")
        parse = {"iso": _iso, "appliance": _appliance, "kickstart": _kickstart}[kind]
        template = parse(name, key, body, description, c)
        if template is not None:
            templates[name] = template
    if not templates and not c.problems:
        c.bad("", "defines no template")
    return templates


def _volume(body: Any, path: str, c: Any) -> VolumeRef | None:
    vol = c.mapping(body, path, {"pool", "name"}, {"pool", "name"})
    if vol is None or not {"pool", "name"} <= vol.keys():
        return None
    pool = c.name(vol["pool"], f"{path}.pool")
    vname = c.string(vol["name"], f"{path}.name")
    return VolumeRef(pool, vname) if pool and vname else None


def _iso(name: str, key: Any, body: dict[str, Any], description: str,
         c: Any) -> Template | None:
    has_path, has_volume = "path" in body, "volume" in body
    if has_path == has_volume:
        c.bad(str(key), "an iso template needs exactly one of 'path' (an ISO file) "
                        "or 'volume' ({pool, name} of a volume in a storage pool)")
        return None
    if has_path:
        path = c.string(body["path"], f"{key}.path")
        if path is not None and not path.startswith("/"):
            c.bad(f"{key}.path", f"expected an absolute path, got {path!r}")
            return None
        return Template(name, "iso", description, path=path) if path is not None else None
    volume = _volume(body["volume"], f"{key}.volume", c)
    return Template(name, "iso", description, volume=volume) if volume else None


def _appliance(name: str, key: Any, body: dict[str, Any], description: str,
               c: Any) -> Template | None:
    if "volume" not in body:
        c.bad(f"{key}.volume", "an appliance needs its base image as a volume ({pool, name} "
                               "of a qcow2 or raw volume in one of the hardware pool's "
                               "storage pools)")
        return None
    volume = _volume(body["volume"], f"{key}.volume", c)
    clone = body.get("clone", "overlay")
    if clone not in CLONE_MODES:
        c.bad(f"{key}.clone", f"expected one of: {', '.join(CLONE_MODES)}, got {clone!r}")
        return None
    defaults = CloudInit()
    if body.get("cloud_init") is not None:
        parsed = _cloud_init(body["cloud_init"], f"{key}.cloud_init", c)
        if parsed is None:
            return None
        defaults = parsed
    if volume is None:
        return None
    return Template(name, "appliance", description, volume=volume, clone=clone,
                    cloud_init=defaults)


def _cloud_init(value: Any, path: str, c: Any) -> CloudInit | None:
    body = c.mapping(value, path, {"ssh_keys", "user_data", "network_config"})
    if body is None:
        return None
    try:
        keys = tuple(cloudinit.check_ssh_keys(body.get("ssh_keys") or [],
                                              f"{path}.ssh_keys"))
        user = (cloudinit.check_user_data(body["user_data"], f"{path}.user_data")
                if body.get("user_data") is not None else None)
        network = (cloudinit.check_network_config(body["network_config"],
                                                  f"{path}.network_config")
                   if body.get("network_config") is not None else None)
    except InvalidInput as exc:
        c.bad(exc.field or path, exc.message)
        return None
    return CloudInit(keys, user, network)


def _boot_file(value: Any, path: str, c: Any) -> BootFile | None:
    if isinstance(value, dict):
        volume = _volume(value, path, c)
        return BootFile(volume=volume) if volume else None
    text = c.string(value, path)
    if text is not None and not text.startswith("/"):
        c.bad(path, f"expected an absolute path or {{pool, name}} of a volume, got {text!r}")
        return None
    return BootFile(path=text) if text else None


def _kickstart(name: str, key: Any, body: dict[str, Any], description: str,
               c: Any) -> Template | None:
    missing = [k for k in ("kernel", "initrd", "cmdline") if k not in body]
    for k in missing:
        c.bad(f"{key}.{k}", "a kickstart template needs its installer's kernel, initrd and "
                            "cmdline (with the kickstart, preseed or autoinstall location)")
    if missing:
        return None
    kernel = _boot_file(body["kernel"], f"{key}.kernel", c)
    initrd = _boot_file(body["initrd"], f"{key}.initrd", c)
    cmdline = c.string(body["cmdline"], f"{key}.cmdline")
    if cmdline is not None and len(cmdline) > 4096:
        c.bad(f"{key}.cmdline", "expected at most 4096 characters (a kernel command line)")
        return None
    if kernel is None or initrd is None or cmdline is None:
        return None
    return Template(name, "kickstart", description, kernel=kernel, initrd=initrd,
                    cmdline=cmdline)


def unlisted_pool_problems(templates: dict[str, Template], hardware_pools: dict[str, Any],
                           c: Any) -> None:
    """A problem of ``c`` (templates.yml) for each template volume in a storage pool that a
    hardware pool does not list: provisiond keeps only listed pools in its inventory, and
    a pool of templates is listed with ``templates_only: true`` (never a VM's disk)."""
    for template in templates.values():
        refs = [("volume", template.volume)]
        refs += [(k, f.volume if f else None) for k, f in (("kernel", template.kernel),
                                                            ("initrd", template.initrd))]
        for key, ref in refs:
            if ref is None:
                continue
            for hw in hardware_pools.values():
                if ref.pool not in {p.name for p in hw.storage_pools}:
                    c.bad(f"{template.name}.{key}.pool",
                          f"storage pool {ref.pool} is not listed in hardware pool "
                          f"{hw.name}'s storage_pools; list it there (as {{name: "
                          f"{ref.pool}, templates_only: true}} if no VM disk may go to it)")
