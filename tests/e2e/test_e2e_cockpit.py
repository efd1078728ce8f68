"""provisiond's Cockpit page (``cockpit/``) in a real browser, on a real libvirtd with QEMU.

Debian's ``cockpit-ws --no-tls --local-session=cockpit-bridge`` serves Cockpit's shell and
the built page as a real uid (``harness.cockpit.CockpitWs``, one per test): root, the
test's user, on 127.0.0.1, and ``nobody`` on 127.0.0.2 (cookies of its own); headless
Chromium drives it through selenium. The page is opened as users open it, in the shell
(``/provisiond#/VIEW?socket=...``), and reaches the test's provisiond with
``cockpit.http`` through the bridge, so the daemon sees each page's uid. The guest is
``make_serial_echo_iso`` (it echoes its serial port in capitals). Elements are found by
their accessible names and labels, else by the ids and test ids of the page's regions;
every wait is on a condition.

With ``PROVISIOND_SCREENSHOTS=DIR`` the tests also save the main views as PNGs in DIR
(``scripts/screenshots`` writes ``docs/screenshots/`` that way).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest
import yaml

from harness import cockpit
from harness.cockpit import CockpitWs
from harness.daemon import ME, OTHER_USER, Daemon, daemon_config
from harness.libvirtd import LibvirtDaemon, make_serial_echo_iso
from tests.e2e.conftest import GuestPool

pytest.importorskip("selenium", reason="selenium is a test dependency: run scripts/setup")
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException, StaleElementReferenceException, TimeoutException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

T = TypeVar("T")
SCREENSHOTS = os.environ.get("PROVISIOND_SCREENSHOTS")
SHOT_HEIGHT = 1400  # px, the tallest screenshot
FRAME = f"iframe[name$='/{cockpit.PACKAGE}']"  # the page's frame in Cockpit's shell
QUOTA = {"vms": 3, "per_user": {"vms": 1}}
TEMPLATES_SHOWN = {"echo": "A tiny guest that echoes its serial console in capitals",
                   "ipxe": "iPXE's network boot ISO"}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def page_dist() -> Iterator[Path]:
    """Cockpit and Chromium installed (scripts/setup-browser), the page built; a copy of
    it, which a build running meanwhile (``./dev cockpit``) leaves alone."""
    if os.geteuid() != 0:
        pytest.skip("the end-to-end tests run a privileged libvirtd: root only")
    try:
        cockpit.setup()
        built = cockpit.build_page()
    except cockpit.CockpitError as exc:
        pytest.fail(str(exc), pytrace=False)
    directory = Path(tempfile.mkdtemp(prefix="provisiond-page-"))
    try:
        shutil.copytree(built, directory / cockpit.PACKAGE)
        yield directory / cockpit.PACKAGE
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def serving(page: Path, user: str | None, address: str) -> Iterator[CockpitWs]:
    """cockpit-ws as ``user`` in a directory every uid can traverse (pytest's tmp_path is
    private to root), removed afterwards; its log printed (shown when a test fails)."""
    directory = Path(tempfile.mkdtemp(prefix="provisiond-cockpit-"))
    try:
        with CockpitWs(directory, user, package=page, address=address) as ws:
            yield ws
            print(ws.log())
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def ws_root(page_dist: Path) -> Iterator[CockpitWs]:
    """cockpit-ws serving the page as root (the test's user); one per test: its session
    ends some seconds after its last page closed."""
    with serving(page_dist, None, "127.0.0.1") as ws:
        yield ws


@pytest.fixture
def ws_other(page_dist: Path) -> Iterator[CockpitWs]:
    """cockpit-ws serving the page as OTHER_USER (``nobody``), on another address: its
    cookies are not root's."""
    with serving(page_dist, OTHER_USER, "127.0.0.2") as ws:
        yield ws


@pytest.fixture(scope="module")
def driver(page_dist: Path) -> Iterator[Any]:
    """One headless Chromium for the module."""
    browser = cockpit.chromium()
    try:
        yield browser
    finally:
        cockpit.quit_chromium(browser)


@pytest.fixture(autouse=True)
def _browser_log(request: pytest.FixtureRequest) -> Iterator[None]:
    """The page's console messages of each test, printed (shown when it fails)."""
    yield
    if "driver" in request.fixturenames:
        print("browser console:\n" + cockpit.browser_log(request.getfixturevalue("driver")))


@pytest.fixture
def echo(guest_pool: GuestPool) -> Daemon:
    """A provisiond on the real libvirtd: templates ``echo`` (the serial echo guest) and
    ``ipxe``; size ``one``; pool ``rp`` (quota QUOTA) where root and nobody may create and
    nobody administers nothing; its socket reachable by both (group nogroup, 0660)."""
    make_serial_echo_iso(guest_pool.path / "echo.iso")
    guest_pool.refresh()
    templates = {
        "echo": {"kind": "iso", "description": TEMPLATES_SHOWN["echo"],
                 "volume": {"pool": guest_pool.name, "name": "echo.iso"}},
        "ipxe": {"kind": "iso", "description": TEMPLATES_SHOWN["ipxe"],
                 "path": "/usr/lib/ipxe/ipxe.iso"},
    }
    guest_pool.main = daemon_config(
        guest_pool.directory, storage_pools=[guest_pool.name],
        sizes={"one": {"cpus": 1, "memory": 131072, "storage_size_in_gb": 1}},
        templates=templates, daemon={"stop_timeout": 3},
        hosts=[{"name": "e2e", "uri": guest_pool.libvirtd.uri, "domain_type": "qemu"}],
        # As a host would be configured (the harness lifts the ratios for load tests):
        # the timeline in the screenshots shows this host's real room.
        hardware={"cpu_allocation_ratio": 4, "ram_allocation_ratio": 1},
        resource_pools={"rp": {"hardware_pool": "hw", "description": "The test's pool",
                               "quota": QUOTA,
                               "grants": {"CLOUD_CREATE": {"users": [ME, OTHER_USER]}}}})
    return guest_pool.daemon()


# --------------------------------------------------------------------------- the page


def lit(text: str) -> str:
    """``text`` as an XPath string literal."""
    if "'" not in text:
        return f"'{text}'"
    if '"' not in text:
        return f'"{text}"'
    return "concat(" + ", \"'\", ".join(f"'{part}'" for part in text.split("'")) + ")"


class Page:
    """The page as a user sees it, in Cockpit's shell: its elements found by accessible
    names, every wait on a condition. The driver is switched into the page's frame."""

    def __init__(self, driver: Any, ws: CockpitWs, d: Daemon) -> None:
        self.driver = driver
        self.ws = ws
        self.d = d

    def open(self, view: str = "") -> Page:
        """Open ``/provisiond#/VIEW?socket=...`` (the test daemon's socket) in the shell,
        enter the page's frame and wait until the page is connected."""
        self.driver.switch_to.default_content()
        self.driver.get(self.ws.shell_url(view, socket=self.d.socket))
        frame = self.until(lambda _: self.find(By.CSS_SELECTOR, FRAME), "the page's frame")
        self.driver.switch_to.frame(frame)
        self.until(lambda _: self.find(By.CSS_SELECTOR, "[data-testid=connection], "
                                                        "[data-testid=unreachable]"),
                   "the page to connect")
        unreachable = self.driver.find_elements(By.CSS_SELECTOR, "[data-testid=unreachable]")
        assert not unreachable, unreachable[0].text
        return self

    def until(self, condition: Callable[[Any], T], what: str, timeout: float = 30) -> T:
        """Wait until ``condition(driver)`` is true; fail showing the page's text."""
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1, ignored_exceptions=(
                NoSuchElementException, StaleElementReferenceException)).until(condition)
        except TimeoutException:
            body = self.driver.find_element(By.TAG_NAME, "body").text
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; the "
                                 f"page shows:\n{body[:4000]}\n"
                                 f"browser console:\n{cockpit.browser_log(self.driver)}\n"
                                 f"daemon:\n{self.d.log()[-3000:]}") from None

    def find(self, by: str, value: str) -> WebElement | None:
        """A displayed element, or None."""
        for element in self.driver.find_elements(by, value):
            if element.is_displayed():
                return element
        return None

    def region(self, testid: str) -> WebElement:
        return self.until(lambda _: self.find(By.CSS_SELECTOR, f"[data-testid={testid}]"),
                          f"region {testid}")

    def button(self, name: str) -> WebElement:
        """The enabled button whose accessible name is ``name`` (aria-label, else text)."""
        xpath = (f"//button[@aria-label={lit(name)} or "
                 f"(not(@aria-label) and normalize-space(.)={lit(name)})]")
        return self.until(lambda _: (b := self.find(By.XPATH, xpath)) and b.is_enabled() and b,
                          f"button {name!r}")

    def tab(self, title: str) -> None:
        self.until(lambda _: self.find(By.XPATH, f"//*[@role='tab'][normalize-space(.)="
                                                 f"{lit(title)}]"), f"tab {title!r}").click()

    def field(self, label: str) -> WebElement:
        """The form control labelled ``label`` (its <label for=...>)."""
        xpath = (f"//label[@for][.//text()[normalize-space(.)={lit(label)}]] | "
                 f"//label[@for][normalize-space(.)={lit(label)}]")
        found = self.until(lambda _: self.find(By.XPATH, xpath), f"a field labelled {label!r}")
        return self.driver.find_element(By.ID, found.get_attribute("for"))

    def text(self, testid: str) -> str:
        return self.region(testid).text

    def shot(self, name: str, top: WebElement | None = None) -> None:
        """With PROVISIOND_SCREENSHOTS set, save the browser's view, shell and all, as
        ``name.png`` there: the page's frame scrolled to ``top`` (else its own top), the
        window made tall enough for what follows (up to SHOT_HEIGHT)."""
        if not SCREENSHOTS:
            return
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        d = self.driver
        size = d.get_window_size()
        if top is not None:
            d.execute_script("arguments[0].scrollIntoView({block: 'start'});"
                             "window.scrollBy(0, -16);", top)
        else:
            d.execute_script("window.scrollTo(0, 0)")
        below = d.execute_script("return document.documentElement.scrollHeight - "
                                 "window.scrollY")
        frame_top = self._frame_top()
        chrome = size["height"] - d.execute_script("return window.top.innerHeight")
        d.set_window_size(size["width"], min(SHOT_HEIGHT, frame_top + below + chrome))
        try:
            # Two animation frames: the resized, scrolled page is painted.
            d.execute_async_script("const done = arguments[0];"
                                   "requestAnimationFrame(() => requestAnimationFrame(done));")
            d.switch_to.default_content()
            d.save_screenshot(str(Path(SCREENSHOTS) / f"{name}.png"))
        finally:
            d.switch_to.frame(d.find_element(By.CSS_SELECTOR, FRAME))
            d.set_window_size(size["width"], size["height"])

    def _frame_top(self) -> int:
        """Where the page's frame starts in the shell's window (its top bar above)."""
        self.driver.switch_to.default_content()
        try:
            frame = self.driver.find_element(By.CSS_SELECTOR, FRAME)
            return int(self.driver.execute_script(
                "return arguments[0].getBoundingClientRect().top", frame))
        finally:
            self.driver.switch_to.frame(self.driver.find_element(By.CSS_SELECTOR, FRAME))

    def create(self, name: str, template: str = "echo", size: str = "one",
               pool: str = "rp") -> None:
        """Fill the create form and press Create."""
        self.tab("Create a VM")
        self.region("create-form")
        Select(self.field("Template")).select_by_value(template)
        Select(self.field("Size")).select_by_value(size)
        Select(self.field("Resource pool")).select_by_value(pool)
        box = self.field("Name")
        box.clear()
        box.send_keys(name)
        self.until(lambda _: box.get_attribute("value") == name, "the name typed")
        self.button("Create").click()

    def vm_state(self) -> str:
        """The VM state of the request shown, as the details say."""
        return self.term("VM state").split("\n")[0]

    def term(self, term: str) -> str:
        """A fact of the request shown (its description list)."""
        dd = self.driver.find_element(
            By.XPATH, f"//dt[normalize-space(.)={lit(term)}]/following-sibling::dd[1] | "
                      f"//*[contains(@class,'description-list__group')][.//*[contains(@class,"
                      f"'description-list__term')][normalize-space(.)={lit(term)}]]"
                      f"//*[contains(@class,'description-list__description')]")
        return str(dd.text)


