"""The API fuzz: hypothesis strategies for junk HTTP calls, and the property they must hold.

Shared by ``tests/daemon/api/test_fuzz.py`` (a bounded, derandomized run in the suite) and
``bench/fuzz_api.py`` (a long run with a random seed). Every call is a well-formed HTTP/1.1
message (``http.client`` frames it), whose method, path, query, headers and body are junk:
the daemon must answer each with a status below 500, and every 4xx with the API's error
body ``{"error": {"code": str, "message": non-empty str}}``.

``KNOWN_BUGS`` names classes of input that the daemon is known to mishandle; the
generators leave them out unless told to include them (``include=``), and
``KNOWN_BUG_CALLS`` holds one call of each class for the strict-xfail regression tests.
When a bug is fixed, its regression test passes (XPASS, which fails a strict xfail):
remove it from ``KNOWN_BUGS`` so the fuzz covers that class again.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote, urlencode

from hypothesis import strategies as st

from harness.daemon import ME, OTHER_USER

# --------------------------------------------------------------------------- known bugs

INPUT_CLASSES: dict[str, str] = {
    "deep-json": "a JSON body nested deeper than Python's recursion limit",
    "idempotency-key-non-utf8": "an Idempotency-Key header whose bytes are not UTF-8",
    "content-encoding": "Content-Encoding gzip/deflate on a body that does not decompress",
    "malformed-http": (
        "a message aiohttp's HTTP parser refuses (unknown method or Content-Encoding, junk "
        "framing, control characters, an over-long request line): aiohttp answers 400 "
        "itself, in text, before the app; the daemon must log one line, no traceback"),
    "expect-junk": "an Expect header other than 100-continue",
}
"""Classes of hostile input the fuzz generates (each once broke the daemon; see git log)."""

KNOWN_BUGS: dict[str, str] = {}
"""Input classes the daemon is known to answer wrongly, left out of the fuzz until fixed
(none now)."""


@dataclass(frozen=True)
class ApiCall:
    """One HTTP call on the daemon's socket."""

    method: str
    url: str
    raw: bytes | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    as_user: str | None = None

    def short(self, limit: int = 300) -> str:
        """For reports: the call, truncated."""
        body = None if self.raw is None else self.raw[:limit]
        size = "" if self.raw is None else f" ({len(self.raw)} bytes)"
        return (f"{self.method} {self.url[:limit]} headers={self.headers!r:.{limit}} "
                f"body={body!r}{size}" + (f" as {self.as_user}" if self.as_user else ""))


KNOWN_BUG_CALLS: dict[str, ApiCall] = {
    "deep-json": ApiCall("POST", "/v1/requests", b"[" * 5000 + b"]" * 5000,
                         {"Content-Type": "application/json"}),
    "idempotency-key-non-utf8": ApiCall(
        "POST", "/v1/requests", b'{"template": "ipxe", "size": "small", "resource_pool": "rp"}',
        {"Content-Type": "application/json", "Idempotency-Key": b"caf\xe9"}),
    "content-encoding": ApiCall("POST", "/v1/placement/explain",
                                b'{"template": "ipxe", "size": "small"}',
                                {"Content-Type": "application/json", "Content-Encoding": "gzip"}),
    "expect-junk": ApiCall("GET", "/v1/health", None, {"Expect": "junk"}),
    "malformed-http": ApiCall("POST", "/v1/requests", b'{"template": "ipxe"}',
                              {"Content-Type": "application/json", "Content-Encoding": "br"}),
}

# --------------------------------------------------------------------------- vocabulary

TEMPLATES = ["ipxe", "ipxe-file"]
SIZES = ["small", "tiny"]
RESOURCE_POOLS = ["rp", "rp2", "rp3"]
STATES = ["requested", "authorized", "storage-searching", "storage-creating", "defining",
          "done", "failed"]
