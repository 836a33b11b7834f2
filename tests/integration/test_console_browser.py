"""The security admin console in a real headless Chromium (tests/support/browser.py) against a
real ``switch serve`` process over TLS the browser trusts: a security admin's whole key life
(seed 000), a security-read operator's view and its forged changes, the audit log, and the
other pages. One browser for the module; each test signs in afresh. Screenshots of every page
are kept (tmp path, and $SWITCH_ARTIFACTS_DIR/console when set)."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from enroll import pki
from enroll.secrets import SECRET_PREFIX
from gateway.client.est_client import EstClient, EstClientError, EstServer, make_csr
from tests.support.browser import (
    Screenshots,
    absent,
    chromium,
    enabled,
    fetch,
    visible,
    wait,
)
from tests.support.cli import ServeProcess, loopback_ports, serving, switch_command
from tests.support.processes import log_ports

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery staple"
EXTRA = """
[profiles.manual]
approval = "manual"
key_types = ["ec-p256"]

[tenants.acme]
hostnames = ["acme.switch.test"]
upstream = "ws://127.0.0.1:8080/"
"""


@attrs.define(eq=False)
class Console:
    config: Path
    server: ServeProcess
    driver: WebDriver
    shots: Screenshots
    tokens: dict[str, str]

    def port(self, listener: str) -> int:
        """The port ``listener`` logged (read again: listeners log in no fixed order)."""
        return log_ports(self.server.log)[listener]

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.port('api')}"

    @property
    def ca_file(self) -> Path:
        return self.config.parent / "pki" / "dev-root-ca.pem"

    def api(self, method: str, path: str, body: Any = None, *, operator: str = "admin") -> Any:
        """The JSON API with an operator's token (set-up and checks, outside the browser)."""
        with httpx.Client(base_url=f"{self.base}/api/v1", timeout=30,
                          verify=ssl.create_default_context(cafile=str(self.ca_file)),
                          headers={"Authorization": f"Bearer {self.tokens[operator]}"}) as c:
            response = c.request(method, path, json=body)
        assert response.is_success, (method, path, response.status_code, response.text)
        return response.json()

    def enroll(self, secret: str, cn: str) -> int:
        """An agent's simpleenroll on the enroll port: 200 issued, 202 held for approval."""
        async def run() -> int:
            server = EstServer("127.0.0.1", self.port("enroll"), "demo.switch.test",
                               ca_file=self.ca_file)
            async with EstClient(server) as client:
                try:
                    await client.simpleenroll(make_csr(cn, pki.generate_key()), secret)
                except EstClientError as exc:
                    return exc.status
            return 200
        return trio.run(run)

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def sign_in(self, name: str, path: str = "/") -> None:
        """Signed out, open ``path``: the sign-in page comes first, then ``path``."""
        self.driver.delete_all_cookies()
        self.open(path)
        self.fill_sign_in(name)

    def fill_sign_in(self, name: str) -> None:
        driver = self.driver
        visible(driver, "#signin-name").send_keys(name)
        driver.find_element(By.ID, "signin-password").send_keys(PASSWORD)
        driver.find_element(By.ID, "signin-submit").click()
        visible(driver, "#sign-out")

    def menu_action(self, key: str, label: str) -> None:
        """Open the actions menu of ``key``'s row and choose ``label``."""
        row = self.driver.find_element(By.CSS_SELECTOR, f'#keys tr[data-key="{key}"]')
        row.find_element(By.CSS_SELECTOR, "details.menu summary").click()
        row.find_element(By.XPATH, f'.//div[@class="menu-items"]/*[normalize-space()="{label}"]'
                         ).click()

    def notice(self, expected: str) -> None:
        wait(self.driver).until(lambda d: expected in d.find_element(By.ID, "notice").text)

    def key_state(self, key: str) -> str:
        cell = self.driver.find_element(By.CSS_SELECTOR, f'#keys tr[data-key="{key}"] .state')
        return str(cell.text)