def virsh_list(libvirtd: LibvirtDaemon) -> dict[str, str]:
    """``virsh list --all``: each domain's name and state."""
    domains = {}
    for line in libvirtd.virsh("list", "--all").splitlines():
        parts = line.split(None, 2)
        if len(parts) == 3:
            domains[parts[1]] = parts[2].strip()
    return domains


def transitions(page: Page) -> list[str]:
    """The states the timeline shows reached, in order."""
    rows = page.driver.find_elements(By.CSS_SELECTOR,
                                     "[data-testid=timeline-entry][data-kind=transition]")
    return [r.get_attribute("data-to") for r in rows]


def console_text(page: Page) -> str:
    """What xterm shows of the serial console (its rows)."""
    return str(page.driver.execute_script(
        "const t = document.querySelector('[data-testid=console-terminal] .xterm-rows');"
        "return t ? t.innerText : '';"))


def notes(d: Daemon, rid: str) -> list[str]:
    """The session notes of a request's log."""
    return [e["detail"] for e in d.call("GET", f"/v1/requests/{rid}/log").body["log"]
            if e["kind"] == "note" and e["trigger"] == "session"]


def quota_cells(page: Page, pool: str) -> dict[str, str]:
    """The resource pool row of the catalog: column label -> text."""
    row = page.until(lambda _: page.find(
        By.XPATH, f"//table[@aria-label='Resource pools']//tr[td[1]//strong[normalize-space(.)="
                  f"{lit(pool)}]]"), f"resource pool {pool} in the catalog")
    return {td.get_attribute("data-label"): td.text
            for td in row.find_elements(By.TAG_NAME, "td")}