ENDPOINTS = [
    ("GET", "/v1/health"), ("GET", "/v1/catalog"), ("POST", "/v1/requests"),
    ("GET", "/v1/requests"), ("GET", "/v1/requests/{id}"), ("GET", "/v1/requests/{id}/log"),
    ("POST", "/v1/requests/{id}/cancel"), ("POST", "/v1/placement/explain"),
    ("POST", "/v1/reconcile"), ("GET", "/v1/openapi.json"), ("GET", "/metrics"),
]
BODY_FIELDS = ["template", "size", "resource_pool", "name", "apply"]
MAX_URL = 8000
QUERY_KEYS = ["state", "owner", "resource_pool", "since", "until"]

PRINTABLE = string.ascii_letters + string.digits + string.punctuation + " "
# Explicit alphabets (no unicode categories: no charmap cache written to the work tree).
UNICODE_JUNK = ("é", "ß", "ı", "ﬁ", "İ", "\u00a0", "\u200b", "\u202e", "\ufeff", "\uffff",
                "中", "𝔘", "😀", "\x00", "\x01", "\x1b", "\x7f", "\t", "\n", "\\", "\"", "'",
                "/", "%", "?", "#", "&", "=", ";", "..", "%00", "%2F", "%ZZ", "%ff")
# Every method aiohttp's parser (llhttp) knows; anything else is refused by the parser.
# CONNECT is left out: llhttp takes what follows its headers for a tunnel, so a body
# becomes a second, unparseable message (a "malformed-http" case).
HTTP_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "COPY",
                "LOCK", "MKCOL", "MOVE", "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "BIND",
                "REBIND", "UNBIND", "ACL", "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE",
                "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "PURGE", "MKCALENDAR", "LINK",
                "UNLINK", "SOURCE", "QUERY"]
CONTENT_TYPES = ["application/json", "application/json; charset=utf-8",
                 "application/json; charset=latin-1", "APPLICATION/JSON", "text/plain",
                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                 "multipart/form-data", "application/octet-stream", "", "json", "*/*",
                 "application/json;;;", "application/json; boundary=\"", "text/json",
                 "application/merge-patch+json", "application/json\t"]
HEADER_NAMES = ["Accept", "X-Forwarded-For", "X-Remote-User", "Authorization", "Origin",
                "Cookie", "Range", "If-None-Match", "Expect", "Accept-Encoding", "Connection",
                "User-Agent"]

# Strategies are built once here (building them per draw is what makes hypothesis slow).


def _text(max_size: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(alphabet=PRINTABLE, max_size=max_size),
        st.lists(st.sampled_from(UNICODE_JUNK + tuple(PRINTABLE)), max_size=max_size).map(
            "".join))


def _names(known: list[str]) -> st.SearchStrategy[str]:
    """A known name, a near miss, or junk."""
    one = st.sampled_from(known)
    return st.one_of(one, one.map(str.upper), one.map(lambda s: s + " "), TEXT_20)


TEXT_10, TEXT_12, TEXT_20, TEXT_40, TEXT_60, TEXT_80 = (_text(n) for n in (10, 12, 20, 40, 60,
                                                                           80))
HUGE = st.builds(lambda ch, n: ch * n, st.sampled_from(["a", "é", "\x00", "😀", "["]),
                 st.sampled_from([201, 1000, 20_000, 70_000]))
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                    st.floats(allow_nan=True, allow_infinity=True), TEXT_40)
JSON_JUNK = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(TEXT_10, inner, max_size=4)), max_leaves=12)
JSON_JUNK_SMALL = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(TEXT_10, inner, max_size=3)), max_leaves=4)
FIELD_JUNK = st.one_of(SCALARS, JSON_JUNK_SMALL, HUGE)
GOOD_VALUES = {
    "template": _names(TEMPLATES), "size": _names(SIZES),
    "resource_pool": _names(RESOURCE_POOLS),
    "name": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,70}", fullmatch=True),
    "apply": st.booleans(),
}


