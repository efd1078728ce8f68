"""The API fuzz as a long run: many junk calls on one provisiond process, with a random seed.

    .venv/bin/python bench/fuzz_api.py [--examples 20000] [--seed S] [--include BUG,...|all]

The same calls and the same property as ``tests/daemon/api/test_fuzz.py`` (see
``harness/api_fuzz.py``): never a 5xx, every 4xx with the JSON error body, no traceback in
the daemon's log, the daemon alive and healthy at the end. It does not stop at the first
violation: it counts them, prints the first few (with the seed, to replay), and prints at
the end the examples run, the statuses seen and the number of 5xx. Exit status 0 only when
nothing broke the property.

Input classes in ``KNOWN_BUGS`` are left out unless ``--include`` names them ("all": every
one), to see them in numbers or to check a fix.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from harness.api_fuzz import (  # noqa: E402
    FUZZ_DAEMON,
    FUZZ_POOLS,
    KNOWN_BUGS,
    parser_refused,
    ApiCall,
    LogWatch,
    api_calls,
    call_daemon,
    seed_requests,
    violation,
)
from harness.daemon import Daemon, OTHER_USER, daemon_config  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--examples", type=int, default=20_000,
                   help="hypothesis examples to run (each 1-3 calls; default 20000)")
    p.add_argument("--seed", type=int, default=None, help="seed (default: random, printed)")
    p.add_argument("--include", default="",
                   help="known bug classes to fuzz anyway, comma-separated, or 'all' "
                        f"({', '.join(KNOWN_BUGS)})")
    p.add_argument("--no-other-user", action="store_true",
                   help=f"never call as {OTHER_USER} (those calls spawn a subprocess)")
    p.add_argument("--batch", type=int, default=1000,
                   help="examples per hypothesis run (default 1000; bounds memory)")
    p.add_argument("--show", type=int, default=10, help="violations to print (default 10)")
    p.add_argument("--save", metavar="FILE",
                   help="write every violating call in full to FILE, one JSON line each "
                        "(method, url, headers, body as latin-1, as_user; and the five calls "
                        "before it), to replay it")
    p.add_argument("--keep", action="store_true", help="keep the daemon's directory")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    include = set(KNOWN_BUGS) if args.include == "all" else {
        b for b in args.include.split(",") if b}
    unknown = include - set(KNOWN_BUGS)
    if unknown:
        print(f"unknown bug classes: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    run_seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"seed {run_seed} (replay: --seed {run_seed} --examples {args.examples}"
          + (f" --include {','.join(sorted(include))}" if include else "") + ")", flush=True)
    skipped = sorted(set(KNOWN_BUGS) - include)
    if skipped:
        print(f"left out (known bugs): {', '.join(skipped)}", flush=True)

    directory = Path(tempfile.mkdtemp(prefix="provisiond-fuzz-"))
    directory.chmod(0o755)  # the other uid's client must reach the socket
    d = Daemon(directory, daemon_config(directory, resource_pools=FUZZ_POOLS,
                                        daemon=FUZZ_DAEMON))
    d.start()
    statuses: Counter[int] = Counter()
    kinds: Counter[str] = Counter()
    violations: list[tuple[str, str]] = []
    examples = calls_made = 0
    started = time.monotonic()
    dead = False
    try:
        ids, keys = seed_requests(d)
        watch = LogWatch(d.log_path)
        strategy = st.lists(api_calls(ids, keys, include,
                                      other_user=None if args.no_other_user else OTHER_USER),
                            min_size=1, max_size=3)

        def fuzz(calls: list[ApiCall]) -> None:
            nonlocal examples, calls_made, dead
            if dead:
                return
            examples += 1
            for call in calls:
                calls_made += 1
                recent.append(call)
                try:
                    reply = call_daemon(d, call)
                except (BrokenPipeError, ConnectionResetError):
                    # As in tests/daemon/api/test_fuzz.py: aiohttp's parser drops a connection
                    # whose request line or headers are over its limits: a refusal too, if
                    # it logged no traceback and the daemon lives.
                    statuses[-1] += 1
                    if "Traceback" in watch.new():
                        record("traceback in the daemon's log", call)
                    continue
                except Exception as exc:  # no answer at all (a timeout, ...)
                    statuses[-2] += 1
                    record(f"no answer: {type(exc).__name__}: {exc}", call)
                    continue
                statuses[reply.status] += 1
                why = violation(call, reply.status, reply.body, reply.headers)
                logged = watch.new()
                if why and not parser_refused(reply.status, reply.body, logged, call.method):
                    record(why, call)
                if "Traceback" in logged:
                    record("traceback in the daemon's log", call)
                if d.proc is not None and d.proc.poll() is not None:
                    record(f"daemon exited {d.proc.returncode}", call)
                    dead = True
                    return
            if examples % 1000 == 0:
                rate = examples / (time.monotonic() - started)
                print(f"  {examples} examples, {calls_made} calls, {rate:.0f} examples/s, "
                      f"{len(violations)} violations", file=sys.stderr, flush=True)

        recent: deque[ApiCall] = deque(maxlen=6)  # the call and the five before it

        def as_json(call: ApiCall) -> dict[str, Any]:
            return {"method": call.method, "url": call.url,
                    "headers": {k: v.decode("latin-1") if isinstance(v, bytes) else v
                                for k, v in call.headers.items()},
                    "body": None if call.raw is None else call.raw.decode("latin-1"),
                    "as_user": call.as_user}

        def record(why: str, call: ApiCall) -> None:
            kinds[why.split(":")[0][:60]] += 1
            violations.append((why, call.short(200)))
            if args.save:
                with open(args.save, "a") as out:
                    out.write(json.dumps({"why": why, **as_json(call), "before": [
                        as_json(c) for c in list(recent)[:-1]]}) + "\n")
            if len(violations) <= args.show:
                print(f"VIOLATION {len(violations)}: {why[:400]}\n  {call.short(200)}",
                      flush=True)

        # In batches of fresh hypothesis runs (seeds run_seed, run_seed + 1, ...): one
        # run's memory grows with its examples.
        batch = 0
        while examples < args.examples and not dead:
            n, before = min(args.batch, args.examples - examples), examples
            seed(run_seed + batch)(settings(
                max_examples=n, deadline=None, database=None, phases=[Phase.generate],
                suppress_health_check=list(HealthCheck))(given(strategy)(fuzz)))()
            batch += 1
            if examples == before:
                break  # hypothesis ran nothing: the search space is exhausted
        healthy = not dead and d.call("GET", "/v1/health").status == 200
    finally:
        elapsed = time.monotonic() - started
        if d.proc is not None and d.proc.poll() is None:
            d.stop()
        tracebacks = d.log().count("Traceback")
        if args.keep:
            print(f"daemon directory kept: {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)

    fivexx = sum(n for status, n in statuses.items() if status >= 500)
    print(f"examples run: {examples} ({calls_made} calls in {elapsed:.1f} s, "
          f"{examples / max(elapsed, 1e-9):.0f} examples/s)")
    print("statuses seen: " + ", ".join(
        f"{ {-1: 'dropped', -2: 'no answer'}.get(s, s)}: {n}"
        for s, n in sorted(statuses.items())))
    print(f"5xx count: {fivexx}")
    print(f"violations: {len(violations)}" + (
        " (" + "; ".join(f"{k}: {n}" for k, n in kinds.most_common()) + ")" if kinds else ""))
    print(f"tracebacks in the daemon's log: {tracebacks}")
    print(f"daemon alive and healthy at the end: {'yes' if healthy else 'NO'}")
    print(f"seed {run_seed}")
    return 0 if healthy and not violations and not fivexx and not tracebacks else 1


if __name__ == "__main__":
    sys.exit(main())