# --------------------------------------------------------------------------- tests


def test_the_catalog_lists_the_templates_and_the_pools_quota(
        echo: Daemon, ws_root: CockpitWs, driver: Any) -> None:
    page = Page(driver, ws_root, echo).open("catalog")
    catalog = page.region("catalog")
    page.until(lambda _: "echo" in catalog.text, "the templates")
    rows = catalog.find_elements(By.XPATH, ".//table[@aria-label='Templates']//tbody/tr")
    shown = {r.find_element(By.XPATH, "td[1]").text: r.find_element(By.XPATH, "td[3]").text
             for r in rows}
    assert shown == TEMPLATES_SHOWN
    sizes = catalog.find_element(By.XPATH, ".//table[@aria-label='Sizes']//tbody").text
    assert "one" in sizes and "128 MiB" in sizes and "1 GiB" in sizes, sizes
    cells = quota_cells(page, "rp")
    assert cells["Hardware pool"] == "hw"
    assert cells["VMs"].split("\n") == ["0 of 3", "yours: 0 of 1"], cells
    assert cells["CPUs"].startswith("0 (no limit)"), cells
    assert f"as {ME}" in page.text("connection")  # the daemon's answer names the caller
    page.shot("catalog")


def test_a_vm_is_created_started_and_deleted_in_the_page(
        echo: Daemon, ws_root: CockpitWs, driver: Any, libvirtd: LibvirtDaemon) -> None:
    name = "web-1"
    page = Page(driver, ws_root, echo).open()
    page.tab("Create a VM")
    Select(page.field("Template")).select_by_value("echo")
    Select(page.field("Size")).select_by_value("one")
    Select(page.field("Resource pool")).select_by_value("rp")
    box = page.field("Name")
    box.send_keys(name)
    page.until(lambda _: box.get_attribute("value") == name, "the name typed")
    page.shot("create")
    page.button("Create").click()

    # The page shows the new request and follows its log live until done.
    page.until(lambda _: "done" in transitions(page), "the timeline to reach done")
    reached = transitions(page)
    assert reached[0] == "requested" and reached[-1] == "done", reached
    assert {"authorized", "storage-searching", "defining"} <= set(reached), reached
    page.until(lambda _: page.vm_state() == "stopped", "the VM stopped")
    rid = page.term("Request id")
    assert re.fullmatch(r"[0-9a-f]{32}", rid), rid
    assert echo.call("GET", f"/v1/requests/{rid}").body["name"] == name
    assert virsh_list(libvirtd) == {name: "shut off"}

    page.button(f"Start VM {name}").click()
    page.until(lambda _: page.vm_state() == "running", "the VM running")
    page.until(lambda _: "VM running" in page.text("timeline-status"), "the timeline: running")
    assert transitions(page)[-2:] == ["starting", "running"]
    assert virsh_list(libvirtd) == {name: "running"}
    page.shot("timeline")

    page.button(f"Delete VM {name}").click()
    dialog = page.until(lambda _: page.find(By.XPATH, "//*[@role='dialog']"),
                        "the confirmation")
    assert f"Delete VM {name}?" in dialog.text
    dialog.find_element(By.XPATH, ".//button[normalize-space(.)='Delete']").click()
    page.until(lambda _: page.vm_state() == "deleted", "the VM deleted", timeout=60)
    assert name not in virsh_list(libvirtd)
    page.until(lambda _: page.text("timeline-status").startswith("Request done, VM deleted"),
               "the timeline to say deleted")
    assert transitions(page)[-1] == "deleted"