@st.composite
def _body_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON object with known keys (good or bad values) and sometimes unknown ones."""
    obj: dict[str, Any] = {}
    for key, good in GOOD_VALUES.items():
        if draw(st.integers(0, 3)) < (2 if key in ("template", "size") else 1):
            obj[key] = draw(good)
    # Wrong types, nulls and huge values on known keys; unknown keys.
    for _ in range(draw(st.integers(0, 2))):
        obj[draw(st.sampled_from(BODY_FIELDS))] = draw(FIELD_JUNK)
    for _ in range(draw(st.integers(0, 1))):
        obj[draw(TEXT_12)] = draw(JSON_JUNK_SMALL)
    return obj


BODY_OBJECTS = _body_objects()
VALID_CREATE = st.fixed_dictionaries(
    {"template": st.sampled_from(TEMPLATES), "size": st.sampled_from(SIZES),
     "resource_pool": st.sampled_from(RESOURCE_POOLS)},
    optional={"name": st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True)})


@st.composite
def _mutated_create(draw: st.DrawFn) -> dict[str, Any]:
    """A good create body with one or two things wrong: a value of the wrong type or
    size, a field missing, an unknown field, a name libvirt would not take."""
    obj = dict(draw(VALID_CREATE))
    for _ in range(draw(st.integers(1, 2))):
        how = draw(st.integers(0, 4))
        key = draw(st.sampled_from(BODY_FIELDS))
        if how == 0:
            obj.pop(key, None)
        elif how == 1:
            obj[draw(TEXT_12)] = draw(SCALARS)
        elif how == 2 and key in GOOD_VALUES:
            obj[key] = draw(GOOD_VALUES[key])
        elif how == 3:
            obj["name"] = draw(st.one_of(TEXT_80, st.sampled_from(
                ["-x", ".x", "a" * 63, "a" * 64, "a b", "a/b", "é", "x\x00", "<x>", "a'b"])))
        else:
            obj[key] = draw(FIELD_JUNK)
    return obj


MUTATED_CREATE = _mutated_create()
CREATE_BODIES = st.one_of(VALID_CREATE, VALID_CREATE, MUTATED_CREATE, MUTATED_CREATE,
                          BODY_OBJECTS).map(lambda o: json.dumps(o).encode())
EXPLAIN_BODIES = st.fixed_dictionaries(
    {"template": st.sampled_from(TEMPLATES), "size": st.sampled_from(SIZES)},
    optional={"resource_pool": st.sampled_from(RESOURCE_POOLS)}).map(
        lambda o: json.dumps(o).encode())
RECONCILE_BODIES = st.one_of(
    st.fixed_dictionaries({"apply": st.one_of(st.booleans(), SCALARS)}),
    st.fixed_dictionaries({"apply": st.booleans()}, optional={"dry": SCALARS}),
    st.just({}), JSON_JUNK_SMALL).map(lambda o: json.dumps(o).encode())
RAW_JUNK = st.one_of(
    st.binary(max_size=300),
    st.sampled_from([
        b"", b"null", b"{", b'{"template": "ipxe",}', b'{"template": "\\ud800", "size": "small"}',
        b'{"template": "ipxe", "template": "ipxe", "size": "small"}',
        b'\xef\xbb\xbf{"template": "ipxe", "size": "small"}',
        '{"template": "ipxe", "size": "small"}'.encode("utf-16"),
        b'{"template": NaN, "size": Infinity}', b'{"size": ' + b"1" * 5000 + b"}",
        b'{"apply": tru', b"\xff\xfe\x00\x00",
        b'{"a": ' * 50 + b"1" + b"}" * 50,  # nested, but far from the recursion limit
        b"[" * 200 + b"]" * 200, b'{"apply": ' + b"[" * 300 + b"]" * 300 + b"}",
        b'template=ipxe&size=small', b"--x\r\nContent-Disposition: form-data\r\n\r\n\r\n--x--",
    ]),
    st.sampled_from([10, 65_530, 65_540, 70_000]).map(lambda n: b" " * n + b"{}"),
    BODY_OBJECTS.map(lambda o: json.dumps(o)[:-1].encode()),  # truncated
    BODY_OBJECTS.map(lambda o: json.dumps(o, ensure_ascii=False).encode("latin-1", "replace")),
)
DEEP_JSON = st.one_of(
    st.integers(900, 30_000).map(lambda n: b"[" * n + b"]" * n),
    st.integers(900, 20_000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.integers(900, 20_000).map(lambda n: b'{"template": ' + b"[" * n + b"]" * n + b"}"),
)
QUERY_VALUES = st.one_of(
    st.sampled_from(STATES + RESOURCE_POOLS + ["", "nan", "inf", "-inf", "1e400", "1e308",
                                               "-1e308", "1_0", "0x10", "now", "today"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(-(10**30), 10**30).map(str),
    st.sampled_from([
        "0001-01-01T00:00:00+01:00", "0001-01-01", "9999-12-31T23:59:59-01:00",
        "9999-12-31T23:59:59.999999+14:00", "2026-01-31T12:00:00Z", "2026-02-30",
        "2026-01-31T25:00:00", "2026-01-31T12:00:00+24:00", "2026-W05-6",
        "2026-01-31 12:00", "20260131T120000", "2026-01-31T12:00:00.123456789Z"]),
    st.datetimes().map(lambda d: d.isoformat()),
    TEXT_40, HUGE,
)
QUERY_PAIRS = st.lists(st.tuples(st.one_of(st.sampled_from(QUERY_KEYS), TEXT_10),
                                 QUERY_VALUES), max_size=4)


@st.composite
def _query_strings(draw: st.DrawFn) -> str:
    pairs = draw(QUERY_PAIRS)
    style = draw(st.integers(0, 4))
    if style == 0:
        return ""
    if style == 1:
        return "?" + urlencode(pairs)
    if style == 2:  # keys without values, stray separators
        return "?" + "&".join(quote(k) for k, _ in pairs) + draw(st.sampled_from(["", "&", "&&"]))
    if style == 3:  # raw junk, percent-encoded only where http.client insists
        return "?" + quote(draw(TEXT_60), safe="=&%;+/?:@!$'()*,")
    return "?" + urlencode(pairs, safe="%:+")


QUERY_STRINGS = _query_strings()
JUNK_IDS = st.one_of(
    st.sampled_from(["..", ".", "%2e%2e", "%2F", "%00", "%ZZ", "%", "%ff%fe", "a%2Fb", "%252F",
                     "null", "-1", "0" * 32, "f" * 32 + "x", "x" * 1000, "~", "{id}",
                     "%7Bid%7D", "%E2%80%AE", "%F0%9F%98%80"]),
    st.builds(lambda text, safe: quote(text, safe=safe), TEXT_60,
              st.sampled_from(["", "/", "%", "@:!$&'()*+,;="])),
)
SEGMENT_WORDS = st.sampled_from(["v1", "requests", "log", "cancel", "placement", "explain",
                                 "reconcile", "health", "", ".", "..", "%2e"])
ODD_PATHS = st.sampled_from(["/v1", "/v1/", "//v1/health", "/v1//requests", "/v1/requests/",
                             "/v1/health/", "/V1/health", "/", "/v2/requests",
                             "/v1/requests/x/log/", "/v1/./health", "/v1/%2e%2e/v1/health",
                             "/metrics/"])
COMMON_METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])
ALL_METHODS = st.sampled_from(HTTP_METHODS)
PARSER_REFUSED_METHODS = st.one_of(st.sampled_from(["get", "Get", "PRI", "FOO", "CONNECT"]),
                                   st.from_regex(r"[A-Za-z]{1,12}", fullmatch=True))
HEADER_VALUES = st.one_of(
    st.text(alphabet=PRINTABLE, max_size=50),
    st.text(alphabet=PRINTABLE, min_size=190, max_size=260),
    st.sampled_from(["", " ", "deploy-7", "deploy-7 ", "a" * 200, "a" * 201, "\t x",
                     "\u00e9".encode("utf-8"), "😀".encode("utf-8")]),
)
NON_UTF8_HEADER_VALUES = st.one_of(
    st.text(alphabet=PRINTABLE + "éàü\u00ff\u0080", min_size=1, max_size=30).filter(
        lambda s: not s.isascii()),
    st.binary(min_size=1, max_size=30).map(
        lambda b: bytes(c if 0x20 <= c != 0x7f else 0x41 for c in b)),
)
EXTRA_HEADER_NAMES = st.one_of(st.sampled_from(HEADER_NAMES),
                               st.from_regex(r"X-[A-Za-z0-9-]{1,20}", fullmatch=True))
CONTENT_TYPE_VALUES = st.one_of(st.sampled_from(CONTENT_TYPES),
                                st.text(alphabet=PRINTABLE, max_size=40))
MALFORMED_HEADERS = st.sampled_from([
    {"Content-Encoding": "br"}, {"Content-Encoding": "zstd"}, {"Content-Encoding": "junk"},
    {"Transfer-Encoding": "chunked"}, {"X-Nul": "a\x00b"}, {"X-Ctl": "a\x01b"}])


def api_calls(ids: list[str], keys: list[str], include: Iterable[str] = (),
              other_user: str | None = None) -> st.SearchStrategy[ApiCall]:
    """Junk calls. ``ids``: real request ids to aim at; ``keys``: idempotency keys to
    reuse (so that a key meets a different body); ``include``: KNOWN_BUGS to fuzz anyway;
    ``other_user``: a second uid that makes a few of the calls (None: never)."""
    include = frozenset(include) | (frozenset(INPUT_CLASSES) - frozenset(KNOWN_BUGS))
    unknown = include - set(INPUT_CLASSES)
    if unknown:
        raise ValueError(f"unknown bug classes: {sorted(unknown)}")
    id_options = [JUNK_IDS]
    if ids:
        real = st.sampled_from(ids)
        id_options = [real, real, real.map(str.upper), real.map(lambda i: i + "%20"), JUNK_IDS]
    id_segments = st.one_of(*id_options)
    methods = st.one_of(COMMON_METHODS, COMMON_METHODS, ALL_METHODS,
                        *([PARSER_REFUSED_METHODS] if "malformed-http" in include else []))
    raw = st.one_of(RAW_JUNK, *([DEEP_JSON] if "deep-json" in include else []))
    header_values = st.one_of(
        HEADER_VALUES,
        *([NON_UTF8_HEADER_VALUES] if "idempotency-key-non-utf8" in include else []))
    keys_or_junk = st.one_of(st.sampled_from(keys), header_values) if keys else header_values
    expects = st.sampled_from(["100-continue", "100-Continue"] + (
        ["junk", "", "200-ok"] if "expect-junk" in include else []))
    segments = st.lists(st.one_of(SEGMENT_WORDS, id_segments), min_size=1, max_size=5)

    json_bodies = st.one_of(CREATE_BODIES, RECONCILE_BODIES,
                            JSON_JUNK.map(lambda o: json.dumps(o).encode()))
    any_body = st.one_of(st.none(), json_bodies, raw)
    create_body = st.one_of(CREATE_BODIES, CREATE_BODIES, CREATE_BODIES, any_body)
    explain_body = st.one_of(EXPLAIN_BODIES, EXPLAIN_BODIES, CREATE_BODIES, any_body)
    reconcile_body = st.one_of(RECONCILE_BODIES, RECONCILE_BODIES, st.none(), any_body)
    by_id = st.sampled_from(["/v1/requests/{id}", "/v1/requests/{id}/log",
                             "/v1/requests/{id}/cancel"])

    @st.composite
    def targets(draw: st.DrawFn) -> tuple[str, str, bytes | None, str]:
        """(method, path, body, query) for one of a few scenarios, from close to the
        API's use to junk everywhere."""
        scenario = draw(st.integers(0, 9))
        if scenario <= 2:  # create (or explain, same body)
            if scenario < 2:
                return "POST", "/v1/requests", draw(create_body), ""
            return "POST", "/v1/placement/explain", draw(explain_body), ""
        if scenario == 3:
            return "POST", "/v1/reconcile", draw(reconcile_body), ""
        if scenario <= 5:  # one request, by an id real or not
            template = draw(by_id)
            method = "POST" if template.endswith("cancel") else "GET"
            if draw(st.integers(0, 4)) == 2:
                method = draw(methods)
            body = draw(st.one_of(st.none(), st.none(), any_body))
            return method, template.replace("{id}", draw(id_segments)), body, ""
        if scenario == 6:  # the list and its filters
            return "GET", "/v1/requests", draw(st.one_of(st.none(), any_body)), draw(
                QUERY_STRINGS)
        # Anything: a route with any method, made-up paths, encoded junk.
        kind = draw(st.integers(0, 3))
        if kind == 0:
            path = draw(st.sampled_from(ENDPOINTS))[1].replace("{id}", draw(id_segments))
        elif kind == 1:
            path = "/v1/" + "/".join(draw(segments))
        elif kind == 2:
            path = draw(ODD_PATHS)
        else:
            path = "/v1/" + quote(draw(TEXT_80), safe=draw(st.sampled_from(["/", "/%", ""])))
        return draw(methods), path, draw(any_body), draw(QUERY_STRINGS)

    @st.composite
    def header_sets(draw: st.DrawFn) -> dict[str, Any]:
        headers: dict[str, Any] = {}
        if draw(st.integers(0, 3)) == 1:
            headers["Content-Type"] = draw(CONTENT_TYPE_VALUES)
        if draw(st.integers(0, 2)) == 1:
            headers["Idempotency-Key"] = draw(keys_or_junk)
        for _ in range(draw(st.integers(0, 2))):
            name = draw(EXTRA_HEADER_NAMES)
            headers[name] = draw(expects if name == "Expect" else header_values)
        if "content-encoding" in include and draw(st.integers(0, 9)) == 5:
            headers["Content-Encoding"] = draw(st.sampled_from(["gzip", "deflate", "GZIP"]))
        if "malformed-http" in include and draw(st.integers(0, 19)) == 10:
            headers.update(draw(MALFORMED_HEADERS))
        return headers

    target_strategy, header_strategy = targets(), header_sets()

    @st.composite
    def calls(draw: st.DrawFn) -> ApiCall:
        method, path, body, query = draw(target_strategy)
        url = path + query
        if "malformed-http" not in include and len(url) > MAX_URL:
            url = url[:MAX_URL]  # aiohttp's parser refuses request lines past 8190 bytes
            if "%" in url[-2:]:
                url = url[:url.rindex("%")]
        headers = draw(header_strategy)
        as_user = None
        if other_user is not None and draw(st.integers(0, 15)) == 7 and all(
                not isinstance(v, bytes) and v.isascii() for v in headers.values()) and (
                body is None or (len(body) <= 4096 and _is_utf8(body))):
            # (that call goes through a subprocess's stdin as JSON: small UTF-8 bodies)
            as_user = other_user
        return ApiCall(method, url, body, headers, as_user)

    return calls()


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


