"""The console's rules in-process (Starlette TestClient on the node fixture: SQLite and PostgreSQL):
lockout, proxy-header login only from trusted addresses, every POST needing its CSRF token, role
checks on POSTs, sessions ending at once when a user is removed or idle, escaping, scanned-form
checks, keyset paging of the audit trail, outbound disclosures in the accounting, `xds-node users`."""

from __future__ import annotations

import html
import io
import re
import subprocess
import sys
import warnings
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from tests.conftest import ROOT
from xds_node.audit.events import AuditEvent
from xds_node.console.app import create_console_app
from xds_node.console.auth import UserStore
from xds_node.console.pages.audit import search
from xds_node.console.pages.patients import check_form
from xds_node.console.tables import console_sessions

warnings.filterwarnings("ignore", message=".*httpx2.*")
from starlette.testclient import TestClient  # noqa: E402

PASSWORD = "a console password long enough"
PATIENT = "VET0042^^^&2.16.840.1.113883.4.349&ISO"


def _csrf(html: str) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]{64})"', html).group(1)


@pytest.fixture
def console(node):
    users = UserStore(node.engine)
    for role in ("administrator", "privacy-officer", "registrar", "operator", "clinician-support"):
        users.add(role, role, PASSWORD)
    app = create_console_app(node.settings, node)
    return app, node


def _client(app, role: str | None = None, address: str = "10.1.2.3", **kwargs) -> TestClient:
    kwargs.setdefault("base_url", "http://127.0.0.1")  # a Host the console answers to (not "testserver")
    client = TestClient(app, follow_redirects=False, client=(address, 40000), **kwargs)
    if role is not None:
        page = client.get("/login")
        reply = client.post("/login", data={"csrf": _csrf(page.text), "name": role, "password": PASSWORD})
        assert reply.status_code == 303, reply.text
    return client


def test_lockout_after_repeated_failures_even_with_the_right_password(console):
    app, node = console
    client = _client(app)
    token = _csrf(client.get("/login").text)
    for _ in range(node.settings.console_login_max_failures):
        assert client.post("/login", data={"csrf": token, "name": "operator", "password": "guess"}).status_code == 401
    reply = client.post("/login", data={"csrf": token, "name": "operator", "password": PASSWORD})
    assert reply.status_code == 429 and "Too many failed logins" in reply.text
    # another worker or host sees the same lockout: it is in the database
    other = _client(create_console_app(node.settings, node), address="10.9.9.9")
    reply = other.post("/login", data={"csrf": _csrf(other.get("/login").text), "name": "operator",
                                       "password": PASSWORD})
    assert reply.status_code == 429
    events = node.audit.list(transaction="console:login", outcome="denied")
    assert len(events) == node.settings.console_login_max_failures + 2


def test_every_post_route_needs_its_csrf_token(console):
    app, _ = console
    client = _client(app, "administrator")
    posts = [r.path for r in app.app.routes if "POST" in (getattr(r, "methods", None) or ())]
    assert {"/login", "/logout", "/patients/consent", "/partners/add", "/users/add"} <= set(posts)
    for path in posts:
        assert client.post(path, data={"name": "x"}).status_code == 403, path
        assert client.post(path, data={"csrf": "a" * 64, "name": "x"}).status_code == 403, path


def test_roles_are_checked_on_posts_too(console):
    app, node = console
    support = _client(app, "clinician-support")
    token = _csrf(support.get("/patients").text)
    reply = support.post("/patients/consent/confirm", data={
        "csrf": token, "kind": "opt-in", "patient": PATIENT, "source": "paper form", "effective": "2026-01-01"})
    assert reply.status_code == 403
    assert node.consent_store.history(PATIENT) == []
    registrar = _client(app, "registrar")
    token = _csrf(registrar.get("/patients").text)
    assert registrar.post("/partners/remove", data={"csrf": token, "name": "x", "confirmed": "yes"}).status_code == 403
    assert registrar.get("/accounting", params={"patient": PATIENT}).status_code == 403
    denied = node.audit.list(outcome="denied", transaction="console:accounting:get")
    assert denied and denied[0].user_subject_id == "registrar"