def test_the_console_in_the_page_is_the_guests(
        echo: Daemon, ws_root: CockpitWs, driver: Any, libvirtd: LibvirtDaemon) -> None:
    name = "console-1"
    created = echo.call("POST", "/v1/requests", {"template": "echo", "size": "one",
                                                  "resource_pool": "rp", "name": name})
    assert created.status == 202, created.body
    rid = created.body["id"]
    assert echo.wait_terminal(rid)["state"] == "done"
    assert echo.call("POST", f"/v1/requests/{rid}/start").status == 202
    assert echo.call("GET", f"/v1/requests/{rid}?wait=30").body["vm"]["state"] == "running"

    page = Page(driver, ws_root, echo).open(f"vms/{rid}")
    page.button(f"Connect to the serial console of VM {name}").click()
    page.until(lambda _: "Connected" in page.text("console-status")
               or page.find(By.CSS_SELECTOR, "[data-testid=console-message]"),
               "the console to connect")
    refused = page.find(By.CSS_SELECTOR, "[data-testid=console-message]")
    assert refused is None, f"the console was not connected: {refused.text}"
    page.region("console-terminal").click()  # focus: xterm's input
    typed = driver.switch_to.active_element
    assert typed.get_attribute("aria-label") == f"Serial console input of VM {name}"
    # Enter sends \r, which the guest returns as it is; Ctrl+J (\n) starts a new line.
    newline = (Keys.ENTER, Keys.CONTROL, "j", Keys.NULL)
    typed.send_keys("hello from the page", *newline, "typed in a browser", *newline)
    page.until(lambda _: "HELLO FROM THE PAGE\nTYPED IN A BROWSER" in console_text(page),
               "the guest's answer on the console")
    assert [n for n in notes(echo, rid) if n.startswith("console opened by")] == [
        f"console opened by {ME}"]
    page.shot("console", page.region("console"))

    page.button(f"Disconnect from the serial console of VM {name}").click()
    page.until(lambda _: any("closed" in n for n in notes(echo, rid)),
               "the daemon to note the session closed")
    assert virsh_list(libvirtd) == {name: "running"}