# --------------------------------------------------------------------------- the property


DOCUMENTED_4XX = frozenset({400, 403, 404, 405, 409, 413, 415})
"""The client errors the API answers with (README, "The API"; 405 for a wrong method)."""


def violation(call: ApiCall, status: int, body: Any, headers: dict[str, str]) -> str | None:
    """Why this answer breaks the property, or None if it holds."""
    if status >= 500:
        return f"{status} answer"
    if 400 <= status < 500 and status not in DOCUMENTED_4XX:
        return f"{status}: not one of the API's error statuses {sorted(DOCUMENTED_4XX)}"
    if 400 <= status < 500 and call.method != "HEAD":
        err = body.get("error") if isinstance(body, dict) else None
        if not (isinstance(err, dict) and isinstance(err.get("code"), str) and err["code"]
                and isinstance(err.get("message"), str) and err["message"].strip()):
            return f"{status} without the error body: {str(body)[:300]!r}"
        if "json" not in headers.get("Content-Type", headers.get("content-type", "")):
            return f"{status} error body not served as JSON"
    if 200 <= status < 300 and call.method != "HEAD" and not call.url.startswith("/metrics") \
            and not isinstance(body, (dict, list)):
        return f"{status} without a JSON body: {str(body)[:300]!r}"
    return None


