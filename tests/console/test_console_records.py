"""Console pages 6 (Documents) and 7 (Outside records) over real sockets and in the system's headless
Chromium: a C-CDA carrying script in its narrative is shown without running it; the raw XML is never
served as markup; deprecation needs an administrator, a confirmation and a CSRF token and is audited;
an outbound search against a SECOND running node goes discover -> query -> retrieve -> rendered
document, in the console user's name; no consent, nothing sent."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy import select

from tests.conftest import LiveNode
from tests.console.conftest import SAMPLES, csrf_of, login_http, make_console_node
from tests.test_cda_render import ALLOWED
from xds_node.config import load_settings
from xds_node.console.auth import load_secret
from xds_node.security.trust import Partner, TrustStore

pytestmark = pytest.mark.server

ALEX = "VET0001^^^&1.3.6.1.4.1.21367.2026.1.9&ISO"
PARTNER_HCID = "urn:oid:1.3.6.1.4.1.21367.2026.9.70"
PARTNER_REPO = "1.3.6.1.4.1.21367.2026.9.70.2"
HOSTILE_UID = "1.3.6.1.4.1.21367.2026.9.99.1"
HOSTILE_TITLE = "Hostile note"

#: A C-CDA whose narrative tries every way we know to run script; any of them, if it ran, would
#: change document.title, set window.pwned, log an error, open a dialog or call /pwned.
HOSTILE_NARRATIVE = """
  <paragraph>Before the attack.</paragraph>
  <script>window.pwned = 1; document.title = 'pwned'; alert('pwned'); fetch('/pwned-script');</script>
  <x:script xmlns:x="http://www.w3.org/1999/xhtml">window.pwned = 2; fetch('/pwned-ns');</x:script>
  <x:img xmlns:x="http://www.w3.org/1999/xhtml" src="/pwned-img" onerror="window.pwned = 3; top.pwned = 3"/>
  <content onmouseover="window.pwned = 4" ID="c1&quot; onfocus=&quot;window.pwned=5">hover me</content>
  <linkHtml href="javascript:window.pwned=6;top.document.title='pwned'">click me</linkHtml>
  <paragraph style="background:url(/pwned-style)">styled</paragraph>
  <paragraph>&lt;img src=/pwned-text onerror=alert(1)&gt;</paragraph>
  <renderMultiMedia referencedObject="&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"/>
  <paragraph>After the attack.</paragraph>
"""


def hostile_cda() -> bytes:
    base = (SAMPLES / "alex-testpatient" / "lab-report-2025.xml").read_text(encoding="utf-8")
    base = re.sub(r'<id root="[^"]+" extension="[^"]+"/>', f'<id root="{HOSTILE_UID}" extension="X1"/>', base, count=1)
    base = re.sub(r"<title>[^<]*</title>", f"<title>{HOSTILE_TITLE}</title>", base, count=1)
    base = re.sub(r"(<section>.*?<text>).*?(</text>)", lambda m: m.group(1) + HOSTILE_NARRATIVE + m.group(2), base,
                  count=1, flags=re.S)
    assert HOSTILE_NARRATIVE in base
    return base.encode("utf-8")


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Our node (with console) and a SECOND node, a partner community holding Alex's records; each
    pins the other's signing certificate."""
    root = tmp_path_factory.mktemp("records")
    hostile = root / "hostile"
    hostile.mkdir()
    (hostile / "hostile-note.xml").write_bytes(hostile_cda())
    ours = make_console_node(root / "ours")
    partner_dir = root / "partner"
    try:
        node = ours.node()
        try:  # the hostile document, registered in our registry like any other
            report = node.folder_indexer(hostile).sync()
            assert not report.rejected, report.rejected
        finally:
            node.close()
        settings = load_settings(env={}, data_dir=partner_dir, home_community_id=PARTNER_HCID,
                                 repository_unique_id=PARTNER_REPO, organization_name="Partner community")
        from xds_node.admin import init_keys
        from xds_node.node import Node

        init_keys(settings)
        node = Node(settings)
        try:
            assert not node.folder_indexer(SAMPLES / "alex-testpatient").sync().rejected
            assert not node.folder_indexer(hostile).sync().rejected  # the partner serves it too
            node.consent_store.grant(ALEX, source="test")  # at the partner, Alex may be disclosed to us
        finally:
            node.close()
        ours_settings = ours.settings()
        our_cert = ours_settings.keys_dir / "node.cert.pem"
        TrustStore([Partner(name="va-console-node", home_community_id=ours_settings.home_community_id,
                            certificates=[our_cert.read_bytes()])]).save(partner_dir / "partners.toml")
        partner = LiveNode(partner_dir, extra_env={"XDS_HOME_COMMUNITY_ID": PARTNER_HCID,
                                                   "XDS_REPOSITORY_UNIQUE_ID": PARTNER_REPO})
    except Exception:
        ours.live.stop()
        raise
    try:
        store = TrustStore.load(ours_settings.partners_path)
        store.add(Partner(name="partner-community", home_community_id=PARTNER_HCID,
                          certificates=[(partner_dir / "keys" / "node.cert.pem").read_bytes()],
                          endpoints={"xcpd": partner.url + "/xcpd", "xca_query": partner.url + "/xca/query",
                                     "xca_retrieve": partner.url + "/xca/retrieve"}))
        store.save(ours_settings.partners_path)  # the running node follows the file: no restart
        yield {"ours": ours, "partner": partner, "partner_dir": partner_dir}
    finally:
        partner.stop()
        ours.live.stop()