def test_consent_through_the_console_is_recorded_and_audited_with_the_user(console):
    app, node = console
    client = _client(app, "registrar")
    token = _csrf(client.get("/patients").text)
    scan = b"%PDF-1.7\n" + b"0" * 1000
    reply = client.post("/patients/consent", data={
        "csrf": token, "kind": "opt-in", "patient": PATIENT, "source": "paper form", "form_name": "10-10164",
        "signed": "2026-01-02", "effective": datetime.now(UTC).date().isoformat()},
        files={"scan": ("auth.pdf", io.BytesIO(scan), "application/pdf")})
    assert reply.status_code == 200 and "Confirm" in reply.text
    assert node.consent_store.history(PATIENT) == []  # nothing until confirmed
    hidden = {k: html.unescape(v) for k, v in re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"',
                                                          reply.text)}
    reply = client.post("/patients/consent/confirm", data=hidden)
    assert reply.status_code == 303
    assert node.consent.allows(PATIENT)
    (directive,) = node.consent_store.history(PATIENT)
    assert directive.recorded_by == "console:registrar" and "10-10164" in directive.note
    page = client.get("/patients/show", params={"patient": PATIENT}).text
    assert "auth.pdf" in page
    form_id = re.search(r"/patients/form\?id=(\d+)", page).group(1)
    download = client.get("/patients/form", params={"id": form_id})
    assert download.content == scan and download.headers["content-disposition"].startswith("attachment")
    rows = node.audit.list(transaction="console:consent-opt-in")
    assert [e.outcome for e in rows] == ["success", "attempt"] and rows[0].user_subject_id == "registrar"
    assert node.audit.accounting_of_disclosures(PATIENT) == []  # console work is not a disclosure


@pytest.mark.parametrize(("content", "kind", "why"), [
    (b"", "application/pdf", "empty"),
    (b"GIF89a....", "image/gif", "must be PDF"),
    (b"<html>", "application/pdf", "does not look like"),
    (b"%PDF-" + b"0" * 5000, "application/pdf", "larger than"),
])
def test_scanned_forms_are_checked_by_content_and_size(content, kind, why):
    with pytest.raises(ValueError, match=why):
        check_form(content, kind, 4096)
    assert check_form(b"\x89PNG\r\n\x1a\nrest", "image/png", 4096) == "image/png"


def test_removed_user_and_idle_session_end_at_once(console):
    app, node = console
    client = _client(app, "operator")
    assert client.get("/dashboard").status_code == 200
    UserStore(node.engine).remove("operator")
    assert client.get("/dashboard").status_code == 303
    admin = _client(app, "administrator")
    with node.engine.begin() as conn:
        conn.execute(update(console_sessions).values(last_seen=datetime.now(UTC).replace(tzinfo=None)
                                                     - timedelta(minutes=node.settings.console_session_idle_minutes)))
    assert admin.get("/dashboard").status_code == 303


def test_proxy_header_is_honoured_only_from_the_trusted_proxy(node):
    node.settings.console_proxy_user_header = "X-Remote-User"
    node.settings.console_proxy_trusted = ["10.0.0.7/32"]
    UserStore(node.engine).add("pat", "privacy-officer", None)
    app = create_console_app(node.settings, node)
    stranger = _client(app, address="10.0.0.8")
    assert stranger.get("/accounting", headers={"X-Remote-User": "pat"}).status_code == 303  # to /login
    proxy = _client(app, address="10.0.0.7")
    reply = proxy.get("/accounting", headers={"X-Remote-User": "pat"})
    assert reply.status_code == 200 and "pat (Privacy officer)" in reply.text
    assert proxy.get("/accounting", headers={"X-Remote-User": "nobody"}).status_code == 303
    # a proxy-only user has no password to guess
    token = _csrf(stranger.get("/login").text)
    assert stranger.post("/login", data={"csrf": token, "name": "pat", "password": ""}).status_code == 401


