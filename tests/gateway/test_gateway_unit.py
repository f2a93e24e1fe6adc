"""The initiating gateway's outbound client and orchestration, with partners simulated in-process
by ``httpx.MockTransport`` (the multi-process tests are in test_gateway_live.py)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from lxml import etree

from tests.corpus import assert_valid
from tests.factories import document
from xds_node.ebxml import rim, xdsb
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import RegistryError
from xds_node.gateway.initiating import (
    InitiatingGateway,
    aggregate_status,
    build_xcpd_query,
)
from xds_node.gateway.outbound import AssertionCache, MtomStreamParser, OutboundClient
from xds_node.patients.hl7v3 import build_prpa_in201306, parse_prpa_in201305
from xds_node.patients.index import PatientIndex
from xds_node.patients.model import Demographics, Patient, PatientId
from xds_node.security.consent import ConsentPolicy, ConsentStore
from xds_node.security.keys import generate_demo_keys, load_key_and_cert
from xds_node.security.saml import InboundVerifier, RequesterContext, SecurityPolicy
from xds_node.security.trust import Partner, TrustStore
from xds_node.security.wss import WSSE
from xds_node.soap.envelope import SoapResponse, parse_envelope, serialize_response
from xds_node.soap.fault import SoapFault
from xds_node.soap.mtom import Attachment, build_multipart
from xds_node.transactions.ig import IgSettings

S = v.ResponseStatus
E = v.ErrorCode
OURS = "urn:oid:1.3.6.1.4.1.21367.2026.7.1"
LOCAL = PatientId("VET0001", "1.3.6.1.4.1.21367.2026.1.9")
ALEX = Demographics(given=["Alex"], family="Testpatient", gender="M", birth_date="19780412")
CTX = RequesterContext(subject_id="Dr. Jane Example", organization="VA Test", organization_id=OURS,
                       home_community_id=OURS, role=("112247003", "2.16.840.1.113883.6.96", "Medical doctor"),
                       purpose_of_use=("TREATMENT", "2.16.840.1.113883.3.18.7.1", "Treatment"), npi="1234567893")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("ig-keys")
    return load_key_and_cert(*generate_demo_keys(d, common_name="VA initiating gateway"))


def hcid(name: str) -> str:
    return f"urn:oid:1.3.6.1.4.1.21367.2026.7.{sum(map(ord, name))}"


def partner(name: str, **kw) -> Partner:
    base = f"http://{name}.test"
    return Partner(name=name, home_community_id=hcid(name),
                   endpoints={"xcpd": base + "/xcpd", "ITI-38": base + "/xca/query",
                              "xca_retrieve": base + "/xca/retrieve"},
                   **kw)


Behaviour = Callable[[object], httpx.Response]


def soap(action: str, body, attachments=()) -> httpx.Response:
    resp = SoapResponse(action=v.response_action(action), body=body, attachments=list(attachments),
                        mtom=action == v.Action.ITI39)
    data, ct = serialize_response(resp, relates_to=None)
    return httpx.Response(200, content=data if isinstance(data, bytes) else b"".join(data),
                          headers={"content-type": ct})


def fault(reason: str = "busy") -> httpx.Response:
    from xds_node.soap.envelope import fault_envelope

    return httpx.Response(500, content=fault_envelope(SoapFault("Receiver", reason)),
                          headers={"content-type": "application/soap+xml"})


def consent_policy(tmp: Path, *granted: str, mode: str = "opt-in") -> ConsentPolicy:
    """A real consent policy over its own SQLite database, with ``granted`` patients opted in."""
    from xds_node.db import make_engine

    store = ConsentStore(make_engine(f"sqlite:///{tmp / f'consent-{uuid.uuid4().hex}.db'}"))
    store.create_schema()
    for pid in granted:
        store.grant(pid, source="test")
    return ConsentPolicy(store, mode)  # type: ignore[arg-type]


class World:
    """Partners by host name, each with a behaviour(request message) -> httpx.Response.
    Our patient LOCAL has opted in unless ``consent`` says otherwise."""

    def __init__(self, keys, behaviours: dict[str, Behaviour], *, tmp: Path, options: dict | None = None,
                 match_mode: str = "verify", patients: PatientIndex | None = None, memory_limit: int = 256 * 1024,
                 consent: ConsentPolicy | None = None):
        self.behaviours = behaviours
        self.calls: Counter[tuple[str, str]] = Counter()
        self.messages: list = []
        store = TrustStore([partner(n, **(options or {}).get(n, {})) for n in behaviours])
        self.trust = store
        self.assertions = AssertionCache(keys[0], keys[1], issuer="CN=VA initiating gateway")
        self.client = OutboundClient(self.assertions, transport=httpx.MockTransport(self._handle),
                                     spool_dir=tmp / "spool", memory_limit=memory_limit)
        self.consent = consent or consent_policy(tmp, LOCAL.cx)
        self.gw = InitiatingGateway(self.client, trust=store, home_community_id=OURS, patients=patients,
                                    match_mode=match_mode, consent=self.consent)

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        content = await request.aread()
        msg = parse_envelope(content, request.headers["content-type"])
        host = request.url.host.removesuffix(".test")
        self.calls[(host, msg.action)] += 1
        self.messages.append(msg)
        result = self.behaviours[host](msg)
        if isinstance(result, Exception):
            raise result
        return result


def run(coro):
    return asyncio.run(coro)


# --- aggregation --------------------------------------------------------------------------------
@pytest.mark.parametrize(("answered", "failed", "partial", "expected"), [
    (3, 0, False, S.SUCCESS), (2, 1, False, S.PARTIAL_SUCCESS), (3, 0, True, S.PARTIAL_SUCCESS),
    (0, 3, False, S.FAILURE), (0, 0, False, S.SUCCESS)])
def test_aggregate_status(answered, failed, partial, expected):
    assert aggregate_status(answered, failed, partial=partial) == expected


# --- security header ----------------------------------------------------------------------------
def test_assertion_is_signed_once_per_audience_and_every_message_verifies(keys, tmp_path):
    world = World(keys, {"a": lambda m: soap(v.Action.ITI38, rim.adhoc_query_response_bytes(S.SUCCESS))},
                  tmp=tmp_path, options={"a": {"options": {"audience": "https://a.test"}}})
    p = world.trust.partner("a")
    verifier = InboundVerifier(TrustStore([Partner("va", OURS, certificates=[keys[1]])]),
                               SecurityPolicy(audience="https://a.test"))

    async def main():
        async with world.client:
            for _ in range(3):
                await world.client.call(p, p.endpoints["ITI-38"], v.Action.ITI38, b"<x/>", CTX)

    run(main())
    assert world.assertions.signed == 1 and world.assertions.reused == 2
    headers = [m.header_block(WSSE, "Security") for m in world.messages]
    ids = {h.find(".//{urn:oasis:names:tc:SAML:2.0:assertion}Assertion").get("ID") for h in headers}
    assert len(ids) == 1  # one assertion, three messages
    for m in world.messages:
        principal = verifier.verify(m.header_block(WSSE, "Security"), m.envelope)
        assert (principal.subject_id, principal.npi, principal.purpose_of_use[0]) == (
            "Dr. Jane Example", "1234567893", "TREATMENT")
    # the assertion is renewed when it nears its end, and per audience / algorithm / NameFormat
    cache = world.assertions
    a1 = cache.get(CTX, audience="x")
    assert cache.get(CTX, audience="x") is a1
    assert cache.get(CTX, audience="y") is not a1
    later = cache.get(CTX, audience="x", now=_now() + cache.lifetime)
    assert later is not a1
    sha1 = cache.get(CTX, sha1=True)
    assert b"rsa-sha1" in etree.tostring(sha1)
    basic = cache.get(CTX, name_format="urn:oasis:names:tc:SAML:2.0:attrname-format:basic")
    assert {a.get("NameFormat") for a in basic.iter("{urn:oasis:names:tc:SAML:2.0:assertion}Attribute")} == {
        "urn:oasis:names:tc:SAML:2.0:attrname-format:basic"}


def _now():
    from xds_node.security.wss import utcnow

    return utcnow()


# --- XCPD ---------------------------------------------------------------------------------------
def test_xcpd_query_is_readable_by_our_responder_in_query_and_feed_mode():
    el = build_xcpd_query(ALEX, our_community=OURS, partner_community=hcid("a"), local_patient_id=LOCAL)
    q = parse_prpa_in201305(etree.fromstring(etree.tostring(el)))
    assert q.initiator_patient_id == LOCAL
    assert q.sender_home_community_id == OURS.removeprefix("urn:oid:")
    d = q.demographics
    assert (d.family, d.given, d.gender, d.birth_date) == ("Testpatient", ["Alex"], "M", "19780412")


def xcpd_answer(patient: Patient | None) -> Behaviour:
    def answer(msg):
        q = parse_prpa_in201305(msg.body)
        el = build_prpa_in201306(q, outcome="match" if patient else "none", patient=patient,
                                 home_community_id=hcid("x"), our_device_oid="1.2.3")
        return soap(v.Action.ITI55, el)

    return answer


@pytest.mark.parametrize("mode", ["verify", "trust"])
def test_discover_rechecks_partner_matches_before_storing(keys, tmp_path, mode):
    from xds_node.db import make_engine

    index = PatientIndex(make_engine(f"sqlite:///{tmp_path / 'p.db'}"))
    index.create_schema()
    same = Patient("H-77^^^&2.16.840.1.113883.3.1&ISO", Demographics(given=["Alex", "Q"], family="Testpatient",
                                                                      gender="M", birth_date="19780412"))
    other = Patient("Z-1^^^&2.16.840.1.113883.3.2&ISO", Demographics(given=["Alexis"], family="Smith", gender="M",
                                                                     birth_date="19800101"))
    world = World(keys, {"good": xcpd_answer(same), "wrong": xcpd_answer(other), "none": xcpd_answer(None),
                         "down": lambda m: httpx.ConnectError("refused")},
                  tmp=tmp_path, match_mode=mode, patients=index)
    result = run(world.gw.discover(ALEX, CTX, local_patient_id=LOCAL.cx))
    matches = {m.partner: m for m in result.matches}
    assert matches["good"].trusted and matches["good"].stored
    assert matches["wrong"].trusted is (mode == "trust")
    assert matches["wrong"].stored is (mode == "trust")
    assert result.status == S.PARTIAL_SUCCESS
    assert [(e.code, e.location) for e in result.errors] == [(E.UNAVAILABLE_COMMUNITY, hcid("down"))]
    stored = {c.community_id: c.remote_cx for c in index.correlations_for(LOCAL.cx)}
    expected = {hcid("good"): same.patient_id} | ({hcid("wrong"): other.patient_id} if mode == "trust" else {})
    assert stored == expected


def _index(tmp_path, *patients: Patient) -> PatientIndex:
    from xds_node.db import make_engine

    index = PatientIndex(make_engine(f"sqlite:///{tmp_path / f'p-{uuid.uuid4().hex}.db'}"))
    index.create_schema()
    for p in patients:
        index.add(p)
    return index


ALEX_HERE = Patient(LOCAL.cx, ALEX)
ALEX_TWIN_RECORD = Patient("VET0099^^^&1.3.6.1.4.1.21367.2026.1.9&ISO", ALEX)  # a duplicate record of ours


def test_discover_names_our_patient_only_with_consent(keys, tmp_path):
    index = _index(tmp_path, ALEX_HERE)
    consent = consent_policy(tmp_path)  # nobody has opted in
    world = World(keys, {"a": xcpd_answer(None)}, tmp=tmp_path, patients=index, consent=consent)
    for kwargs in ({}, {"local_patient_id": LOCAL.cx}):  # matched in our index, or named by the caller
        result = run(world.gw.discover(ALEX, CTX, **kwargs))
        assert result.status == S.FAILURE and world.messages == []
        assert result.refused == (f"patient {LOCAL.cx} may not be named to partner communities: the patient has "
                                  "not opted in (consent mode opt-in); nothing was sent")
        assert [e.code for e in result.errors] == [E.REGISTRY_ERROR]
    consent.store.grant(LOCAL.cx, source="online")
    result = run(world.gw.discover(ALEX, CTX))
    assert result.status == S.SUCCESS and not result.refused and len(world.messages) == 1
    consent.store.revoke(LOCAL.cx, source="online")
    assert run(world.gw.discover(ALEX, CTX)).refused and len(world.messages) == 1


def test_our_patient_is_named_to_partners_only_after_the_audit_row_is_committed(keys, tmp_path):
    """Naming our patient to partners (XCPD, patient-keyed ITI-38) is the disclosure: its audit row
    ("attempt") commits first, and when the trail cannot be written nothing is sent (fail closed)."""

    class BrokenTrail:
        async def record_async(self, event):
            raise OSError("disk full")

    class Trail:
        def __init__(self):
            self.events = []

        async def record_async(self, event):
            self.events.append(event)
            return event

    index = _index(tmp_path, ALEX_HERE)
    world = World(keys, {"a": xcpd_answer(None)}, tmp=tmp_path, patients=index)
    world.gw.audit = BrokenTrail()
    discovered = run(world.gw.discover(ALEX, CTX))
    correlate(world, ["a"])  # (replaces the index: ITI-38 goes to the correlated community)
    queried = run(world.gw.query(LOCAL.cx, CTX))
    for result in (discovered, queried):
        assert result.status == S.FAILURE and "audit trail cannot be written" in result.refused
    assert world.messages == []
    world.gw.patients = index
    world.gw.audit = trail = Trail()
    assert run(world.gw.discover(ALEX, CTX)).status == S.SUCCESS and len(world.messages) == 1
    first, *rest = trail.events
    assert (first.outcome, first.transaction, first.patient_id) == ("attempt", "ITI-55", LOCAL.cx)
    assert "a" in first.reason and rest and all(e.outcome != "attempt" for e in rest)


def test_a_fan_out_audits_every_partner_call_in_one_group_commit(keys, tmp_path):
    """The intent row first (its own round, before anything is sent), then one row per partner
    call, all committed together: a fan-out to many partners is not a transaction per partner."""
    from xds_node.audit.store import AuditLog
    from xds_node.db import make_engine

    audit = AuditLog(make_engine(f"sqlite:///{tmp_path / 'audit.db'}"))
    audit.create_schema()
    names = [f"p{i}" for i in range(12)]
    world = World(keys, {n: xcpd_answer(None) for n in names}, tmp=tmp_path, patients=_index(tmp_path, ALEX_HERE))
    world.gw.audit = audit
    before = audit.rounds
    assert run(world.gw.discover(ALEX, CTX)).status == S.SUCCESS and len(world.messages) == len(names)
    rows = audit.list(transaction="ITI-55", limit=100)
    assert sorted(e.partner_organization for e in rows if e.outcome != "attempt") == sorted(names)
    assert [e.outcome for e in rows].count("attempt") == 1
    assert audit.rounds - before == 2  # the intent, then every partner's row together


def test_discover_with_demographics_that_could_name_several_of_our_patients_needs_all_their_consent(
        keys, tmp_path):
    index = _index(tmp_path, ALEX_HERE, ALEX_TWIN_RECORD)
    consent = consent_policy(tmp_path, LOCAL.cx)
    world = World(keys, {"a": xcpd_answer(None)}, tmp=tmp_path, patients=index, consent=consent)
    result = run(world.gw.discover(ALEX, CTX))
    assert ALEX_TWIN_RECORD.patient_id in result.refused and world.messages == []
    consent.store.grant(ALEX_TWIN_RECORD.patient_id, source="online")
    result = run(world.gw.discover(ALEX, CTX))
    assert result.status == S.SUCCESS and result.local_patient_id is None and len(world.messages) == 1


def test_discover_for_someone_not_in_our_index_names_no_patient_of_ours(keys, tmp_path):
    world = World(keys, {"a": xcpd_answer(None)}, tmp=tmp_path, patients=_index(tmp_path),
                  consent=consent_policy(tmp_path))
    result = run(world.gw.discover(ALEX, CTX))
    assert result.status == S.SUCCESS and not result.refused and len(world.messages) == 1


def test_outbound_consent_follows_mode_purpose_and_schedule(keys, tmp_path):
    from datetime import UTC, datetime

    opt_out = World(keys, {"a": query_answer(S.SUCCESS, 1)}, tmp=tmp_path, consent=consent_policy(tmp_path,
                                                                                                    mode="opt-out"))
    correlate(opt_out, ["a"])
    assert run(opt_out.gw.query(LOCAL.cx, CTX)).status == S.SUCCESS  # opt-out: no directive is no objection
    opt_out.consent.store.revoke(LOCAL.cx, source="online")
    assert "consent revoked" in run(opt_out.gw.query(LOCAL.cx, CTX)).refused

    consent = consent_policy(tmp_path)
    world = World(keys, {"a": query_answer(S.SUCCESS, 1)}, tmp=tmp_path, consent=consent)
    correlate(world, ["a"])
    consent.store.grant(LOCAL.cx, source="paper form", purposes=["TREATMENT"])
    assert run(world.gw.query(LOCAL.cx, CTX)).status == S.SUCCESS
    payment = replace(CTX, purpose_of_use=("PAYMENT", "2.16.840.1.113883.3.18.7.1", "Payment"))
    refused = run(world.gw.query(LOCAL.cx, payment))
    assert "limited to purpose of use TREATMENT, not PAYMENT" in refused.refused
    # a grant scheduled to start later, then a revocation: the grant never takes effect
    consent.store.revoke(LOCAL.cx, source="online")
    consent.store.grant(LOCAL.cx, source="online", effective_from=datetime(2030, 1, 1, tzinfo=UTC))
    consent.store.revoke(LOCAL.cx, source="online")
    assert not consent.allows(LOCAL.cx, datetime(2031, 1, 1, tzinfo=UTC))
    assert run(world.gw.query(LOCAL.cx, CTX)).refused
    assert len(world.messages) == 1  # only the first, allowed query went out


# --- ITI-38 -------------------------------------------------------------------------------------
def entries(pid: str, n: int) -> list[bytes]:
    return [rim.render(document(pid, f"urn:uuid:{uuid.uuid4()}", id=f"urn:uuid:{uuid.uuid4()}")) for _ in range(n)]


def query_answer(status: str, n: int = 0, errors: list[RegistryError] | None = None, home: str | None = None):
    def answer(msg):
        q = rim.read_adhoc_query_request(msg.body)
        pid = q.slots["$XDSDocumentEntryPatientId"][0][0].strip("'")
        return soap(v.Action.ITI38, rim.adhoc_query_response_bytes(status, fragments=entries(pid, n),
                                                                   errors=errors or [], home=home))

    return answer


def correlate(world: World, names) -> PatientIndex:
    from xds_node.db import make_engine

    index = PatientIndex(make_engine("sqlite://"))
    index.create_schema()
    for n in names:
        index.save_correlation(LOCAL.cx, hcid(n), f"R-{n}", "2.16.840.1.113883.3.9")
    world.gw.patients = index
    return index


def test_query_merges_partners_and_reports_one_error_per_failed_community(keys, tmp_path):
    world = World(keys, {
        "good": query_answer(S.SUCCESS, 2, home=hcid("good")),
        "nohome": query_answer(S.SUCCESS, 1),  # forgets home: we still say where the object came from
        "refuses": query_answer(S.FAILURE, errors=[RegistryError(E.REGISTRY_ERROR, "database down",
                                                                 location="1.2.3.4")]),
        "unknown": query_answer(S.FAILURE, errors=[RegistryError(E.UNKNOWN_PATIENT_ID, "who?")]),
        "slow": lambda m: httpx.ReadTimeout("slow"),
        "faulty": lambda m: fault("registry database unavailable"),
    }, tmp=tmp_path)
    correlate(world, ["good", "nohome", "refuses", "unknown", "slow", "faulty"])
    result = run(world.gw.query(LOCAL.cx, CTX))
    states = {o.partner: o.state for o in result.partners}
    assert states == {"good": "answered", "nohome": "answered", "refuses": "failed", "unknown": "answered",
                      "slow": "timeout", "faulty": "failed"}
    assert result.status == S.PARTIAL_SUCCESS
    assert sorted((e.code, e.location) for e in result.errors) == sorted([
        (E.REGISTRY_ERROR, hcid("refuses")), (E.UNAVAILABLE_COMMUNITY, hcid("slow")),
        (E.UNAVAILABLE_COMMUNITY, hcid("faulty"))])
    assert sorted(o.get("home") for o in result.objects) == sorted([hcid("good")] * 2 + [hcid("nohome")])
    # each partner was asked about its own id for our patient
    asked = {m.envelope.findtext(".//{http://www.w3.org/2005/08/addressing}To").split("//")[1].split(".")[0]:
             rim.read_adhoc_query_request(m.body).slots["$XDSDocumentEntryPatientId"][0][0] for m in world.messages}
    assert asked["good"] == "'R-good^^^&2.16.840.1.113883.3.9&ISO'"
    merged = etree.fromstring(result.response_bytes())
    assert_valid(merged)
    assert merged.get("status") == S.PARTIAL_SUCCESS


def test_query_status_is_success_when_all_answer_and_failure_when_none_do(keys, tmp_path):
    ok = World(keys, {"a": query_answer(S.SUCCESS, 1), "b": query_answer(S.FAILURE, errors=[
        RegistryError(E.UNKNOWN_PATIENT_ID, "no")])}, tmp=tmp_path)
    correlate(ok, ["a", "b"])
    res = run(ok.gw.query(LOCAL.cx, CTX))
    assert res.status == S.SUCCESS and res.errors == [] and len(res.objects) == 1
    bad = World(keys, {"a": lambda m: httpx.ConnectError("x"), "b": lambda m: fault()}, tmp=tmp_path)
    correlate(bad, ["a", "b"])
    res = run(bad.gw.query(LOCAL.cx, CTX))
    assert res.status == S.FAILURE
    assert sorted(e.location for e in res.errors) == sorted([hcid("a"), hcid("b")])


def test_query_by_object_id_goes_to_the_named_community_only(keys, tmp_path):
    from xds_node.ebxml.model import StoredQuery

    def answer(msg):
        return soap(v.Action.ITI38, rim.adhoc_query_response_bytes(S.SUCCESS, fragments=entries("P^^^&1.2&ISO", 1),
                                                                   home=hcid("b")))

    world = World(keys, {"a": answer, "b": answer}, tmp=tmp_path)
    q = StoredQuery(v.StoredQueryId.GET_DOCUMENTS, home=hcid("b"), slots={"$XDSDocumentEntryUniqueId": [["('1.2')"]]})
    res = run(world.gw.query(None, CTX, template=q))
    assert res.status == S.SUCCESS and [o.partner for o in res.partners] == ["b"]
    missing = run(world.gw.query(None, CTX, template=StoredQuery(v.StoredQueryId.GET_DOCUMENTS, slots={})))
    assert [e.code for e in missing.errors] == [E.MISSING_HOME_COMMUNITY_ID]
    unknown = run(world.gw.query(None, CTX, template=StoredQuery(v.StoredQueryId.GET_DOCUMENTS, home="urn:oid:9.9")))
    assert [e.code for e in unknown.errors] == [E.UNKNOWN_COMMUNITY]


# --- ITI-39 -------------------------------------------------------------------------------------
def retrieve_answer(store: dict[str, bytes], home: str, repo: str) -> Behaviour:
    def answer(msg):
        reqs = xdsb.read_retrieve_request(msg.body)
        resp = SoapResponse(action="x", body=b"", mtom=True)
        found = [r for r in reqs if r.document_unique_id in store]
        missing = [RegistryError(E.DOCUMENT_UNIQUE_ID_ERROR, r.document_unique_id, location=home)
                   for r in reqs if r.document_unique_id not in store]
        status = S.SUCCESS if not missing else (S.PARTIAL_SUCCESS if found else S.FAILURE)
        docs = [xdsb.DocumentResponse(repo, r.document_unique_id, "text/xml", home) for r in found]
        body = xdsb.write_retrieve_response(status, missing, docs,
                                            lambda d: resp.attach(store[d.document_unique_id], "text/xml"))
        return soap(v.Action.ITI39, body, resp.attachments)

    return answer


def test_retrieve_batches_per_partner_limit_and_spools_large_documents(keys, tmp_path):
    big = os.urandom(1 << 20)
    store = {f"1.2.3.{i}": (big if i == 0 else f"<doc n='{i}'/>".encode()) for i in range(5)}
    world = World(keys, {"a": retrieve_answer(store, hcid("a"), "1.9"),
                         "b": lambda m: httpx.ReadTimeout("slow")},
                  tmp=tmp_path, options={"a": {"retrieve_batch_size": 2}}, memory_limit=64 * 1024)
    refs = [xdsb.DocumentRequest("1.9", uid, hcid("a")) for uid in store]
    refs += [xdsb.DocumentRequest("1.9", "1.2.3.404", hcid("a")), xdsb.DocumentRequest("1.8", "9.9", hcid("b")),
             xdsb.DocumentRequest("1.7", "8.8", "urn:oid:4.4.4"), xdsb.DocumentRequest("1.7", "7.7", None)]
    out = tmp_path / "out"
    result = run(world.gw.retrieve(refs, CTX, dest=out))
    assert world.calls[("a", v.Action.ITI39)] == 3  # 6 documents for a, batches of 2
    assert result.status == S.PARTIAL_SUCCESS
    got = {d.document_unique_id: d.path.read_bytes() for d in result.documents}
    assert got == store
    assert sorted(e.code for e in result.errors) == sorted([E.DOCUMENT_UNIQUE_ID_ERROR, E.UNAVAILABLE_COMMUNITY,
                                                            E.UNKNOWN_COMMUNITY, E.MISSING_HOME_COMMUNITY_ID])
    assert sorted(p.name for p in out.iterdir()) == sorted(f"1.2.3.{i}.xml" for i in range(5))  # no spool left


def test_retrieve_without_dest_keeps_large_documents_in_spool_files(keys, tmp_path):
    big = os.urandom(300 * 1024)
    world = World(keys, {"a": retrieve_answer({"1": big, "2": b"<small/>"}, hcid("a"), "1.9")}, tmp=tmp_path,
                  memory_limit=64 * 1024)
    result = run(world.gw.retrieve([xdsb.DocumentRequest("1.9", u, hcid("a")) for u in ("1", "2")], CTX))
    docs = {d.document_unique_id: d for d in result.documents}
    assert docs["1"].path is not None and docs["1"].path.read_bytes() == big and docs["1"].data is None
    assert docs["2"].data == b"<small/>" and docs["2"].path is None


# --- outbound client ----------------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [1, 7, 1000, 1 << 20])
@pytest.mark.parametrize("lf_only", [False, True])
def test_mtom_stream_parser_any_chunking(tmp_path, chunk, lf_only):
    big = os.urandom(200_000) + b"\r\n--not-the-boundary\r\n"
    data, ct = build_multipart(b"<root>\r\n</root>", [Attachment("a@x", "application/pdf", data=big),
                                                     Attachment("b@x", "text/plain", data=b"")])
    boundary = ct.split('boundary="')[1].split('"')[0]
    if lf_only:
        data = data.replace(b"\r\n--" + boundary.encode(), b"\n--" + boundary.encode())
        data = data.replace(b"binary\r\nContent-ID", b"binary\nContent-ID")
    parser = MtomStreamParser(boundary, spool_dir=tmp_path, memory_limit=4096)
    for i in range(0, len(data), chunk):
        parser.feed(data[i:i + chunk])
    root, atts = parser.finish(ct.split('start="')[1].split('"')[0])
    assert root == b"<root>\r\n</root>"
    assert atts["a@x"].path is not None and atts["a@x"].read() == big
    assert atts["b@x"].read() == b""


def test_truncated_multipart_is_a_transport_error_and_leaves_no_files(keys, tmp_path):
    data, ct = build_multipart(b"<x/>", [Attachment("a@x", "text/plain", data=os.urandom(100_000))])
    world = World(keys, {"a": lambda m: httpx.Response(200, content=data[:-200], headers={"content-type": ct})},
                  tmp=tmp_path, memory_limit=1024)
    p = world.trust.partner("a")
    from xds_node.soap.client import SoapTransportError

    with pytest.raises(SoapTransportError):
        run(world.client.call(p, p.endpoints["xca_retrieve"], v.Action.ITI39, b"<x/>", CTX))
    assert not list((tmp_path / "spool").glob("*"))


def test_retries_transport_failures_but_never_a_soap_fault(keys, tmp_path):
    attempts = Counter()

    def flaky(msg):
        attempts["flaky"] += 1
        if attempts["flaky"] < 3:
            return httpx.ConnectError("refused")
        return soap(v.Action.ITI38, rim.adhoc_query_response_bytes(S.SUCCESS))

    world = World(keys, {"flaky": flaky, "faulty": lambda m: fault()}, tmp=tmp_path,
                  options={n: {"options": {"retries": 3, "backoff": 0.001}} for n in ("flaky", "faulty")})
    flaky_p, faulty_p = world.trust.partner("flaky"), world.trust.partner("faulty")
    reply = run(world.client.call(flaky_p, flaky_p.endpoints["ITI-38"], v.Action.ITI38, b"<x/>", CTX))
    assert reply.body.get("status") == S.SUCCESS and attempts["flaky"] == 3
    with pytest.raises(SoapFault):
        run(world.client.call(faulty_p, faulty_p.endpoints["ITI-38"], v.Action.ITI38, b"<x/>", CTX))
    assert world.calls[("faulty", v.Action.ITI38)] == 1


# --- settings -----------------------------------------------------------------------------------
def test_ig_settings_from_toml_extras_and_environment(tmp_path):
    from xds_node.config import load_settings

    settings = load_settings(env={}, data_dir=tmp_path, home_community_id=OURS)
    settings.extra.update({"ig_subject_id": "VA Gateway Service", "ig_role": "224608005^^Admin staff",
                           "ig_match_mode": "trust"})
    ig = IgSettings.from_settings(settings, env={"XDS_IG_PURPOSE_OF_USE": "COVERAGE^2.16.840.1.113883.3.18.7.1^Cov",
                                                  "XDS_IG_TLS_VERIFY": "false"})
    ctx = ig.requester()
    assert ctx.subject_id == "VA Gateway Service" and ctx.home_community_id == OURS
    assert ctx.role == ("224608005", "2.16.840.1.113883.6.96", "Admin staff")
    assert ctx.purpose_of_use[0] == "COVERAGE" and ig.match_mode == "trust" and ig.tls_verify is False
    assert ig.signing_key == tmp_path / "keys" / "node.key.pem"
    assert IgSettings.from_settings(settings, env={}).tls_verify is True


def test_assertion_cache_margin_never_exceeds_half_the_lifetime(keys):
    cache = AssertionCache(keys[0], keys[1], issuer="x", lifetime=timedelta(minutes=1))
    assert cache.margin == timedelta(seconds=30)
