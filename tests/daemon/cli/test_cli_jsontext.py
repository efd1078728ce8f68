"""provctl's JSON (``daemon.cli.jsontext``) against ``json``: the same text, values, errors."""

from __future__ import annotations

import json
import math
import random

import pytest

from daemon.cli import jsontext

VALUES = [
    {}, [], "", 0, -1, 2**70, 1.5, -0.0, 1e300, 1e-7, True, False, None,
    "é ✓ 😀 \x00 \" \\ / \n\t", {"a": {"b": [1, {"c": []}, {}]}},
    {"vm": {"state": "running", "addresses": ["10.0.0.2", "fe80::1"]}, "id": "3f2a"},
    [[[[]]]], {"x": [None, True, False, "y"]}, (1, 2), {1: "int key", 2.5: "float",
                                                          True: "t", None: "n"},
    {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")},
]


def random_value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-10**20, 10**20)
    if kind == 2:
        return rng.uniform(-1e6, 1e6)
    if kind in (3, 4, 5):
        return "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0, 0x2FFF)]))
                       for _ in range(rng.randrange(12)))
    if kind in (6, 7):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {str(random_value(rng, 3)): random_value(rng, depth + 1)
            for _ in range(rng.randrange(4))}


RANDOM = [random_value(random.Random(seed)) for seed in range(300)]


def same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("values", [VALUES, RANDOM], ids=["chosen", "random"])
def test_text_is_what_json_writes(values):
    for value in values:
        assert jsontext.dumps(value) == json.dumps(value)
        assert jsontext.pretty(value) == json.dumps(value, indent=2)


@pytest.mark.parametrize("values", [VALUES, RANDOM], ids=["chosen", "random"])
def test_values_are_what_json_reads(values):
    for value in values:
        check_read(value)


def check_read(value: object) -> None:
    for text in (json.dumps(value), json.dumps(value, indent=2), f" \n{json.dumps(value)}\r\n"):
        assert same(jsontext.loads(text), json.loads(text))
        assert same(jsontext.loads(text.encode()), json.loads(text.encode()))


@pytest.mark.parametrize("text", [
    b"", b"   ", b"{", b"[1,", b'{"a" 1}', b"[1] x", b"nul", b"\xff\xfe", b'"\\x"',
    b'"unterminated', "\ufeff{}", b"[1, 2,]", b"{'a': 1}",
])
def test_malformed_text_fails_as_json_fails(text):
    with pytest.raises(ValueError) as expected:
        json.loads(text)
    with pytest.raises(ValueError) as got:
        jsontext.loads(text)
    assert type(got.value) is type(expected.value)
    assert str(got.value) == str(expected.value)


def test_other_encodings_are_read_as_json_reads_them():
    for raw in (b'\xef\xbb\xbf{"a": 1}', '{"a": "é"}'.encode("utf-16"),
                '["x"]'.encode("utf-32-le")):
        assert jsontext.loads(raw) == json.loads(raw)


def test_what_json_cannot_write_fails_as_json_fails():
    cyclic: list[object] = []
    cyclic.append(cyclic)
    for value in (object(), {"a": {1, 2}}, {(1, 2): "tuple key"}, cyclic):
        for ours, theirs in ((jsontext.dumps, json.dumps),
                             (jsontext.pretty, lambda v: json.dumps(v, indent=2))):
            with pytest.raises((TypeError, ValueError)) as expected:
                theirs(value)
            with pytest.raises((TypeError, ValueError)) as got:
                ours(value)
            assert type(got.value) is type(expected.value)
            assert str(got.value) == str(expected.value)