def parser_refused(status: int, body: Any, logged: str, method: str = "GET") -> bool:
    """An answer aiohttp gave itself, in text, before the app (the API's own errors are
    always JSON). Fine, as long as it did not put a traceback in the daemon's log:

    - a 400 of its HTTP parser: the message was not HTTP the API could read;
    - a 417 to an ``Expect`` other than ``100-continue`` sent to a path or method the API
      does not serve (aiohttp checks the expectation before it routes to the app's 404
      and 405 answers; on the API's own routes the answer is the API's JSON 400). An
      answer to HEAD has no body to tell it by.
    """
    if "Traceback" in logged:
        return False
    if method == "HEAD" and body is None:
        return status == 417
    return isinstance(body, str) and (
        status == 400 or (status == 417 and body.startswith("Unknown Expect:")))


def call_daemon(daemon: Any, call: ApiCall) -> Any:
    """Make ``call`` with ``harness.daemon.Daemon.call``; returns its Reply."""
    return daemon.call(call.method, call.url, raw=call.raw, headers=dict(call.headers),
                       as_user=call.as_user)


# --------------------------------------------------------------------------- the daemon

# The caller may create in rp and rp2 (quota: 3 VMs) and is CLOUD_ADMIN of rp (so that
# the reconcile body is parsed); rp3 is somebody else's. OTHER_USER administers rp only.
FUZZ_DAEMON = {"body_timeout": 1}
"""``daemon`` settings of the fuzzed daemon: a body that never completes (a chunked
message without its chunks, ...) is answered after 1 s instead of 10."""