def _entry_link(client: httpx.Client, patient: str, title: str) -> str:
    page = client.get("/documents", params={"patient": patient})
    assert page.status_code == 200, page.text[:300]
    m = re.search(r'<a href="(/documents/entry/[^"]+)">' + re.escape(title) + "</a>", page.text)
    assert m, f"{title} not listed"
    return m.group(1)


def _audit_rows(console_node, **where):
    from xds_node.audit.store import audit_events

    node = console_node.node()
    try:
        t = audit_events
        stmt = select(t).order_by(t.c.time)
        for k, val in where.items():
            stmt = stmt.where(getattr(t.c, k) == val)
        with node.audit_engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(stmt)]
    finally:
        node.close()


# --- Documents (HTTP) ---------------------------------------------------------------------------
def test_documents_list_entry_and_raw_are_safe_and_audited(records):
    ours = records["ours"]
    client = login_http(ours.console, "clinician-support")
    page = client.get("/documents", params={"patient": ALEX})
    for title in ("Laboratory Report", "Discharge Summary", HOSTILE_TITLE):
        assert title in page.text
    link = _entry_link(client, ALEX, HOSTILE_TITLE)
    entry = client.get(link)
    assert entry.status_code == 200 and HOSTILE_UID in entry.text
    csp = entry.headers["content-security-policy"]
    assert "frame-src 'self'" in csp and "script-src 'self'" in csp and "unsafe" not in csp
    assert re.search(r'<iframe[^>]* sandbox="allow-popups allow-popups-to-escape-sandbox"', entry.text)
    assert "Deprecate" not in entry.text  # clinician support may read, not deprecate

    view = client.get(link + "/view")
    assert view.status_code == 200 and view.headers["content-type"].startswith("text/html")
    frame_csp = view.headers["content-security-policy"]
    assert "default-src 'none'" in frame_csp and "script-src" not in frame_csp and "sandbox" in frame_csp
    assert view.headers["x-frame-options"] == "SAMEORIGIN"
    for tag in re.findall(r"<[^>]*>", view.text):  # the document's own text is escaped: no raw "<" in it
        name = re.match(r"</?([a-zA-Z0-9!]+)", tag).group(1).lower()
        assert name in ALLOWED or name in ("!doctype", "head", "meta", "title", "style"), tag
        assert not re.search(r"\s(on[a-z]+|style|src)\s*=", tag, re.I), tag
        assert "javascript:" not in tag.split("title=")[0], tag
    assert "Before the attack." in view.text and "After the attack." in view.text

    raw = client.get(link + "/raw")
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"
    assert raw.headers["x-content-type-options"] == "nosniff"
    assert "sandbox" in raw.headers["content-security-policy"]
    assert raw.content == hostile_cda()
    download = client.get(link + "/raw", params={"download": "1"})
    assert download.headers["content-type"] == "application/octet-stream"
    assert download.headers["content-disposition"].startswith("attachment;")

    reads = [r for r in _audit_rows(ours, transaction="console:documents:read") if r["user_subject_id"] ==
             "clinician-support"]
    assert reads and reads[-1]["patient_id"] == ALEX and HOSTILE_UID in reads[-1]["document_ids"]


