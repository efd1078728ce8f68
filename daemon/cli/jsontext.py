"""JSON for provctl without importing ``json``.

``import json`` costs a provctl run ~8 ms here (``json.decoder`` and ``json.encoder``
import ``re``, which imports ``enum``), while the work is done by the C module ``_json``
that both wrap. These functions drive ``_json`` the way ``json`` does and produce the
same results; anything they are not sure of (a malformed answer, a value ``_json`` does
not take) is handed to ``json`` itself, so its errors are the errors.
``tests/daemon/cli/test_cli_jsontext.py`` holds them against ``json`` side by side.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing typing costs every run
    from typing import Any

try:
    from _json import encode_basestring_ascii as _quote
    from _json import make_encoder as _make_encoder
    from _json import make_scanner as _make_scanner
except ImportError:  # an interpreter without the C accelerator: ``json`` does it all
    _make_scanner = _make_encoder = _quote = None

_WHITESPACE = " \t\n\r"
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Decoding:
    """What ``_json.make_scanner`` reads off ``json.JSONDecoder()``: its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_scan = _make_scanner(_Decoding()) if _make_scanner else None


def loads(raw: bytes | str) -> Any:
    """``json.loads(raw)``."""
    try:
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
        start = len(text) - len(text.lstrip(_WHITESPACE))
        value, end = _scan(text, start)  # type: ignore[misc]
        if text[end:].strip(_WHITESPACE) or text.startswith("\ufeff"):
            raise ValueError("not what json.loads takes")
        return value
    except Exception:  # noqa: BLE001 - json.loads says what is wrong, in its words
        import json

        return json.loads(raw)


def _not_serializable(value: Any) -> Any:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def dumps(value: Any) -> str:
    """``json.dumps(value)``: one line, ASCII."""
    if _make_encoder is None:
        import json

        return json.dumps(value)
    encode = _make_encoder({}, _not_serializable, _quote, None, ": ", ", ", False, False,
                           True)
    return "".join(encode(value, 0))


def _float(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    return float.__repr__(value)


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, float):
        return _float(key)
    if key is True or key is False or key is None:
        return {True: "true", False: "false", None: "null"}[key]
    if isinstance(key, int):
        return int.__repr__(key)
    raise TypeError(f"keys must be str, int, float, bool or None, not {key.__class__.__name__}")


def _pretty(value: Any, level: int, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(_quote(value))  # type: ignore[misc]
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(int.__repr__(value))
    elif isinstance(value, float):
        out.append(_float(value))
    elif isinstance(value, (list, tuple)):
        if not value:
            out.append("[]")
            return
        inner = "\n" + "  " * (level + 1)
        out.append("[")
        for i, item in enumerate(value):
            out.append(inner if i == 0 else "," + inner)
            _pretty(item, level + 1, out)
        out.append("\n" + "  " * level + "]")
    elif isinstance(value, dict):
        if not value:
            out.append("{}")
            return
        inner = "\n" + "  " * (level + 1)
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            out.append((inner if i == 0 else "," + inner) + _quote(_key(key)) + ": ")
            _pretty(item, level + 1, out)
        out.append("\n" + "  " * level + "}")
    else:
        _not_serializable(value)


def pretty(value: Any) -> str:
    """``json.dumps(value, indent=2)``, as ``provctl --json`` prints the API's answers."""
    if _quote is None:
        import json

        return json.dumps(value, indent=2)
    out: list[str] = []
    try:
        _pretty(value, 0, out)
    except (TypeError, RecursionError):
        import json

        return json.dumps(value, indent=2)  # raises as json does (a cycle, a bad type)
    return "".join(out)