FUZZ_POOLS = {
    "rp": {"hardware_pool": "hw", "grants": {
        "CLOUD_CREATE": {"users": [ME, "alice"]},
        "CLOUD_ADMIN": {"users": [ME, OTHER_USER]}}},
    "rp2": {"hardware_pool": "hw", "quota": {"vms": 3},
            "grants": {"CLOUD_CREATE": {"users": [ME]}}},
    "rp3": {"hardware_pool": "hw", "grants": {"CLOUD_CREATE": {"users": ["alice"]}}},
}
"""``resource_pools`` of the fuzzed daemon's configuration (``harness.daemon.daemon_config``)."""


def seed_requests(daemon: Any) -> tuple[list[str], list[str]]:
    """A few real requests (done, one by idempotency key) for the fuzz to aim at; returns
    (their ids, idempotency keys for the fuzz to reuse)."""
    body = {"template": "ipxe", "size": "small", "resource_pool": "rp"}
    ids = [daemon.call("POST", "/v1/requests", body, headers={"Idempotency-Key": "deploy-7"})
           .body["id"]]
    ids.append(daemon.call("POST", "/v1/requests", {**body, "template": "ipxe-file",
                                                    "name": "seed-2"}).body["id"])
    for request_id in ids:
        daemon.wait_terminal(request_id)
    return ids, ["deploy-7", "fuzz-key"]


class LogWatch:
    """The part of a daemon's log written since the last look."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def new(self) -> str:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        self.offset += len(data)
        return data.decode(errors="replace")


__all__ = [
    "FUZZ_DAEMON", "FUZZ_POOLS", "KNOWN_BUGS", "KNOWN_BUG_CALLS", "ApiCall", "LogWatch",
    "api_calls", "call_daemon", "seed_requests", "violation",
]