def test_a_registrar_and_an_operator_cannot_read_documents(records):
    ours = records["ours"]
    admin = login_http(ours.console, "administrator")
    link = _entry_link(admin, ALEX, HOSTILE_TITLE)
    for role in ("registrar", "operator"):
        client = login_http(ours.console, role)
        for url in ("/documents?patient=" + quote(ALEX), link, link + "/view", link + "/raw"):
            reply = client.get(url)
            assert reply.status_code == 403, (role, url)
            assert "Before the attack" not in reply.text
        nav = re.findall(r"<nav>.*?</nav>", client.get(link).text, re.S)[0]
        assert 'href="/documents"' not in nav and 'href="/outside"' not in nav


def test_deprecate_needs_an_administrator_confirmation_and_csrf(records):
    ours = records["ours"]
    admin = login_http(ours.console, "administrator")
    link = _entry_link(admin, ALEX, "Pulmonary Clinic Progress Note")
    support = login_http(ours.console, "clinician-support")
    page = support.get(link)
    assert support.post(link + "/deprecate", data={"csrf": csrf_of(page.text), "confirm": "yes"}).status_code == 403
    confirm = admin.get(link + "/deprecate")
    assert confirm.status_code == 200 and "I confirm" in confirm.text
    assert admin.post(link + "/deprecate", data={"confirm": "yes"}).status_code == 403  # no CSRF token
    assert admin.post(link + "/deprecate", data={"csrf": "0" * 64, "confirm": "yes"}).status_code == 403
    unconfirmed = admin.post(link + "/deprecate", data={"csrf": csrf_of(confirm.text)})
    assert unconfirmed.status_code == 400
    assert "status-Approved" in admin.get(link).text
    done = admin.post(link + "/deprecate", data={"csrf": csrf_of(confirm.text), "confirm": "yes",
                                                  "reason": "entered in error"})
    assert done.status_code == 303
    assert "now Deprecated" in admin.get(done.headers["location"]).text
    listing = admin.get("/documents", params={"patient": ALEX}).text
    row = next(r for r in listing.split("<tr") if "Pulmonary Clinic Progress Note" in r)
    assert "Deprecated" in row
    rows = _audit_rows(ours, transaction="console:documents:deprecate")
    assert sorted(r["outcome"] for r in rows) == ["attempt", "success"]
    assert {(r["user_subject_id"], r["reason"]) for r in rows} == {("administrator", "entered in error")}
    # and the registry itself answers ITI-18 with the entry Deprecated (the same path `load` uses)
    node = ours.node()
    try:
        from xds_node.registry import tables as t

        with node.engine.connect() as conn:
            statuses = {r.status for r in conn.execute(select(t.documents.c.status).where(
                t.documents.c.id == link.rsplit("/", 1)[-1].replace("%3A", ":")))}
        assert statuses == {"urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"}
    finally:
        node.close()


def test_not_a_cda_and_bad_ids_are_messages_not_errors(records):
    admin = login_http(records["ours"].console, "administrator")
    assert admin.get("/documents", params={"patient": "VET0001"}).status_code == 400
    assert admin.get("/documents/entry/urn:uuid:00000000-0000-0000-0000-000000000000").status_code == 404
    view = admin.get("/documents/entry/urn:uuid:00000000-0000-0000-0000-000000000000/view")
    assert view.status_code == 404 and "no such registry entry" in view.text
    assert "sandbox" in view.headers["content-security-policy"]


# --- Documents (browser) ------------------------------------------------------------------------
def _watch(page) -> dict:
    """Everything a script that ran would leave behind: dialogs, requests to /pwned*, errors."""
    seen: dict[str, list] = {"dialogs": [], "pwned_requests": [], "console": []}
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    page.on("request", lambda r: seen["pwned_requests"].append(r.url) if "pwned" in r.url else None)
    page.on("console", lambda m: seen["console"].append(m.text))
    return seen


