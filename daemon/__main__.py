"""``provisiond``: the daemon's command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from daemon import __version__
from daemon.config import DEFAULT_CONFIG, load_config
from daemon.config.host_checks import grant_warnings, host_problems, libvirt_warnings
from daemon.config.model import Config
from daemon.errors import ConfigError
from daemon.process.logs import FORMATS, setup_logging
from daemon.process.server import SocketInUse, serve


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The daemon's options."""
    parser = argparse.ArgumentParser(
        prog="provisiond",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Self-service VM provisioning daemon for libvirt. With no options it "
                    "serves the embedded default configuration (libvirt's test driver).",
        epilog="""\
where it listens and stores (unless daemon.socket / daemon.database say otherwise):
  socket    $XDG_RUNTIME_DIR/provisiond/provisiond.sock, else
            /tmp/provisiond-$UID/provisiond.sock (mode 0660); under systemd's
            provisiond.socket, the socket it passes
  database  $XDG_STATE_HOME/provisiond/provisiond.db, else
            ~/.local/state/provisiond/provisiond.db

signals:
  SIGTERM, SIGINT  stop accepting, let requests reach a durable state, exit 0
  SIGHUP           re-read sizes, templates, pools and grants; an invalid
                   configuration is refused and the old one stays in force

exit codes:
  0  stopped cleanly, or --check-config found the configuration valid
  1  could not start (socket in use, database unusable, ...)
  2  the configuration is invalid (each problem printed with file and key)

examples:
  provisiond                                  # the embedded test-driver host
  provisiond --check-config --config /etc/provisiond/provisiond.yml
  provisiond --config /etc/provisiond/provisiond.yml --log-format text""")
    parser.add_argument("--version", action="version", version=f"provisiond {__version__}")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help=f"main configuration file (default: {DEFAULT_CONFIG})")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration, print any problems, and exit "
                             "(0: valid, 2: invalid)")
    parser.add_argument("--log-format", choices=FORMATS, default="auto",
                        help="log output: 'text' (readable lines), 'json' (one object per "
                             "line), 'journal' (journald's native protocol, with REQUEST_ID "
                             "and STATE fields); 'auto' (default): journal under systemd, "
                             "else text")
    return parser.parse_args(argv)


def load_checked(path: Path | None) -> Config:
    """``load_config``, then what this host refuses in it (one ConfigError for either)."""
    config = load_config(path)
    problems = host_problems(config)
    if problems:
        raise ConfigError(problems)
    return config


def check_config(path: Path | None) -> int:
    """Validate the configuration; print every problem to stderr; return the exit code."""
    try:
        config = load_checked(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"provisiond: configuration invalid ({len(exc.problems)} problem"
              f"{'s' if len(exc.problems) != 1 else ''})", file=sys.stderr)
        return exc.exit_code
    refused: list[str] = []
    warnings = grant_warnings(config) + asyncio.run(libvirt_warnings(config,
                                                                     problems=refused))
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if refused:
        for problem in refused:
            print(problem, file=sys.stderr)
        print(f"provisiond: configuration invalid ({len(refused)} problem"
              f"{'s' if len(refused) != 1 else ''} on its hosts)", file=sys.stderr)
        return ConfigError.exit_code
    print(f"{config.source}: ok ({len(config.sizes)} sizes, {len(config.templates)} templates, "
          f"{len(config.hardware_pools)} hardware pools, {len(config.resource_pools)} "
          "resource pools" + (f"; {len(warnings)} warning{'s' if len(warnings) != 1 else ''}"
                              if warnings else "") + ")")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``provisiond``."""
    args = parse_args(argv)
    if args.check_config:
        return check_config(args.config)
    setup_logging(args.log_format)
    try:
        config = load_checked(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return exc.exit_code
    for warning in grant_warnings(config):
        logging.getLogger("provisiond").warning("%s", warning)
    try:
        asyncio.run(serve(config))
    except SocketInUse as exc:
        print(f"provisiond: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"provisiond: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # start-up failed (e.g. a libvirt host unreachable)
        print(f"provisiond: cannot start: {getattr(exc, 'message', None) or exc}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