def test_a_second_users_page_shows_none_of_the_first_users_vms(
        echo: Daemon, ws_root: CockpitWs, ws_other: CockpitWs, driver: Any) -> None:
    created = echo.call("POST", "/v1/requests", {"template": "echo", "size": "one",
                                                  "resource_pool": "rp", "name": "roots-vm"})
    assert created.status == 202, created.body
    rid = created.body["id"]
    assert echo.wait_terminal(rid)["state"] == "done"

    mine = Page(driver, ws_root, echo).open()
    mine.until(lambda _: "roots-vm" in mine.text("requests"), "root's VM in root's list")
    mine.tab("Catalog")
    assert quota_cells(mine, "rp")["VMs"].split("\n") == ["1 of 3", "yours: 1 of 1"]

    theirs = Page(driver, ws_other, echo).open()
    assert f"as {OTHER_USER}" in theirs.text("connection")
    requests = theirs.region("requests")
    theirs.until(lambda _: "No requests" in requests.text, "an empty list")
    assert "roots-vm" not in requests.text
    theirs.tab("Catalog")
    # The daemon counts the pool's VM for everyone and none of it for this user.
    assert quota_cells(theirs, "rp")["VMs"].split("\n") == ["1 of 3", "yours: 0 of 1"]
    # Asked for root's request by its id, the daemon answers this user "no such request".
    theirs.open(f"vms/{rid}")
    error = theirs.until(lambda _: theirs.find(By.CSS_SELECTOR, "#request [data-testid=error]"),
                         "the page's error")
    assert "no such request" in error.text, error.text
    assert "roots-vm" not in driver.find_element(By.TAG_NAME, "body").text


