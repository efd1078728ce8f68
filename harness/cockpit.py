"""Cockpit's web server serving provisiond's page as a real user, and a headless Chromium.

``CockpitWs`` runs Debian's ``cockpit-ws --no-tls --local-session=cockpit-bridge`` (cockpit
287: ``/usr/lib/cockpit/cockpit-ws``) under a given uid on a free localhost port: the web
server starts ``cockpit-bridge`` as that same uid without a login form, and the page's
``cockpit.http`` calls to provisiond's Unix socket are that uid's connections
(``SO_PEERCRED``). The bridge finds packages under ``$XDG_DATA_HOME/cockpit`` and
``$XDG_DATA_DIRS/cockpit`` (``cockpit-bridge --packages`` lists them): each instance gets a
directory of its own with a copy of the built page (``cockpit/dist``) as package
``provisiond`` in its ``XDG_DATA_HOME``, readable by any uid, which shadows a copy the host
may have installed; ``base1`` (``cockpit.js``) comes from ``/usr/share/cockpit``. Its
``HOME`` is there too, and ``XDG_CONFIG_DIRS`` points at an empty directory, so the host's
``/etc/cockpit`` is left out. The bridge reads the package list when it starts: build
the page first. One instance is one session: its bridge ends some seconds after the last
page of it closed, and cockpit-ws then serves nothing more (``./dev cockpit`` restarts
it); start one per test.

``chromium()`` starts Debian's ``/usr/bin/chromium`` through ``/usr/bin/chromedriver`` with
selenium; the driver's path is given, so selenium-manager is never run (nothing is
downloaded, and with the network closed nothing waits for it).

``setup()`` installs the Debian packages (``scripts/setup-browser``); ``build_page()``
builds the page (``scripts/build-cockpit``). Running as another uid needs root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from harness.daemon import REPO

COCKPIT_WS = "/usr/lib/cockpit/cockpit-ws"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PACKAGE = "provisiond"
DIST = REPO / "cockpit" / "dist"
BUILD = REPO / "scripts" / "build-cockpit"
SETUP = REPO / "scripts" / "setup-browser"
CHROMIUM_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync")
WINDOW = (1280, 900)


class CockpitError(RuntimeError):
    """Something the browser tests need is missing or did not start."""


def setup() -> None:
    """Install cockpit-ws, cockpit-bridge, chromium and chromium-driver if missing."""
    proc = subprocess.run([str(SETUP)], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise CockpitError(f"scripts/setup-browser failed:\n{proc.stdout}{proc.stderr}")
    for tool in (COCKPIT_WS, "/usr/bin/cockpit-bridge", CHROMIUM, CHROMEDRIVER):
        if not os.access(tool, os.X_OK):
            raise CockpitError(f"{tool} not found after scripts/setup-browser")


def build_page(timeout: float = 900) -> Path:
    """Build the page with ``scripts/build-cockpit``; the directory it is built into."""
    if not os.access(BUILD, os.X_OK):
        raise CockpitError(f"{BUILD.relative_to(REPO)} does not exist (yet): the page "
                           f"cannot be built")
    proc = subprocess.run([str(BUILD)], capture_output=True, text=True, timeout=timeout,
                          cwd=REPO)
    if proc.returncode != 0:
        raise CockpitError(f"scripts/build-cockpit failed:\n{proc.stdout}{proc.stderr}")
    if not (DIST / "manifest.json").is_file():
        raise CockpitError(f"scripts/build-cockpit made no {DIST.relative_to(REPO)}/"
                           f"manifest.json")
    return DIST


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port free on ``address`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


class CockpitWs:
    """``cockpit-ws`` serving the page in ``package`` as ``user`` (None: this process's).

    ``start()`` / ``stop()``; ``url(**query)`` is the page's address (``url(socket=...)``
    tells it provisiond's socket). ``address`` is a loopback address: instances on
    different addresses keep the browser's cookies apart (cookies ignore the port).
    """

    def __init__(self, directory: Path, user: str | None = None, *,
                 package: Path = DIST, address: str = "127.0.0.1") -> None:
        self.directory = directory
        self.user = user
        self.package = package
        self.address = address
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = directory / "cockpit-ws.log"

    def _prepare(self) -> dict[str, str]:
        """The instance's files (the package copy, HOME, an empty config dir); its env."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)
        data, home, config = (self.directory / n for n in ("data", "home", "config"))
        target = data / "cockpit" / PACKAGE
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(self.package, target)
        config.mkdir(exist_ok=True)
        for path in (data, data / "cockpit", *target.rglob("*"), target, config):
            path.chmod(0o755 if path.is_dir() else 0o644)
        home.mkdir(exist_ok=True)
        home.chmod(0o700)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(home, entry.pw_uid, entry.pw_gid)
        debug = {k: v for k, v in os.environ.items() if k == "G_MESSAGES_DEBUG"}
        return {**debug, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
                "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"),
                "XDG_DATA_HOME": str(data),
                "XDG_DATA_DIRS": "/usr/local/share:/usr/share",
                "XDG_CONFIG_DIRS": str(config), "XDG_CONFIG_HOME": str(config)}

    def start(self, timeout: float = 30) -> None:
        """Start it and wait until it serves the package's manifest."""
        env = self._prepare()
        as_user: dict[str, Any] = {}
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        deadline = time.monotonic() + timeout
        for _attempt in range(3):  # the free port may be taken between probe and bind
            self.port = free_port(self.address)
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [COCKPIT_WS, "--no-tls", "--local-session=cockpit-bridge",
                     "--port", str(self.port), "--address", self.address],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                    cwd=self.directory, start_new_session=True, **as_user)
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self._serves():
                    return
                time.sleep(0.05)
            if self.proc.poll() is None:
                break
        self.stop()
        raise CockpitError(f"cockpit-ws did not serve {self.url()}:\n{self.log()}")

    def _serves(self) -> bool:
        manifest = self.url("manifest.json")
        try:
            with urllib.request.urlopen(manifest, timeout=5) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def url(self, page: str = "index.html", **query: str) -> str:
        """A file of the package, alone (no shell around it), query parameters appended."""
        tail = f"?{urllib.parse.urlencode(query)}" if query else ""
        return f"http://{self.address}:{self.port}/cockpit/@localhost/{PACKAGE}/{page}{tail}"

    def shell_url(self, view: str = "", **options: str) -> str:
        """The page in Cockpit's shell (its menu around it, the page in a frame), as a user
        opens it: ``/provisiond#/VIEW?OPTIONS`` (the page reads ``cockpit.location``)."""
        tail = f"?{urllib.parse.urlencode(options)}" if options else ""
        return f"http://{self.address}:{self.port}/{PACKAGE}#/{view}{tail}"

    def log(self) -> str:
        """What cockpit-ws and its bridge wrote."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10) -> None:
        """Stop cockpit-ws and its bridge (its process group). Safe to call twice."""
        if self.proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc.wait()
        self.proc = None

    def __enter__(self) -> CockpitWs:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def chromium(user_data_dir: Path | None = None, *, window: tuple[int, int] = WINDOW) -> Any:
    """A headless Chromium driven by selenium (a ``selenium.webdriver.Chrome``); quit it.

    Its profile is a fresh directory (removed by ``quit_chromium``); its console messages
    are kept (``driver.get_log("browser")``)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = user_data_dir or Path(tempfile.mkdtemp(prefix="provisiond-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={profile}",
                f"--window-size={window[0]},{window[1]}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER)
    try:
        driver = webdriver.Chrome(service=service, options=options)
    except Exception:
        shutil.rmtree(profile, ignore_errors=True)
        raise
    driver.provisiond_profile = profile
    return driver


def quit_chromium(driver: Any) -> None:
    """Quit the browser and remove its profile."""
    try:
        driver.quit()
    finally:
        shutil.rmtree(getattr(driver, "provisiond_profile", ""), ignore_errors=True)


def browser_log(driver: Any) -> str:
    """The page's console messages since the last call, one a line."""
    try:
        return "\n".join(f"{e['level']} {e['message']}" for e in driver.get_log("browser"))
    except Exception as exc:  # the browser may be gone
        return f"(no browser log: {exc})"
