"""Audit trail: events, storage, filters, export, accounting of disclosures, sinks that fail."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.exc import IntegrityError

from xds_node.audit.events import AuditEvent, default_action_code
from xds_node.audit.store import EXPORT_FIELDS, AuditLog, export, format_accounting
from xds_node.db import make_engine, metadata
from xds_node.security.principal import NHIN_PURPOSE, SNOMED_CT, CodedValue, Principal

PID = "123^^^&1.2.3&ISO"
OTHER = "456^^^&1.2.3&ISO"
PARTNER = "urn:oid:2.16.840.1.113883.3.1"
T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/x.db")
    metadata.create_all(engine)
    yield engine
    engine.dispose()


def event(**kw) -> AuditEvent:
    base = dict(
        transaction="ITI-38",
        partner_community=PARTNER,
        partner_organization="General Hospital",
        partner_organization_id="urn:oid:2.16.840.1.113883.3.1.5",
        user_subject_id="Dr. Jane Smith",
        user_role_code="112247003",
        user_role_display="Medical doctor",
        purpose_of_use="TREATMENT",
        patient_id=PID,
        remote_address="10.0.0.7",
        endpoint="https://gw.example.org/xca/query",
        message_id="urn:uuid:0f6e1c3a-1111-2222-3333-444455556666",
    )
    return AuditEvent(**(base | kw))


class Boom:
    def send(self, event):
        raise RuntimeError("ARR exploded")


class Collect:
    def __init__(self):
        self.events = []

    def send(self, event):
        self.events.append(event)


def test_event_defaults_and_outcome_mapping():
    e = AuditEvent(transaction="ITI-55")
    assert e.action_code == "E" and e.direction == "inbound" and e.time.tzinfo is not None
    assert len(e.event_id) == 36
    assert [AuditEvent(transaction="ITI-38", outcome=o).outcome_indicator for o in
            ("success", "partial", "denied", "failure", "error")] == [0, 4, 8, 8, 12]  # fmt: skip
    assert default_action_code("ITI-39", "inbound") == "R"
    assert default_action_code("ITI-39", "outbound") == "C"
    assert default_action_code("ITI-41", "inbound") == "C"
    with pytest.raises(ValueError):
        AuditEvent(transaction="ITI-38", outcome="fine")  # type: ignore[arg-type]


def test_event_from_principal():
    p = Principal(
        subject_id="Dr. Jane Smith",
        organization="General Hospital",
        organization_id="urn:oid:2.16.840.1.113883.3.1.5",
        home_community_id=PARTNER,
        role=CodedValue("112247003", SNOMED_CT, "Medical doctor"),
        purpose_of_use=CodedValue("TREATMENT", NHIN_PURPOSE, "Treatment"),
        npi=None,
        resource_id=None,
        partner="general",
        assertion_id="_a1",
        issuer="CN=gh",
        name_id="jsmith",
        not_on_or_after=T0,
    )
    e = AuditEvent.from_principal(p, transaction="ITI-39", patient_id=PID, document_ids=["1.2.3.4"])
    assert (e.partner_community, e.partner_organization, e.user_subject_id) == (PARTNER, "General Hospital",
                                                                                 "Dr. Jane Smith")
    assert (e.user_role_code, e.user_role_display, e.purpose_of_use) == ("112247003", "Medical doctor", "TREATMENT")
    assert e.action_code == "R"
    anonymous = AuditEvent.from_principal(None, transaction="ITI-55", outcome="denied", reason="bad SAML")
    assert anonymous.partner_community == "" and anonymous.reason == "bad SAML"


def test_record_and_list_roundtrip(engine):
    log = AuditLog(engine)
    original = event(time=T0, document_ids=["1.2.3", "1.2.4"], query_id="urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d")
    log.record(original)
    [back] = log.list()
    assert back.to_dict() == original.to_dict()
    assert back.time == T0


def test_list_filters_and_order(engine):
    log = AuditLog(engine)
    log.record(event(time=T0, transaction="ITI-55"))
    log.record(event(time=T0 + timedelta(minutes=1), transaction="ITI-38", outcome="denied", reason="no consent"))
    log.record(event(time=T0 + timedelta(minutes=2), transaction="ITI-39", patient_id=OTHER,
                     document_ids=["9.9"]))  # fmt: skip
    log.record(event(time=T0 + timedelta(minutes=3), partner_community="urn:oid:9.9.9", partner_organization="Other",
                     partner_organization_id="urn:oid:9.9.9.1"))  # fmt: skip

    assert [e.time.minute for e in log.list()] == [3, 2, 1, 0]  # newest first
    assert len(log.list(patient_id=OTHER)) == 1
    assert [e.transaction for e in log.list(transaction="ITI-55")] == ["ITI-55"]
    assert [e.reason for e in log.list(outcome="denied")] == ["no consent"]
    assert len(log.list(partner=PARTNER)) == 3
    assert len(log.list(partner=PARTNER.removeprefix("urn:oid:"))) == 3  # with or without urn:oid:
    assert len(log.list(partner="Other")) == 1
    window = log.list(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=3))
    assert [e.time.minute for e in window] == [2, 1]
    assert len(log.list(limit=2)) == 2


def test_failing_sink_does_not_break_record(engine, caplog):
    collect = Collect()
    log = AuditLog(engine, sinks=[Boom(), collect])
    e = log.record(event())
    assert collect.events == [e]  # the sink after the broken one still got it
    assert len(log.list()) == 1
    assert "ARR exploded" in caplog.text


def test_database_failure_is_raised(engine):
    log = AuditLog(engine)
    e = event()
    log.record(e)
    with pytest.raises(IntegrityError):
        log.record(e)  # same event id: an audit row that cannot be written must not pass silently


def test_export_json_and_csv(engine):
    log = AuditLog(engine)
    log.record(event(time=T0, transaction="ITI-39", document_ids=["1.2.3", "1.2.4"], repository_unique_id="1.9"))
    log.record(event(time=T0 + timedelta(seconds=1), outcome="denied", reason="no consent, sorry"))
    events = log.list()

    buf = io.StringIO()
    assert export(events, "json", buf) == 2
    data = json.loads(buf.getvalue())
    assert data[0]["outcome"] == "denied" and data[0]["outcome_indicator"] == 8
    assert data[1]["document_ids"] == ["1.2.3", "1.2.4"] and data[1]["time"] == "2024-03-01T09:00:00Z"

    buf = io.StringIO()
    assert log.export(events, "csv", buf) == 2
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert rows[0]["reason"] == "no consent, sorry"
    assert rows[1]["document_ids"] == "1.2.3;1.2.4" and rows[1]["repository_unique_id"] == "1.9"
    assert rows[0]["repository_unique_id"] == ""

    with pytest.raises(ValueError):
        export(events, "xml", io.StringIO())  # type: ignore[arg-type]


def test_accounting_of_disclosures(engine):
    log = AuditLog(engine)
    log.record(event(time=T0, transaction="ITI-55"))
    log.record(event(time=T0 + timedelta(minutes=1), outcome="denied", reason="no consent"))
    log.record(event(time=T0 + timedelta(minutes=2), transaction="ITI-38", outcome="partial"))
    log.record(event(time=T0 + timedelta(minutes=3), transaction="ITI-39", document_ids=["1.2.3", "1.2.4"]))
    log.record(event(time=T0 + timedelta(minutes=4), outcome="failure"))
    # we named the patient to a partner: an outbound disclosure (the attempt row before it is not one)
    log.record(event(time=T0 + timedelta(minutes=5), direction="outbound", outcome="attempt"))
    log.record(event(time=T0 + timedelta(minutes=5), direction="outbound"))
    log.record(event(time=T0 + timedelta(minutes=6), patient_id=OTHER))

    rows = log.accounting_of_disclosures(PID)
    assert [(r["transaction"], r["direction"]) for r in rows] == [
        ("ITI-55", "inbound"), ("ITI-38", "inbound"), ("ITI-39", "inbound"), ("ITI-38", "outbound")]
    assert rows[3]["description"].startswith("OUTBOUND ITI-38")
    first = rows[0]
    assert first["date"] == "2024-03-01T09:00:00Z"
    assert first["recipient_organization"] == "General Hospital" and first["recipient_community"] == PARTNER
    assert first["purpose"] == "TREATMENT" and first["user"] == "Dr. Jane Smith"
    assert rows[2]["documents"] == ["1.2.3", "1.2.4"]
    assert "2 documents: 1.2.3, 1.2.4" in rows[2]["description"]
    assert "(partial)" in rows[1]["description"]
    assert [r["transaction"] for r in log.accounting_of_disclosures(PID, since=T0 + timedelta(minutes=3),
                                                                    until=T0 + timedelta(minutes=4))] == ["ITI-39"]

    text = format_accounting(rows, patient_id=PID)
    lines = text.splitlines()
    assert lines[0] == f"Accounting of disclosures for patient {PID}"
    assert lines[1].startswith("date (UTC)")
    assert "2024-03-01 09:03:00" in lines[5] and "General Hospital" in lines[5] and "Dr. Jane Smith" in lines[5]
    assert lines[-1] == "4 disclosures"
    assert "no disclosures" in format_accounting([])


# --- bounds, caller identity, output safety (issue 9) -------------------------------------------
def test_bound_text_truncates_with_marker_and_digest():
    from xds_node.audit.events import MAX_FIELD_BYTES, MAX_FIELD_CHARS, bound_text

    assert bound_text("urn:uuid:1") == "urn:uuid:1"
    exact = "x" * MAX_FIELD_CHARS
    assert bound_text(exact) == exact  # at the limit: kept whole
    long = "y" * 5000
    out = bound_text(long)
    digest = hashlib.sha256(long.encode()).hexdigest()
    assert len(out) == MAX_FIELD_CHARS and out.endswith(f"\u2026[truncated 5000 chars sha256={digest}]")
    assert out.startswith("y" * 900)
    wide = "\U0001f600" * 1024  # 1,024 characters but 4,096 bytes: too big for a btree entry
    out = bound_text(wide)
    assert len(out.encode()) <= MAX_FIELD_BYTES and "\u2026[truncated 1024 chars" in out
    assert bound_text("a\x00b") == "a\\x00b"  # PostgreSQL text cannot hold NUL
    for value in (long, wide, "z" * 1025):
        assert bound_text(bound_text(value)) == bound_text(value)  # idempotent


def test_bound_ids_caps_count_and_size():
    from xds_node.audit.events import MAX_DOCUMENT_IDS, bound_ids

    ids = [f"1.2.3.{i}" for i in range(MAX_DOCUMENT_IDS + 5)]
    out = bound_ids(ids)
    assert len(out) == MAX_DOCUMENT_IDS and out[:-1] == ids[: MAX_DOCUMENT_IDS - 1]
    rest = ids[MAX_DOCUMENT_IDS - 1:]
    digest = hashlib.sha256("\n".join(rest).encode()).hexdigest()
    assert out[-1] == f"\u2026[{len(rest)} more document ids sha256={digest}]"
    assert bound_ids(out) == out
    big = ["q" * 5000] * 2000  # each id bounded, the whole list within its character budget
    out = bound_ids(big)
    assert all(len(i) <= 1024 for i in out) and sum(map(len, out)) <= 1_000_000
    assert out[-1].startswith("\u2026[") and bound_ids(out) == out
    assert bound_ids(["a", "b"]) == ["a", "b"]


def test_every_field_is_bounded_for_allowed_and_denied_events(engine):
    from xds_node.audit.events import BOUNDED_FIELDS

    huge = "h" * 100_000
    log = AuditLog(engine)
    for outcome in ("success", "denied"):
        e = AuditEvent(transaction="ITI-38", outcome=outcome, **{f: huge for f in BOUNDED_FIELDS if f != "transaction"},
                       document_ids=[huge, "1.2.3"])
        log.record(e)
    for back in log.list():
        d = back.to_dict()
        assert all(len(d[f]) <= 1024 for f in d if isinstance(d[f], str)), d
        assert back.message_id.endswith("]") and back.document_ids[1] == "1.2.3"


def test_from_principal_fills_partner_and_caller_kind():
    from types import SimpleNamespace

    coded = CodedValue("TREATMENT", NHIN_PURPOSE, "Treatment")
    partner = SimpleNamespace(subject_id="Dr. A", partner="general", role=coded, purpose_of_use=coded)
    e = AuditEvent.from_principal(partner, transaction="ITI-38")
    assert (e.partner, e.caller_kind) == ("general", "partner")  # a Principal without `kind` is a partner's
    internal = SimpleNamespace(subject_id="ehr", partner="our-ehr", kind="internal", role=None, purpose_of_use=None)
    e = AuditEvent.from_principal(internal, transaction="ITI-18")
    assert (e.partner, e.caller_kind) == ("our-ehr", "internal")
    assert AuditEvent.from_principal(None, transaction="ITI-43").caller_kind == "anonymous"
    with pytest.raises(ValueError):
        AuditEvent(transaction="ITI-38", caller_kind="root")  # type: ignore[arg-type]


def test_partner_columns_are_stored_listed_and_accounted(engine):
    log = AuditLog(engine)
    log.record(event(time=T0, partner="general", caller_kind="partner"))
    [back] = log.list(partner="general")
    assert (back.partner, back.caller_kind) == ("general", "partner")
    [row] = log.accounting_of_disclosures(PID)
    assert row["recipient_partner"] == "general"
    text = format_accounting([row], patient_id=PID)
    assert text.splitlines()[1].split()[:5] == ["date", "(UTC)", "recipient", "community", "partner"]
    assert "general" in text.splitlines()[3]


def test_text_outputs_escape_control_characters():
    from xds_node.audit.text import printable

    assert printable("Dr. Smith") == "Dr. Smith"
    assert printable("a\nb\rc\td\x1b[2Je\x9bf\x85g\u2028h\u202ei\x00") == \
        "a\\nb\\rc\\td\\x1b[2Je\\x9bf\\x85g\\u2028h\\u202ei\\x00"
    rows = [{"date": "2024-03-01T09:00:00Z", "recipient_organization": "Evil\nCorp", "recipient_organization_id": "",
             "recipient_community": "c", "recipient_partner": "p", "purpose": "TREATMENT", "transaction": "ITI-38",
             "documents": [], "description": "d\r\n2024-01-01 forged", "user": "u\x1b]0;pwned\x07",
             "user_role": "", "event_id": "e"}]
    text = format_accounting(rows, patient_id="P\n1")
    assert len(text.splitlines()) == 5 and "\x1b" not in text and "\x07" not in text
    assert "Evil\\nCorp" in text and "d\\r\\n2024-01-01 forged" in text and "P\\n1" in text


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1", "\n=1",
                                  '=HYPERLINK("http://x","y")'])
def test_csv_cells_are_neutralised(engine, cell):
    log = AuditLog(engine)
    log.record(event(user_subject_id=cell, reason=cell, partner=cell))
    buf = io.StringIO()
    export(log.list(), "csv", buf)
    [row] = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert row["user_subject_id"] == row["reason"] == row["partner"] == "'" + cell
    buf = io.StringIO()
    export(log.list(), "json", buf)
    assert json.loads(buf.getvalue())[0]["user_subject_id"] == cell  # JSON stays exact


def test_an_old_audit_table_is_reported_at_start(tmp_path, caplog):
    from sqlalchemy import text

    engine = make_engine(f"sqlite:///{tmp_path}/old.db")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE audit_event (event_id VARCHAR(64) PRIMARY KEY, time DATETIME)"))
    AuditLog(engine).create_schema()
    assert "audit_event table predates this version" in caplog.text and "caller_kind" in caplog.text
    engine.dispose()


def test_csv_a_carriage_return_inside_a_cell_does_not_start_a_row(engine):
    log = AuditLog(engine)
    log.record(event(user_subject_id='Dr. A\r2024-01-01,"forged",row'))
    buf = io.StringIO()
    export(log.list(), "csv", buf)
    rows = list(csv.reader(io.StringIO(buf.getvalue(), newline="")))
    assert len(rows) == 2 and rows[1][EXPORT_FIELDS.index("user_subject_id")] == 'Dr. A\r2024-01-01,"forged",row'


@pytest.mark.parametrize("kind", ["sync", "async", "returns-awaitable"])
def test_notify_fails_closed_for_every_kind_of_recorder(kind, caplog):
    import asyncio

    from xds_node.soap.fault import SoapFault
    from xds_node.transactions import notify

    def sync(req, tx, result):
        raise OSError(28, "No space left on device")

    async def coro(req, tx, result):
        raise OSError(28, "No space left on device")

    recorder = {"sync": sync, "async": coro, "returns-awaitable": lambda *a: coro(*a)}[kind]
    with pytest.raises(SoapFault) as info:
        asyncio.run(notify(recorder, object(), "ITI-38", object()))
    fault = info.value
    assert (fault.code, fault.http_status, fault.http_headers) == ("Receiver", 503, [("Retry-After", "30")])
    assert "No space" not in fault.reason  # nothing about our internals goes to the caller
    assert any(r.levelname == "ERROR" and "audit of ITI-38 could not be written" in r.getMessage()
               for r in caplog.records)
    asyncio.run(notify(lambda *a: None, object(), "ITI-38", object()))  # a committed row: no fault
