"""The console in a real headless Chromium (the machine's own, driven by Playwright): login and
logout, role restrictions by direct URL, consent granted and revoked through the forms (a partner's
next signed ITI-38 sees each change at once), the accounting page of a patient with disclosures,
partner check now (a real signed call), CSRF refusal, no script and no CSP violation on any page,
and the README screenshot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.console.partner import disclosed

pytestmark = pytest.mark.server

SCREENSHOT = ROOT / "docs" / "console-dashboard.png"


def test_login_and_logout(page_as, console_node):
    page = page_as(None)
    page.goto("/dashboard")
    assert "/login" in page.url  # sent to log in first
    page.fill("input[name=name]", "operator")
    page.fill("input[name=password]", "wrong password, clearly")
    page.click("button[type=submit]")
    assert "Wrong user name or password" in page.inner_text("main")
    from tests.console.conftest import PASSWORDS

    page.fill("input[name=name]", "operator")
    page.fill("input[name=password]", PASSWORDS["operator"])
    page.click("button[type=submit]")
    page.wait_for_url("**/dashboard")  # back where it was going
    assert page.inner_text("h1") == "Dashboard"
    assert "operator (Operator)" in page.inner_text("header")
    page.click("text=Log out")
    page.wait_for_url("**/login")
    page.goto("/dashboard")
    assert "/login" in page.url
    assert page.errors == []


def test_roles_are_enforced_by_the_server_not_just_the_menu(page_as):
    page = page_as("registrar")
    nav = page.inner_text("header nav")
    assert "Patients and consent" in nav and "Accounting" not in nav and "Audit" not in nav
    for path in ("/accounting?patient=x", "/audit", "/partners", "/users", "/conformance"):
        response = page.goto(path)
        assert response.status == 403, path
        assert "Not permitted" in page.inner_text("h1")
    support = page_as("clinician-support")
    response = support.goto("/patients")
    assert response.status == 200
    assert support.locator("#consent-form").count() == 0  # may look at patients, not change consent


def _record(page, patient: str, kind: str, *, scan: bytes | None = None) -> None:
    from urllib.parse import quote

    page.goto(f"/patients/show?patient={quote(patient)}")
    page.check(f"input[name=kind][value={kind}]")
    page.fill("input[name=form_name]", "VA Form 10-10164")
    if scan is not None:
        page.set_input_files("input[name=scan]", files=[{"name": "form.pdf", "mimeType": "application/pdf",
                                                          "buffer": scan}])
    page.click("#consent-form button[type=submit]")
    assert "Confirm" in page.inner_text("h1")
    page.click("#confirm-form button[type=submit]")
    page.wait_for_url("**/patients/show?**recorded=*")


def test_consent_grant_and_revoke_take_effect_for_the_very_next_partner_request(page_as, console_node):
    keys = console_node.data_dir / "keys"
    patient = console_node.patients[1]  # never opted in
    assert disclosed(console_node.url, keys, patient) == 0
    page = page_as("registrar")
    _record(page, patient, "opt-in", scan=b"%PDF-1.4\n% scanned authorization\n%%EOF\n")
    assert page.inner_text("#consent-state") == "granted"
    assert "form.pdf" in page.inner_text("#consent-history")
    assert disclosed(console_node.url, keys, patient) == len(console_node.documents[patient])
    _record(page, patient, "revoke")
    assert page.inner_text("#consent-state") == "revoked"
    assert disclosed(console_node.url, keys, patient) == 0
    assert page.errors == []


def test_a_scan_that_is_not_what_it_claims_is_refused(page_as, console_node):
    from urllib.parse import quote

    page = page_as("privacy-officer")
    page.goto(f"/patients/show?patient={quote(console_node.patients[2])}")
    page.set_input_files("input[name=scan]", files=[{"name": "form.pdf", "mimeType": "application/pdf",
                                                      "buffer": b"<html><script>alert(1)</script></html>"}])
    page.click("#consent-form button[type=submit]")
    assert "does not look like application/pdf" in page.inner_text("main")
    node = console_node.node()
    try:
        assert node.consent_store.status(console_node.patients[2]).state == "never"
    finally:
        node.close()


def test_accounting_page_lists_the_disclosures(page_as, console_node):
    from urllib.parse import quote

    keys = console_node.data_dir / "keys"
    patient = console_node.granted
    assert disclosed(console_node.url, keys, patient) > 0
    page = page_as("privacy-officer")
    page.goto(f"/accounting?patient={quote(patient)}")
    table = page.inner_text("#accounting")
    assert "demo-partner" in table and "ITI-38" in table and "Dr. Demo Clinician" in table
    assert "TREATMENT" in table and "Medical doctor" in table
    csv_link = page.get_attribute("text=CSV", "href")
    assert csv_link.startswith("/accounting/csv?")
    assert page.errors == []


def test_partner_check_now_makes_a_real_signed_call(page_as, console_node):
    page = page_as("operator")
    page.goto("/partners")
    page.locator("#partner-this-node button", has_text="Check now").click()
    results = page.inner_text("#check-results")
    assert "signed ITI-38" in results and "signed request accepted" in results, results
    row = page.locator("#check-results tr", has_text="signed ITI-38")
    assert row.locator("td").nth(2).inner_text() == "ok"
    # the check is in the trail, and shows as the partner's last ITI-38 success
    assert "ITI-38" in page.inner_text("#partner-this-node")


def test_csrf_token_is_required_by_the_browser_forms(page_as, console_node):
    page = page_as("administrator")
    page.goto("/users")
    page.evaluate("document.querySelectorAll('input[name=csrf]').forEach(e => e.value = '0'.repeat(64))")
    page.fill("form[action='/users/add'] input[name=name]", "mallory")
    page.fill("form[action='/users/add'] input[name=password]", "a long enough password")
    with page.expect_response("**/users/add") as response:
        page.click("form[action='/users/add'] button")
    assert response.value.status == 403
    from xds_node.console.auth import UserStore

    node = console_node.node()
    try:
        assert "mallory" not in [u["name"] for u in UserStore(node.engine).list()]
    finally:
        node.close()


def test_no_page_runs_script_or_breaks_the_policy(page_as, console_node):
    """Every page of the administrator (who sees them all) loads without a CSP violation, and no
    page carries a script of its own."""
    from urllib.parse import quote

    page = page_as("administrator")
    paths = ["/dashboard", "/patients?q=a", f"/patients/show?patient={quote(console_node.granted)}",
             f"/accounting?patient={quote(console_node.granted)}", "/audit", "/partners", "/conformance", "/users"]
    for path in paths:
        response = page.goto(path)
        assert response.status == 200, path
        assert response.headers["content-security-policy"].startswith("default-src 'none'")
        assert page.locator("script").count() == 0, path
    assert page.errors == [], page.errors


def test_dashboard_screenshot_for_the_readme(page_as, console_node, tmp_path):
    """Takes the dashboard's screenshot; with XDS_UPDATE_SCREENSHOT=1 it replaces
    docs/console-dashboard.png (committed; shown in the README), so a test run leaves the checkout
    as it found it."""
    keys = console_node.data_dir / "keys"
    for patient in console_node.patients[:3]:
        disclosed(console_node.url, keys, patient)
    page = page_as("administrator")
    page.set_viewport_size({"width": 1280, "height": 720})
    page.goto("/dashboard")
    assert page.locator("table tbody tr").count() >= 1
    target = SCREENSHOT if os.environ.get("XDS_UPDATE_SCREENSHOT") == "1" else tmp_path / SCREENSHOT.name
    page.screenshot(path=str(target), full_page=False)
    assert Path(target).stat().st_size > 10_000