def _not_pwned(page, seen) -> None:
    page.wait_for_timeout(300)  # let anything that was going to run, run
    assert seen["dialogs"] == [] and seen["pwned_requests"] == []
    assert "pwned" not in page.title()
    assert page.evaluate("() => window.pwned") is None
    for frame in page.frames:
        assert "pwned" not in frame.title()


def test_browser_renders_the_hostile_cda_without_running_it(records, browser):
    ours = records["ours"]
    from tests.console.conftest import login_page

    context = browser.new_context(base_url=ours.console)
    try:
        page = context.new_page()
        seen = _watch(page)
        login_page(page, ours.console, "clinician-support")
        page.goto(f"/documents?patient={quote(ALEX)}")
        page.click(f"text={HOSTILE_TITLE}")
        page.wait_for_load_state()
        frame = page.frame_locator("#document-frame")
        frame.locator("text=After the attack.").wait_for()
        assert frame.locator("text=hover me").count() == 1
        assert frame.locator("text=<img src=/pwned-text onerror=alert(1)>").count() == 1  # shown as words
        frame.locator("text=hover me").hover()
        frame.locator("text=click me").click()
        _not_pwned(page, seen)
        # inside the frame no script may run at all (sandbox without allow-scripts)
        inner = next(f for f in page.frames if f != page.main_frame)
        assert inner.evaluate("() => window.pwned") is None
        assert inner.evaluate("() => self.origin") == "null"  # sandboxed: an opaque origin, none of our cookies
        assert "allow-scripts" not in page.locator("#document-frame").get_attribute("sandbox")
        assert inner.locator("script").count() == 0 and inner.locator("img").count() == 0
        assert inner.locator("[onerror], [onmouseover], [onfocus], [style]").count() == 0
        page.screenshot(path=str(Path(ours.data_dir) / "documents.png"), full_page=True)
        # the rendered document opened on its own is sandboxed too (its CSP), and shows no script
        page.goto(page.url + "/view")
        page.locator("text=After the attack.").wait_for()
        _not_pwned(page, seen)
        # the raw XML is text, never a document the browser runs
        page.goto(page.url.replace("/view", "/raw"))
        assert "<script>window.pwned" in page.locator("body").inner_text()
        _not_pwned(page, seen)
    finally:
        context.close()