def _operator(config: Path, name: str, role: str, directory: Path) -> str:
    made = subprocess.run(switch_command(config, "operators", "add", name, "--role", role,
                                         "--json"), capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    password = directory / f"{name}.password"
    password.write_text(PASSWORD + "\n")
    done = subprocess.run(switch_command(config, "operators", "set-password", name,
                                         "--password-file", str(password)),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return str(json.loads(made.stdout)["token"])


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    directory = tmp_path_factory.mktemp("console")
    made = subprocess.run(switch_command(None, "init", str(directory / "switch")),
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    config = directory / "switch" / "switch.toml"
    loopback_ports(config)
    config.write_text(config.read_text() + EXTRA)
    tokens = {name: _operator(config, name, role, directory)
              for name, role in (("admin", "security-admin"), ("reader", "security-read"))}
    with serving(config) as server, \
            chromium(directory / "browser", config.parent / "pki" / "dev-root-ca.pem") as driver:
        yield Console(config, server, driver, Screenshots(directory / "screenshots"), tokens)


def focused(driver: WebDriver, text: str) -> None:
    """Wait until the element with the keyboard focus reads ``text``."""
    wait(driver).until(lambda d: d.switch_to.active_element.text == text)


def _subjects(driver: WebDriver) -> list[str]:
    """The subject column of the certificates table as it stands."""
    return [str(r.find_elements(By.TAG_NAME, "td")[1].text)
            for r in driver.find_elements(By.CSS_SELECTOR, "#certificates tbody tr")]


def _audit_time(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, dt.UTC).strftime("%Y-%m-%d %H:%M")


def test_a_security_admin_takes_a_key_through_its_life_and_the_audit_log_names_them(
        console: Console) -> None:
    driver, shots = console.driver, console.shots
    started = time.time()
    driver.delete_all_cookies()
    console.open("/tenants/demo/provisioning")
    visible(driver, "#signin-name")
    assert "/signin?next=" in driver.current_url and "Provisioning keys" not in driver.page_source
    shots.take(driver, "signin")
    console.fill_sign_in("admin")
    assert driver.current_url.endswith("/tenants/demo/provisioning")

    # Enable the service: the toggle flips at once.
    toggle = enabled(driver, "#service-toggle")
    assert toggle.get_attribute("aria-checked") == "false"
    toggle.click()
    console.notice("The provisioning service is enabled.")
    assert driver.find_element(By.ID, "service-toggle").get_attribute("aria-checked") == "true"

    # Generate a key: its name checked as typed, its secret shown once, CLOSE only once copied.
    enabled(driver, "#generate-key").click()
    name = visible(driver, "#generate-name")
    name.send_keys("9 lives")
    assert "starts with a letter" in visible(driver, "#generate-name-error").text
    assert not driver.find_element(By.ID, "generate-submit").is_enabled()
    name.clear()
    name.send_keys("Laptops")
    enabled(driver, "#generate-submit").click()
    secret_field = visible(driver, "#secret-value")
    secret = str(secret_field.get_attribute("value"))
    assert secret.startswith(SECRET_PREFIX) and len(secret) > 40
    assert not driver.find_element(By.ID, "close-secret").is_enabled()
    shots.take(driver, "generate-key-secret", whole_page=False)
    ActionChains(driver).send_keys(Keys.ESCAPE).perform()  # not before it was copied
    assert secret_field.is_displayed()
    assert not driver.find_element(By.ID, "close-secret").is_enabled()
    driver.find_element(By.ID, "copy-secret").click()
    enabled(driver, "#close-secret").click()
    console.notice("Key \u201cLaptops\u201d was generated.")
    assert console.key_state("Laptops") == "Active"
    driver.refresh()
    visible(driver, "#keys")
    assert secret not in driver.page_source  # shown once, never again
    assert console.enroll(secret, "agent-1") == 200  # the secret that was copied works

    # Suspend it: reasons and "I understand" before SUSPEND KEY is enabled.
    console.menu_action("Laptops", "Suspend key")
    submit = visible(driver, "#suspend-submit")
    assert not submit.is_enabled()
    driver.find_element(By.ID, "suspend-reason").send_keys("rollout paused")
    assert not submit.is_enabled()
    driver.find_element(By.ID, "suspend-ack").click()
    shots.take(driver, "suspend-dialog", whole_page=False)
    enabled(driver, "#suspend-submit").click()
    console.notice("Key \u201cLaptops\u201d was suspended.")
    assert console.key_state("Laptops") == "Suspended"

    # Reactivate it: "I understand" before REACTIVATE KEY is enabled.
    console.menu_action("Laptops", "Reactivate key")
    submit = visible(driver, "#reactivate-submit")
    assert not submit.is_enabled()
    driver.find_element(By.ID, "reactivate-ack").click()
    enabled(driver, "#reactivate-submit").click()
    console.notice("Key \u201cLaptops\u201d was reactivated.")
    assert console.key_state("Laptops") == "Active"

    # Revoke it: the name typed in the wrong case keeps REVOKE KEY disabled, and a forged POST
    # with that name is refused by the server.
    console.menu_action("Laptops", "Revoke key")
    visible(driver, "#revoke-reason").send_keys("leaked in a ticket")
    driver.find_element(By.ID, "revoke-confirm").send_keys("laptops")
    driver.find_element(By.ID, "revoke-ack").click()
    assert not driver.find_element(By.ID, "revoke-submit").is_enabled()
    assert "case-sensitive" in visible(driver, "#revoke-confirm-error").text
    shots.take(driver, "revoke-dialog-wrong-case", whole_page=False)
    status, reply = fetch(driver, "POST", "/api/v1/tenants/demo/keys/Laptops/revoke",
                          {"reason": "leaked", "confirm_name": "laptops", "acknowledge": True})
    assert (status, reply["error"]) == (422, "confirmation_mismatch")
    assert console.api("GET", "/tenants/demo/keys/Laptops")["state"] == "active"
    confirm = driver.find_element(By.ID, "revoke-confirm")
    confirm.clear()
    confirm.send_keys("Laptops")
    enabled(driver, "#revoke-submit").click()
    console.notice("Key \u201cLaptops\u201d was revoked.")
    assert console.key_state("Laptops") == "Revoked"
    assert console.api("GET", "/tenants/demo/keys/Laptops")["state_reason"] == \
        "leaked in a ticket"
    shots.take(driver, "provisioning-admin")

    # The audit log lists each of those actions under the admin's name, in the chosen range.
    enabled(driver, 'nav a[href^="/audit"]').click()
    since = visible(driver, "#filter-since")
    since.send_keys(_audit_time(started))
    driver.find_element(By.ID, "filter-until").send_keys(_audit_time(time.time() + 60))
    driver.find_element(By.ID, "filter-tenant").send_keys("demo")
    driver.find_element(By.ID, "filter-submit").click()
    wait(driver).until(lambda d: "tenant=demo" in d.current_url)  # the filtered page, not the old
    visible(driver, "#audit-entries")
    rows = driver.find_elements(By.CSS_SELECTOR, "#audit-entries tbody tr")
    seen = [(r.get_attribute("data-action"), r.find_elements(By.TAG_NAME, "td")[1].text)
            for r in rows]
    assert seen[:5] == [("key.revoked", "operator:admin"), ("key.reactivated", "operator:admin"),
                        ("key.suspended", "operator:admin"), ("key.created", "operator:admin"),
                        ("service.enabled", "operator:admin")]
    assert "leaked in a ticket" in rows[0].text and "rollout paused" in rows[2].text
    assert "hash chain verifies" in driver.find_element(By.ID, "verification").text
    shots.take(driver, "audit")
    earlier = dt.datetime.fromtimestamp(started, dt.UTC) - dt.timedelta(days=2)
    console.open("/audit?" + "&".join(f"{k}={v}" for k, v in (
        ("since", earlier.strftime("%Y-%m-%d")), ("until", earlier.strftime("%Y-%m-%d")))))
    assert absent(driver, "#audit-entries") and "No entries." in driver.page_source


def test_a_security_read_operator_sees_the_keys_but_nothing_to_change_and_is_refused_anyway(
        console: Console) -> None:
    driver, shots = console.driver, console.shots
    console.api("PUT", "/tenants/acme/service", {"enabled": True})
    console.api("POST", "/tenants/acme/keys", {"name": "Kiosks"})
    console.sign_in("reader", "/tenants/acme/provisioning")
    visible(driver, "#keys")
    assert console.key_state("Kiosks") == "Active"
    assert absent(driver, "#generate-key") and absent(driver, "details.menu")
    assert absent(driver, "#generate-dialog") and absent(driver, "#revoke-dialog")
    toggle = driver.find_element(By.ID, "service-toggle")
    assert toggle.get_attribute("aria-checked") == "true" and not toggle.is_enabled()
    assert "security-read" in driver.find_element(By.ID, "service-readonly").text
    shots.take(driver, "provisioning-reader")

    # Forged from the reader's own session, with its valid CSRF token: refused, nothing done.
    for method, path, body in (
            ("POST", "/api/v1/tenants/acme/keys/Kiosks/suspend",
             {"reason": "x", "acknowledge": True}),
            ("PUT", "/api/v1/tenants/acme/service", {"enabled": False, "acknowledge": True}),
            ("POST", "/api/v1/tenants/acme/keys", {"name": "Mine"})):
        status, reply = fetch(driver, method, path, body)
        assert (status, reply["error"]) == (403, "role_forbidden"), (path, reply)
    assert [k["state"] for k in console.api("GET", "/tenants/acme/keys")] == ["active"]
    assert console.api("GET", "/tenants/acme/service")["provisioning_enabled"] is True

    # The pages other than the Provisioning Service offer no change either.
    console.open("/tenants/acme/issuers")
    visible(driver, "#issuers")
    assert absent(driver, "#renew-issuer")


def test_the_other_pages_search_revoke_approve_renew_and_rename(console: Console) -> None:
    driver, shots = console.driver, console.shots
    console.api("PUT", "/tenants/demo/service", {"enabled": True})
    fleet = console.api("POST", "/tenants/demo/keys", {"name": "Fleet"})
    held = console.api("POST", "/tenants/demo/keys", {"name": "Held", "profile": "manual"})
    assert console.enroll(fleet["secret"], "agent-7") == 200
    assert console.enroll(fleet["secret"], "kiosk-9") == 200
    assert console.enroll(held["secret"], "agent-8") == 202
    console.sign_in("admin", "/tenants/demo/provisioning")
    assert visible(driver, "#pending-count").text == "1"  # on every page

    # Issued certificates: search by name, revoke one with a reason.
    enabled(driver, 'nav a[href$="/certificates"]').click()
    visible(driver, "#search-name").send_keys("kiosk")
    driver.find_element(By.CSS_SELECTOR, "#certificate-search button[type=submit]").click()
    # Read the rows only once the search's page has replaced the unfiltered one: rows found
    # on the page being left go stale under the reader's hand (a CI failure, stop 18).
    wait(driver).until(lambda d: "name=kiosk" in d.current_url and _subjects(d) == [
        "CN=kiosk-9,OU=demo"])
    rows = driver.find_elements(By.CSS_SELECTOR, "#certificates tbody tr")
    serial = str(rows[0].get_attribute("data-serial"))
    shots.take(driver, "certificates")
    rows[0].find_element(By.CSS_SELECTOR, "button[data-dialog]").click()
    assert not visible(driver, "#revoke-certificate-submit").is_enabled()
    driver.find_element(By.ID, "revoke-certificate-reason").send_keys("device stolen")
    enabled(driver, "#revoke-certificate-submit").click()
    console.notice(f"Certificate {serial} was revoked.")
    revoked = console.api("GET", f"/tenants/demo/certificates?serial={serial}")
    assert [(c["state"], c["revoke_reason"]) for c in revoked] == [("revoked", "device stolen")]

    # Pending requests: approve the one held.
    enabled(driver, "#nav-requests").click()
    row = visible(driver, "#requests tbody tr")
    assert "agent-8" in row.text
    shots.take(driver, "requests")
    row.find_element(By.CSS_SELECTOR, 'button[data-dialog="approve-dialog"]').click()
    enabled(driver, "#approve-submit").click()
    console.notice("The request was approved")
    assert visible(driver, "#pending-count").text == "0"

    # Issuers: renew, after a confirmation.
    enabled(driver, 'nav a[href$="/issuers"]').click()
    assert len(driver.find_elements(By.CSS_SELECTOR, "#issuers tbody tr")) == 1
    enabled(driver, "#renew-issuer").click()
    enabled(driver, "#renew-submit").click()
    console.notice("A new provisioning issuer was created.")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#issuers tbody tr")) == 2
    shots.take(driver, "issuers")

    # A key's details (its certificates and audit entries); rename it with the pencil.
    console.open("/tenants/demo/provisioning")
    console.menu_action("Fleet", "Details")
    visible(driver, "#key-certificates")
    assert "agent-7" in driver.find_element(By.ID, "key-certificates").text
    assert "Key created" in driver.find_element(By.ID, "audit-entries").text
    enabled(driver, "#rename-key").click()
    field = visible(driver, "#rename-name")
    field.clear()
    field.send_keys("held")  # another key's name, in another case: refused as typed
    assert "already has this name" in visible(driver, "#rename-name-error").text
    field.clear()
    field.send_keys("Fleet East")
    enabled(driver, "#rename-submit").click()
    console.notice("The key is now named \u201cFleet East\u201d.")
    assert driver.find_element(By.ID, "key-name").text == "Fleet East"
    shots.take(driver, "key-details")

    # The keyboard alone: the actions menu, the suspend dialog, its fields and its button.
    console.open("/tenants/demo/provisioning")
    summary = enabled(driver, '#keys tr[data-key="Held"] details.menu summary')
    summary.send_keys(Keys.ENTER)
    focused(driver, "Details")  # opening the menu moves the focus to its first item
    driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    shots.take(driver, "key-actions-menu", whole_page=False)
    ActionChains(driver).send_keys(Keys.ESCAPE).perform()
    assert absent(driver, "details.menu[open]")
    assert driver.switch_to.active_element.tag_name == "summary"
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    focused(driver, "Details")
    ActionChains(driver).send_keys(Keys.TAB, Keys.TAB).perform()
    focused(driver, "Suspend key")
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    wait(driver).until(lambda d: d.switch_to.active_element.get_attribute("id") ==
                       "suspend-reason")
    ActionChains(driver).send_keys("approvals paused", Keys.TAB, Keys.SPACE, Keys.TAB,
                                   Keys.TAB).perform()
    assert driver.switch_to.active_element.get_attribute("id") == "suspend-submit"
    ActionChains(driver).send_keys(Keys.ENTER).perform()
    console.notice("Key \u201cHeld\u201d was suspended.")
    assert console.key_state("Held") == "Suspended"
    shots.take(driver, "provisioning")

    enabled(driver, "#service-toggle").click()
    assert not visible(driver, "#disable-submit").is_enabled()
    driver.find_element(By.ID, "disable-ack").click()
    shots.take(driver, "disable-dialog", whole_page=False)
    enabled(driver, "#disable-submit").click()
    console.notice("The provisioning service is disabled.")
    assert driver.find_element(By.ID, "service-toggle").get_attribute("aria-checked") == "false"
    assert console.api("GET", "/tenants/demo/service")["provisioning_enabled"] is False