def test_errors_are_shown_with_the_daemons_message(
        echo: Daemon, ws_root: CockpitWs, driver: Any) -> None:
    created = echo.call("POST", "/v1/requests", {"template": "echo", "size": "one",
                                                  "resource_pool": "rp", "name": "first"})
    assert created.status == 202, created.body
    assert echo.wait_terminal(created.body["id"])["state"] == "done"
    page = Page(driver, ws_root, echo).open()

    # A name taken, then the user's quota (one VM): the daemon's words, as it answers them.
    for name, expected in (("first", "you already have a VM named first"),
                           ("second", f"{ME}'s quota in resource pool rp exceeded")):
        said = echo.call("POST", "/v1/requests", {"template": "echo", "size": "one",
                                                   "resource_pool": "rp", "name": name})
        assert said.status == 409 and expected in said.body["error"]["message"], said.body
        message = said.body["error"]["message"]
        page.create(name)
        shown = page.until(
            lambda _: (e := page.find(By.CSS_SELECTOR, "#create-form [data-testid=error]"))
            and message in e.text and e.text, f"the daemon's message {message!r}")
        assert "The VM was not created" in shown
        if said.body["error"].get("field"):
            assert f"Field: {said.body['error']['field']}" in shown
    assert [r["name"] for r in echo.call("GET", "/v1/requests").body["requests"]] == ["first"]



def test_the_administration_tab_is_for_cloud_admins(
        echo: Daemon, ws_root: CockpitWs, driver: Any) -> None:
    admin_tab = "//*[@role='tab'][normalize-space(.)='Administration']"
    # Not an admin (the daemon says so: GET /v1/whoami): no tab, and its URL shows the VMs.
    assert echo.call("GET", "/v1/whoami").body["privileges"]["CLOUD_ADMIN"] == []
    page = Page(driver, ws_root, echo).open("admin")
    page.until(lambda _: not driver.find_elements(By.XPATH, admin_tab),
               "the Administration tab to go (once the daemon said who the user is)")
    page.region("requests")
    # Made CLOUD_ADMIN of rp (the configuration reloaded): the tab, and the reconciler.
    pools = echo.main.parent / "pools.yml"
    config = yaml.safe_load(pools.read_text())
    config["resource_pools"]["rp"]["grants"]["CLOUD_ADMIN"] = {"users": [ME]}
    pools.write_text(yaml.safe_dump(config))
    before = len(echo.log())
    assert echo.proc is not None
    echo.proc.send_signal(signal.SIGHUP)
    page.until(lambda _: "configuration reloaded from" in echo.log()[before:],
               "the daemon to reload its configuration")
    assert echo.call("GET", "/v1/whoami").body["privileges"]["CLOUD_ADMIN"] == ["rp"]
    driver.switch_to.default_content()
    driver.get("about:blank")  # the page loaded anew (a new fragment alone would not)
    page.open()
    page.tab("Administration")
    shown = page.until(lambda _: page.find(By.CSS_SELECTOR, "[data-testid=reconcile-result]"),
                       "the reconciler's answer")
    assert "Looked at hosts: e2e" in shown.text, shown.text