# --- Outside records ----------------------------------------------------------------------------
def test_browser_outside_records_discover_query_retrieve_against_a_second_node(records, browser):
    ours, partner_dir = records["ours"], records["partner_dir"]
    from tests.console.conftest import login_page

    context = browser.new_context(base_url=ours.console)
    try:
        page = context.new_page()
        seen = _watch(page)
        login_page(page, ours.console, "clinician-support")
        page.goto(f"/outside?patient={quote(ALEX)}")
        assert "may be named to partners" in page.locator("#consent").inner_text()
        page.click("#discover-button")
        page.locator("#outcome").wait_for()
        rows = page.locator("#progress-rows tr")
        visible = [r for r in rows.all() if r.is_visible()]
        assert len(visible) == 1 and "partner-community" in visible[0].inner_text()  # newest row per partner
        assert "answered" in visible[0].inner_text()
        assert rows.count() == 2  # started, then answered (the older one hidden by outside.js)
        assert "stored" in page.locator("#matches").inner_text()

        page.click("#query-button")
        page.locator("#outcome").wait_for()
        assert "Success" in page.locator("#outcome").inner_text()
        docs = page.locator("#documents tbody tr")
        assert docs.count() == 6  # Alex's five, and the hostile note
        assert PARTNER_HCID in page.locator("#documents").inner_text()
        docs.filter(has_text="Discharge Summary").locator("button.retrieve").click()
        page.locator("#outcome").wait_for()
        frame = page.frame_locator("#document-frame")
        frame.locator("h1", has_text="Discharge Summary").wait_for()
        assert frame.locator("text=Testpatient").count() >= 1
        page.locator("details.raw summary").click()
        assert "<ClinicalDocument" in page.locator("details.raw pre").inner_text()
        _not_pwned(page, seen)
        page.screenshot(path=str(Path(ours.data_dir) / "outside.png"), full_page=True)
        # the hostile note fetched from the partner: shown inline (srcdoc, sandboxed), never run
        page.goto(f"/outside?patient={quote(ALEX)}")  # (a POSTed page is not kept: no-store)
        page.click("#query-button")
        page.locator("#outcome").wait_for()
        page.locator("#documents tbody tr").filter(has_text=HOSTILE_TITLE).locator("button.retrieve").click()
        page.locator("#outcome").wait_for()
        frame = page.frame_locator("#document-frame")
        frame.locator("text=After the attack.").wait_for()
        frame.locator("text=hover me").hover()
        frame.locator("text=click me").click()
        inner = next(f for f in page.frames if f != page.main_frame)
        assert inner.locator("script, img, [onerror], [onmouseover], [style]").count() == 0
        assert inner.evaluate("() => self.origin") == "null"
        _not_pwned(page, seen)
    finally:
        context.close()

    # the partner saw the console user by name in the signed SAML of each call; our trail has it too
    from xds_node.audit.store import audit_events

    settings = load_settings(env={}, data_dir=partner_dir)
    from xds_node.db import make_engine

    engine = make_engine(settings.audit_db_url)
    with engine.connect() as conn:
        theirs = [dict(r._mapping) for r in conn.execute(select(audit_events).where(
            audit_events.c.direction == "inbound"))]
    engine.dispose()
    by_tx = {r["transaction"]: r for r in theirs if r["user_subject_id"] == "clinician-support"}
    assert {"ITI-55", "ITI-38", "ITI-39"} <= set(by_tx), sorted({(r["transaction"], r["user_subject_id"])
                                                                for r in theirs})
    assert by_tx["ITI-38"]["purpose_of_use"].startswith("TREATMENT")
    outbound = [r for r in _audit_rows(ours, direction="outbound") if r["user_subject_id"] == "clinician-support"]
    assert {"ITI-55", "ITI-38", "ITI-39"} <= {r["transaction"] for r in outbound}
    console_rows = [r["transaction"] for r in _audit_rows(ours, user_subject_id="clinician-support")
                    if r["transaction"].startswith("console:outside:ITI")]
    assert {"console:outside:ITI-55", "console:outside:ITI-38", "console:outside:ITI-39"} <= set(console_rows)


def test_outside_records_without_javascript_still_work(records, browser):
    ours = records["ours"]
    from tests.console.conftest import login_page

    context = browser.new_context(base_url=ours.console, java_script_enabled=False)
    try:
        page = context.new_page()
        login_page(page, ours.console, "administrator")
        page.goto(f"/outside?patient={quote(ALEX)}")
        page.click("#discover-button")
        page.locator("#outcome").wait_for()
        states = [r.get_attribute("data-kind") for r in page.locator("#progress-rows tr").all()]
        assert states == ["started", "answered"]  # every event stays listed, all visible
        assert all(r.is_visible() for r in page.locator("#progress-rows tr").all())
    finally:
        context.close()


def test_no_consent_nothing_is_sent_and_the_refusal_is_shown_and_audited(records):
    ours = records["ours"]
    other = next(p for p in ours.patients if p != ALEX)
    node = ours.node()
    try:
        assert not node.consent.decide(other)
    finally:
        node.close()
    client = login_http(ours.console, "clinician-support")
    page = client.get("/outside", params={"patient": other})
    assert "may not be named to partners" in page.text
    before = len(_audit_rows(ours, direction="outbound", outcome="attempt"))
    reply = client.post("/outside/discover", data={"csrf": csrf_of(page.text), "patient": other,
                                                    "purpose": "TREATMENT"})
    assert reply.status_code == 200 and "Refused:" in reply.text and "has not opted in" in reply.text
    assert '<tr data-partner' not in reply.text  # no partner was asked
    assert len(_audit_rows(ours, direction="outbound", outcome="attempt")) == before
    denied = _audit_rows(ours, direction="outbound", outcome="denied", patient_id=other)
    assert denied and denied[-1]["user_subject_id"] == "clinician-support"
    console_rows = _audit_rows(ours, transaction="console:outside:ITI-55", patient_id=other)
    assert sorted(r["outcome"] for r in console_rows) == ["attempt", "denied"]
    # a retrieve "for" that patient is refused by the console itself (ITI-39 names no patient)
    sent = len(_audit_rows(ours, direction="outbound", transaction="ITI-39"))
    reply = client.post("/outside/retrieve", data={"csrf": csrf_of(page.text), "patient": other,
                                                    "purpose": "TREATMENT", "home": PARTNER_HCID,
                                                    "repository": PARTNER_REPO, "document": "1.2.3"})
    assert reply.status_code == 400 and "has not opted in" in reply.text
    assert len(_audit_rows(ours, direction="outbound", transaction="ITI-39")) == sent
    assert [r["outcome"] for r in _audit_rows(ours, transaction="console:outside:ITI-39", patient_id=other)] == [
        "denied"]


