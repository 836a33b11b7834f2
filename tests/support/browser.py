"""A real headless Chromium for the console's browser tests, driven by selenium through Debian's
``chromedriver`` (both installed by ./scripts/test), and the screenshots those tests keep.

The browser trusts the deployment's dev root CA the way a person's browser would be made to: the
CA is added to an NSS database (``certutil``, Debian's libnss3-tools) in a HOME of the browser's
own, where Chromium on Linux reads its trust store; nothing tells it to ignore certificate
errors. Flags: headless, no sandbox (the tests run as root), no GPU, and nothing that reaches
the network by itself (no background networking, component updates, sync, first-run); a fresh
profile per browser. Selenium is given the driver and the browser binary, so it downloads
nothing (the machine's network is closed).
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

#: A laptop's screen.
WINDOW = (1366, 900)
#: The longest any step waits for the page (a deadline on every wait).
WAIT_S = 20.0
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-default-apps", "--disable-extensions", "--password-store=basic",
         f"--window-size={WINDOW[0]},{WINDOW[1]}")


def _binary(name: str, package: str) -> str:
    found = shutil.which(name)
    assert found, f"{name} is not installed: run ./scripts/test (it installs Debian's {package})"
    return found


def _trust(home: Path, ca_file: Path) -> None:
    """An NSS database in ``home`` that trusts ``ca_file`` to identify servers."""
    certutil = _binary("certutil", "libnss3-tools")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    for args in (["-N", "--empty-password"],
                 ["-A", "-t", "C,,", "-n", "switch-dev-root", "-i", str(ca_file)]):
        subprocess.run([certutil, "-d", f"sql:{nssdb}", *args], check=True, timeout=60,
                       capture_output=True)


@contextlib.contextmanager
def chromium(directory: Path, ca_file: Path) -> Iterator[WebDriver]:
    """A headless Chromium that trusts ``ca_file``, its files under ``directory``."""
    home = directory / "home"
    _trust(home, ca_file)
    options = webdriver.ChromeOptions()
    options.binary_location = _binary("chromium", "chromium")
    for flag in (*FLAGS, f"--user-data-dir={directory / 'profile'}"):
        options.add_argument(flag)
    service = Service(_binary("chromedriver", "chromium-driver"),
                      env={**os.environ, "HOME": str(home)},
                      log_output=str(directory / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        driver.set_page_load_timeout(WAIT_S)
        driver.set_script_timeout(WAIT_S)
        yield driver
    finally:
        driver.quit()


class Screenshots:
    """Saves a screenshot of each page a test visits: under the test's tmp path, and under
    ``$SWITCH_ARTIFACTS_DIR/console/`` when that is set (what CI keeps)."""

    def __init__(self, directory: Path) -> None:
        self.directories = [directory]
        artifacts = os.environ.get("SWITCH_ARTIFACTS_DIR")
        if artifacts:
            self.directories.append(Path(artifacts) / "console")
        for d in self.directories:
            d.mkdir(parents=True, exist_ok=True)
        self.saved: list[Path] = []

    def take(self, driver: WebDriver, name: str, *, whole_page: bool = True) -> None:
        """The page from top to bottom (``whole_page``), or what the window shows (a dialog
        over the page, as the operator sees it)."""
        if whole_page:
            size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
            shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": WINDOW[0],
                         "height": max(1, int(size["height"])), "scale": 1}})
            png = base64.b64decode(shot["data"])
        else:
            png = driver.get_screenshot_as_png()
        for d in self.directories:
            (d / f"{name}.png").write_bytes(png)
        self.saved.append(self.directories[0] / f"{name}.png")


def wait(driver: WebDriver) -> WebDriverWait[WebDriver]:
    """Waits up to ``WAIT_S``, looking again while the page is being replaced."""
    return WebDriverWait(driver, WAIT_S, ignored_exceptions=(NoSuchElementException,
                                                             StaleElementReferenceException))


def visible(driver: WebDriver, css: str) -> WebElement:
    element: WebElement = wait(driver).until(
        expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, css)))
    return element


def enabled(driver: WebDriver, css: str) -> WebElement:
    element: WebElement = wait(driver).until(
        expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, css)))
    return element


def absent(driver: WebDriver, css: str) -> bool:
    return not driver.find_elements(By.CSS_SELECTOR, css)


def fetch(driver: WebDriver, method: str, path: str, body: Any = None, *,
          csrf: bool = True) -> tuple[int, Any]:
    """A request made by the page itself (its cookie, and its CSRF token unless ``csrf`` is
    False): what a forged request from the operator's own browser session looks like."""
    status, reply = driver.execute_async_script(
        """
        const [method, path, body, csrf, done] = arguments;
        const headers = {"Content-Type": "application/json"};
        if (csrf) {
          headers["X-CSRF-Token"] = document.querySelector('meta[name="csrf-token"]').content;
        }
        fetch(path, {method, headers, body: body === null ? undefined : JSON.stringify(body)})
          .then(r => r.json().then(j => done([r.status, j])))
          .catch(e => done([0, String(e)]));
        """, method, path, body, csrf)
    return int(status), reply
