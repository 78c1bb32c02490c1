"""A real browser for the tests: Debian's headless Chromium, driven by Selenium through chromedriver.

Both binaries come from the system (`chromium` and `chromium-driver`; `.ci/run` installs them);
the Service is pointed at chromedriver's path so that Selenium Manager never downloads a driver or
a browser. Each `Chromium` starts with a fresh profile folder and the flags that keep it from
reaching anything but the pages it is sent to (this machine's network refuses other connections).
The browser's console log is kept, so a test can see every Content-Security-Policy violation.
`MISSING` says why no browser can run here, or is empty.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"  # screenshots kept after a run (gitignored)
TIMEOUT = 30.0  # seconds for a page to load or a condition to hold: generous, the machine is shared

BROWSER = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = (
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--window-size=1000,800",
)


def _missing() -> str:
    for path, package in ((BROWSER, "chromium"), (DRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            return f"{path} not found (Debian: apt-get install {package})"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return ""


MISSING = _missing()


class Chromium:
    """One headless Chromium with its own profile; `driver` is the Selenium WebDriver."""

    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="mcp-modelgates-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = BROWSER
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={self.profile}")
        if os.geteuid() == 0:
            options.add_argument("--no-sandbox")  # Chromium's sandbox cannot start as root
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(DRIVER), options=options)
        self.driver.set_page_load_timeout(TIMEOUT)
        self.console: list[dict[str, Any]] = []  # every console entry read so far

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def fresh(self) -> None:
        """Forget every cookie and the console so far: the next test starts as a new visitor."""
        self.driver.execute_cdp_cmd("Network.clearBrowserCookies", {})
        self.read_console()
        self.console.clear()

    # ------------------------------------------------------------ pages

    def open(self, url: str) -> None:
        self.driver.get(url)

    @property
    def url(self) -> str:
        return str(self.driver.current_url)

    def text(self) -> str:
        """The page's text; "" while a navigation replaces the page under the read (the body found
        a moment ago is gone), so that a wait goes on instead of failing."""
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

        try:
            return str(self.driver.find_element("tag name", "body").text)
        except (StaleElementReferenceException, NoSuchElementException):
            return ""

    def click(self, css: str) -> None:
        self.driver.find_element("css selector", css).click()

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not happen within {TIMEOUT} s; the browser is at {self.url}")
            time.sleep(0.05)

    def wait_for_url(self, prefix: str) -> None:
        self.wait_for(lambda: self.url.startswith(prefix), f"a page at {prefix}")
        self.wait_for(lambda: self.driver.execute_script("return document.readyState") == "complete", "loading")

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        path.unlink(missing_ok=True)  # a shot from an earlier run proves nothing
        assert self.driver.save_screenshot(str(path)), path
        return path

    # ------------------------------------------------------------ cookies and the console

    def cookies(self) -> list[dict[str, Any]]:
        """Every cookie the browser holds, on every site (the DevTools protocol's view)."""
        cookies: list[dict[str, Any]] = self.driver.execute_cdp_cmd("Network.getAllCookies", {})["cookies"]
        return cookies

    def read_console(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.driver.get_log("browser")
        self.console.extend(entries)
        return entries

    def csp_violations(self) -> list[str]:
        """Each console message about a Content Security Policy that blocked something, so far."""
        self.read_console()
        return [e["message"] for e in self.console if "Content Security Policy" in e.get("message", "")]