def test_values_are_escaped(console):
    app, node = console
    client = _client(app, "privacy-officer")
    evil = "<script>alert(1)</script>"
    page = client.get("/patients", params={"q": evil}).text
    assert evil not in page and "&lt;script&gt;" in page
    node.audit.record(AuditEvent(transaction="ITI-38", outcome="success", patient_id=PATIENT, partner="p",
                                 user_subject_id='"><img src=x onerror=alert(1)>', purpose_of_use="TREATMENT"))
    page = client.get("/accounting", params={"patient": PATIENT}).text
    assert "<img src=x" not in page and "&lt;img src=x" in page


def test_audit_search_pages_by_keyset_without_gaps_or_repeats(console):
    _, node = console
    at = datetime(2026, 3, 1, tzinfo=UTC)
    for i in range(130):  # many rows share one timestamp: the event id breaks the tie
        node.audit.record(AuditEvent(transaction="ITI-18", time=at + timedelta(seconds=i // 40),
                                     event_id=f"e{i:04d}", patient_id=PATIENT))
    seen, cursor = [], ""
    while True:
        events, cursor = search(node.audit_engine, {"patient": PATIENT}, cursor, size=25)
        seen += [e.event_id for e in events]
        if not cursor:
            break
    assert len(seen) == 130 and len(set(seen)) == 130
    assert seen == sorted(seen, key=lambda e: (int(e[1:]) // 40, e), reverse=True)


def test_audit_search_by_partner_pages_over_name_and_communities_without_gaps_or_repeats(console):
    """A partner filter matches its name (inbound rows) or a member community (outbound rows): two
    index ranges merged per page, so the pages must still be exact, ordered and never repeat a row
    that matches both."""
    from types import SimpleNamespace

    _, node = console
    at = datetime(2026, 3, 2, tzinfo=UTC)
    community = "urn:oid:1.3.6.1.4.1.21367.2026.77"
    expected = []
    for i in range(90):
        kind = i % 3  # by name, by community, by both; and rows of another partner between them
        node.audit.record(AuditEvent(transaction="ITI-38", time=at + timedelta(seconds=i // 7), event_id=f"p{i:04d}",
                                     partner="acme" if kind in (0, 2) else "",
                                     partner_community=community if kind in (1, 2) else "urn:oid:9.9"))
        node.audit.record(AuditEvent(transaction="ITI-38", time=at + timedelta(seconds=i // 7), event_id=f"q{i:04d}",
                                     partner="other", partner_community="urn:oid:9.8"))
        expected.append(f"p{i:04d}")
    partners = [SimpleNamespace(name="acme", communities=[community])]
    seen, cursor = [], ""
    while True:
        events, cursor = search(node.audit_engine, {"partner": "acme"}, cursor, size=20, partners=partners)
        seen += [e.event_id for e in events]
        if not cursor:
            break
    assert seen == sorted(expected, key=lambda e: (int(e[1:]) // 7, e), reverse=True)


def test_accounting_includes_outbound_disclosures(console):
    _, node = console
    node.patients.save_correlation(PATIENT, "urn:oid:1.2.3", "THEIR9", "1.2.3.4")
    remote = "THEIR9^^^&1.2.3.4&ISO"
    rows = [("ITI-55", "outbound", "success", PATIENT), ("ITI-38", "outbound", "success", remote),
            ("ITI-41", "outbound", "failure", PATIENT), ("ITI-38", "outbound", "attempt", PATIENT),
            ("ITI-38", "outbound", "denied", PATIENT), ("ITI-38", "inbound", "success", PATIENT),
            ("ITI-38", "inbound", "denied", PATIENT), ("ITI-38", "inbound", "success", remote)]
    for i, (tx, direction, outcome, pid) in enumerate(rows):
        node.audit.record(AuditEvent(transaction=tx, direction=direction, outcome=outcome, patient_id=pid,
                                     partner_organization="hospital", time=datetime(2026, 1, 1, i, tzinfo=UTC)))
    aliases = [c.remote_cx for c in node.patients.correlations_for(PATIENT)]
    got = node.audit.accounting_of_disclosures(PATIENT, aliases=aliases)
    assert [(r["transaction"], r["direction"], r["outcome"]) for r in got] == [
        ("ITI-55", "outbound", "success"), ("ITI-38", "outbound", "success"), ("ITI-41", "outbound", "failure"),
        ("ITI-38", "inbound", "success")]
    assert got[0]["description"].startswith("OUTBOUND ITI-55")
    # the CLI shows the same (it looks the aliases up itself)
    done = subprocess.run([sys.executable, "-m", "xds_node.cli", "audit", "--accounting", PATIENT, "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"XDS_DATA_DIR": str(node.settings.data_dir), "XDS_DATABASE_URL": node.settings.db_url,
                               "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    assert '"direction": "outbound"' in done.stdout and done.stdout.count('"event_id"') == 4


def test_users_command(tmp_path):
    env = {"XDS_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "XDS_CONSOLE_ENABLED": "false"}

    def users(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "xds_node.cli", "users", *args], cwd=ROOT, env=env,
                              input=stdin, capture_output=True, text=True, timeout=60)

    assert users("add", "ana", "--role", "privacy officer", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
    assert users("add", "ana", "--role", "operator", "--password-stdin", stdin=PASSWORD + "\n").returncode == 2
    short = users("add", "bo", "--role", "operator", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "12 characters" in short.stderr
    bad_role = users("add", "bo", "--role", "janitor", "--password-stdin", stdin=PASSWORD + "\n")
    assert bad_role.returncode == 2 and "unknown role" in bad_role.stderr
    listing = users("list", "--json")
    assert '"role": "privacy-officer"' in listing.stdout and "password_hash" not in listing.stdout
    assert users("remove", "ana").returncode == 0
    assert users("remove", "ana").returncode == 2


def test_a_host_the_console_is_not_reached_by_gets_a_400_never_a_page(console):
    """DNS rebinding: a page on another site points its own name at 127.0.0.1; the browser then
    sends that name as Host. Loopback names, the listen address and console_server_names pass."""
    app, node = console
    for host in ("evil.example", "127.0.0.1.evil.example", "localhost.evil.example"):
        client = _client(app, base_url=f"http://{host}")
        for path in ("/login", "/dashboard", "/static/console.css"):
            reply = client.get(path)
            assert reply.status_code == 400 and "console" not in reply.text.lower(), (host, path)
            assert reply.headers["content-security-policy"].startswith("default-src 'none'")
        assert client.post("/login", data={"name": "administrator", "password": PASSWORD}).status_code == 400
    for host in ("127.0.0.1:8081", "localhost", "[::1]:8081"):
        assert _client(app, base_url=f"http://{host}").get("/login").status_code == 200, host
    named = replace(node.settings, console_server_names=["console.hospital.example"])
    client = _client(create_console_app(named, node), base_url="http://console.hospital.example")
    assert client.get("/login").status_code == 200


def test_a_conformance_run_whose_console_died_is_shown_interrupted_not_running_forever(console):
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import insert, select

    from xds_node.console.pages.conformance import RUN_TIMEOUT
    from xds_node.console.tables import conformance_runs as t

    app, node = console
    now = datetime.now(UTC).replace(tzinfo=None)
    with node.engine.begin() as conn:
        for started in (now - timedelta(seconds=RUN_TIMEOUT + 600), now - timedelta(seconds=30)):
            conn.execute(insert(t).values(target="http://x.example", suites="smoke", started_by="operator",
                                          started_at=started, status="running", summary=""))
    page = _client(app, "operator").get("/conformance")
    assert page.status_code == 200 and "interrupted" in page.text
    with node.engine.connect() as conn:
        rows = conn.execute(select(t.c.started_at, t.c.status, t.c.finished_at).order_by(t.c.started_at)).all()
    assert [r.status for r in rows] == ["interrupted", "running"]  # a run that may still be going is left alone
    assert rows[0].finished_at is not None