def test_outside_records_refuse_bad_input_and_other_roles(records):
    ours = records["ours"]
    client = login_http(ours.console, "clinician-support")
    page = client.get("/outside", params={"patient": ALEX})
    token = csrf_of(page.text)
    assert client.post("/outside/discover", data={"patient": ALEX}).status_code == 403  # no CSRF token
    bad = client.post("/outside/query", data={"csrf": token, "patient": "VET0001"})
    assert bad.status_code == 400 and "CX" in bad.text
    bad = client.post("/outside/query", data={"csrf": token, "patient": ALEX, "purpose": "MARKETING"})
    assert bad.status_code == 400 and "purpose" in bad.text
    bad = client.post("/outside/retrieve", data={"csrf": token, "patient": ALEX, "document": "1.2"})
    assert bad.status_code == 400
    for role in ("registrar", "operator", "privacy-officer"):
        other = login_http(ours.console, role)
        assert other.get("/outside", params={"patient": ALEX}).status_code == 403
        token = csrf_of(other.get("/outside").text)  # (the refusal page carries the logout form's token)
        assert other.post("/outside/discover", data={"csrf": token, "patient": ALEX}).status_code == 403


def test_a_retrieve_must_name_a_document_a_query_listed_for_that_patient(records):
    """A hand-made retrieve form (a consented patient named, someone else's document asked for) is
    refused before anything is sent: the document is read, consent-checked and audited only as the
    patient whose query listed it (the list signs each document with the patient)."""
    from xds_node.console.pages.outside import listed_token

    ours = records["ours"]
    client = login_http(ours.console, "clinician-support")
    page = client.get("/outside", params={"patient": ALEX})
    sent = len(_audit_rows(ours, direction="outbound", transaction="ITI-39"))
    form = {"csrf": csrf_of(page.text), "patient": ALEX, "purpose": "TREATMENT", "home": PARTNER_HCID,
            "repository": PARTNER_REPO, "document": "1.2.3.4.5"}
    node = ours.node()
    try:
        secret = load_secret(node.engine)
    finally:
        node.close()
    for listed in ("", "0" * 64, listed_token(secret, "OTHER^^^&1.2.3&ISO", PARTNER_HCID, PARTNER_REPO, "1.2.3.4.5"),
                   listed_token(secret, ALEX, PARTNER_HCID, PARTNER_REPO, "1.2.3.4.6")):
        reply = client.post("/outside/retrieve", data={**form, "listed": listed})
        assert reply.status_code == 400 and "from the list" in reply.text, reply.text[:300]
    assert len(_audit_rows(ours, direction="outbound", transaction="ITI-39")) == sent
    denied = _audit_rows(ours, transaction="console:outside:ITI-39", patient_id=ALEX, outcome="denied")
    assert len(denied) == 4 and {r["reason"] for r in denied} == {"not listed for this patient"}


def test_the_streamed_page_arrives_in_parts(records):
    """The progress rows leave before the result: the page is streamed as the partners answer."""
    ours = records["ours"]
    client = login_http(ours.console, "administrator")
    page = client.get("/outside", params={"patient": ALEX})
    chunks = []
    with client.stream("POST", "/outside/query", data={"csrf": csrf_of(page.text), "patient": ALEX,
                                                       "purpose": "TREATMENT"}) as reply:
        assert reply.status_code == 200
        assert "frame-src 'self'" in reply.headers["content-security-policy"]
        for chunk in reply.iter_text():
            chunks.append(chunk)
    body = "".join(chunks)
    assert body.index('data-kind="started"') < body.index('data-kind="answered"') < body.index('id="outcome"')
    assert len(chunks) >= 3
