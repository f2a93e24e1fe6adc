"""XCPD partners answering AE with "...Requested" codes (ITI TF-2b 3.55.4.4.2): the initiating
gateway asks once more, adding what was asked from our stored demographics of the patient, and
only when it has something to add. Partners are scripted in-process (``httpx.MockTransport``);
the end-to-end path against a real responding node is in test_discover_live.py."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.gateway.test_gateway_unit import ALEX, CTX, LOCAL, World, _index, hcid, run, soap
from xds_node.ebxml import vocabulary as v
from xds_node.gateway.initiating import add_requested, read_xcpd_answer
from xds_node.patients.hl7v3 import build_prpa_in201306, parse_prpa_in201305, read_issue_codes
from xds_node.patients.model import Address, Demographics, Patient
from xds_node.security.keys import generate_demo_keys, load_key_and_cert

S = v.ResponseStatus
HOME = Address(street=["12 Imaginary Lane"], city="Testville", state="VA", postal_code="22030")
STORED = replace(ALEX, addresses=[HOME], telecoms=["tel:+1-555-010-1001"])
THEIRS = Patient("H-77^^^&2.16.840.1.113883.3.1&ISO", STORED)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("xcpd-retry-keys")
    return load_key_and_cert(*generate_demo_keys(d, common_name="VA initiating gateway"))


class Partner:
    """Answers the first query AE (ambiguous) with ``codes``, then each later one ``then``."""

    def __init__(self, codes: list[str], then: str = "match", *, ack_error: bool = False):
        self.codes, self.then, self.ack_error = codes, then, ack_error
        self.queries: list = []

    def __call__(self, msg):
        q = parse_prpa_in201305(msg.body)
        self.queries.append(q)
        common = {"home_community_id": hcid("p"), "our_device_oid": "1.2.3"}
        if len(self.queries) == 1 or self.then == "again":
            if self.ack_error:  # an application error, no codes at all
                el = build_prpa_in201306(q, outcome="error", error="matcher unavailable", **common)
            else:
                el = build_prpa_in201306(q, outcome="ambiguous", issue_codes=self.codes, **common)
        else:
            el = build_prpa_in201306(q, outcome="match", patient=THEIRS, **common)
        return soap(v.Action.ITI55, el)


def world(keys, tmp_path, partner: Partner, *stored: Patient) -> World:
    return World(keys, {"p": partner}, tmp=tmp_path, patients=_index(tmp_path, *stored))


def test_issue_codes_are_read_from_the_answer():
    q = parse_prpa_in201305(_query())
    el = build_prpa_in201306(q, outcome="ambiguous", issue_codes=["PatientAddressRequested"],
                             home_community_id=hcid("p"), our_device_oid="1.2.3")
    assert read_issue_codes(el) == ["AnswerNotAvailable", "PatientAddressRequested"]
    answer = read_xcpd_answer(el)
    assert (answer.ack_code, answer.response_code, answer.requested) == ("AE", "AE", ["PatientAddressRequested"])
    # a code of another code system is not an XCPD request for more data
    for code in el.iterfind(".//{urn:hl7-org:v3}detectedIssueManagement/{urn:hl7-org:v3}code"):
        code.set("codeSystem", "9.9")
    assert read_xcpd_answer(el).requested == []


def _query():
    from xds_node.gateway.initiating import build_xcpd_query

    return build_xcpd_query(ALEX, our_community="urn:oid:1.2", partner_community=hcid("p"))


def test_address_requested_gets_exactly_one_retry_with_the_stored_address(keys, tmp_path):
    partner = Partner(["PatientAddressRequested"])
    w = world(keys, tmp_path, partner, Patient(LOCAL.cx, STORED))
    result = run(w.gw.discover(ALEX, CTX, local_patient_id=LOCAL.cx))  # typed: name, birth date, gender only
    assert len(partner.queries) == 2
    first, second = (q.demographics for q in partner.queries)
    assert first.addresses == [] and second.addresses == [HOME]
    assert second.telecoms == []  # only what was asked is added
    out = result.partners[0]
    assert (out.state, out.calls, out.detail) == ("answered", 2, "match")
    assert out.retry == "second query with addresses: the partner requested PatientAddressRequested"
    assert result.status == S.SUCCESS and not result.errors
    assert [m.stored for m in result.matches] == [True]
    assert result.to_dict()["partners"][0]["retry"] == out.retry


def test_several_requested_codes_add_everything_we_hold(keys, tmp_path):
    partner = Partner(["LivingSubjectAdministrativeGenderRequested", "PatientAddressRequested",
                       "PatientTelecomRequested", "LivingSubjectBirthPlaceNameRequested"])
    w = world(keys, tmp_path, partner, Patient(LOCAL.cx, STORED))
    typed = replace(ALEX, gender=None)
    result = run(w.gw.discover(typed, CTX, local_patient_id=LOCAL.cx))
    second = partner.queries[1].demographics
    assert (second.gender, second.addresses, second.telecoms) == ("M", [HOME], ["tel:+1-555-010-1001"])
    assert result.partners[0].retry.startswith("second query with gender, addresses, telecoms: ")


def test_a_second_ae_is_not_asked_a_third_time(keys, tmp_path):
    partner = Partner(["PatientAddressRequested", "PatientTelecomRequested"], then="again")
    w = world(keys, tmp_path, partner, Patient(LOCAL.cx, STORED))
    result = run(w.gw.discover(ALEX, CTX, local_patient_id=LOCAL.cx))
    assert len(partner.queries) == 2 and result.partners[0].calls == 2
    out = result.partners[0]
    assert out.state == "failed" and "requested PatientAddressRequested, PatientTelecomRequested" in out.detail
    assert result.status == S.FAILURE


@pytest.mark.parametrize("held", ["nothing", "already sent", "not stored", "birth place"])
def test_no_retry_when_we_hold_nothing_more(keys, tmp_path, held):
    codes = ["LivingSubjectBirthPlaceNameRequested"] if held == "birth place" else ["PatientAddressRequested"]
    partner = Partner(codes)
    typed = ALEX
    stored = [Patient(LOCAL.cx, STORED)]
    if held == "nothing":
        stored = [Patient(LOCAL.cx, ALEX)]  # our record has no address either
    elif held == "already sent":
        typed = replace(ALEX, addresses=[Address(postal_code="22030")])  # the typed one wins: not re-asked
    elif held == "not stored":
        stored = []
    w = world(keys, tmp_path, partner, *stored)
    result = run(w.gw.discover(typed, CTX, local_patient_id=LOCAL.cx))
    assert len(partner.queries) == 1
    out = result.partners[0]
    assert out.calls == 1 and out.state == "failed"
    assert out.retry == f"not asked again: the partner requested {codes[0]}, we hold nothing more to send"
    assert result.errors[0].context.endswith(f"(requested {codes[0]})")


def test_an_ae_without_requested_codes_is_not_retried(keys, tmp_path):
    for partner in (Partner([]), Partner(["PatientAddressRequested"], ack_error=True)):
        w = world(keys, tmp_path, partner, Patient(LOCAL.cx, STORED))
        result = run(w.gw.discover(ALEX, CTX, local_patient_id=LOCAL.cx))
        assert len(partner.queries) == 1
        out = result.to_dict()["partners"][0]
        assert (out["calls"], out["state"], out["retry"]) == (1, "failed", "")


def test_the_retry_is_audited_with_its_reason(keys, tmp_path):
    from xds_node.audit.store import AuditLog
    from xds_node.db import make_engine

    audit = AuditLog(make_engine(f"sqlite:///{tmp_path / 'audit.db'}"))
    audit.create_schema()
    partner = Partner(["PatientAddressRequested"])
    w = world(keys, tmp_path, partner, Patient(LOCAL.cx, STORED))
    w.gw.audit = audit
    run(w.gw.discover(ALEX, CTX, local_patient_id=LOCAL.cx))
    listed = sorted(audit.list(transaction="ITI-55"), key=lambda e: e.time)
    assert [e.outcome for e in listed].count("attempt") == 1  # the intent, committed before anything is sent
    events = [e for e in listed if e.outcome != "attempt"]
    assert [(e.direction, e.outcome, e.patient_id) for e in events] == [
        ("outbound", "failure", LOCAL.cx), ("outbound", "success", LOCAL.cx)]
    assert events[0].reason == "XCPD AE/AE, requested PatientAddressRequested; asking again with addresses"
    assert events[1].reason == "second query with addresses: the partner requested PatientAddressRequested"


def test_add_requested_is_pure():
    sent = Demographics(family="Testpatient", birth_date="19780412")
    richer, added = add_requested(sent, STORED, ["PatientAddressRequested", "PatientAddressRequested",
                                                 "SomethingElseRequested"])
    assert added == ["addresses"] and richer.addresses == [HOME] and sent.addresses == []
    assert richer.addresses is not STORED.addresses
    assert add_requested(sent, None, ["PatientAddressRequested"]) == (sent, [])
