"""The trust boundary of every endpoint (issue 9, findings 1 and 2): partners only on the gateway
endpoints, internal clients (clients.toml) only on /xds/* and /ig/*, anonymous callers only from
loopback on /xds/*, and every internal read and write audited with the caller's identity.

Non-loopback callers are driven in-process through ``httpx.ASGITransport(client=(address, port))``
(the SOAP app sees exactly what uvicorn would hand it); the mutual-TLS and anonymous_loopback=false
cases run against a real ``xds-node serve`` process.
"""

from __future__ import annotations

import shutil
import ssl
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from lxml import etree

from tests import factories as f
from tests.conftest import LiveNode, _database_url
from tests.repository.test_provide_and_retrieve import no_hash_size, provide
from tests.responding.requester import DOCTOR, TREATMENT, Requester
from tests.responding.test_responding_gateway import _folder_rows, find_documents, key_template  # noqa: F401
from tests.soapkit import SoapTestClient
from xds_node.config import DEMO_HOME_COMMUNITY_ID, DEMO_REPOSITORY_ID, load_settings
from xds_node.ebxml import rim, xdsb
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import StoredQuery
from xds_node.security.clients import ClientStore
from xds_node.security.keys import generate_demo_keys, load_key_and_cert
from xds_node.security.saml import RequesterContext, sign_assertion, unsigned_assertion
from xds_node.security.wss import build_security_header

SAMPLES = Path(__file__).resolve().parents[2] / "sample_documents"
OUTSIDE = "203.0.113.9"  # TEST-NET-3: a caller on another host
CLIENT_SUBJECT = "Dr. Internal Clinician"


# --- an internal client's side of the wire ---------------------------------------------------------
@dataclass
class InternalClient:
    """Our own EHR: a pinned certificate, and SAML it signs itself (Issuer = its certificate's subject)."""

    name: str
    key: object
    cert: object
    cert_path: Path
    key_path: Path

    def context(self, **changes) -> RequesterContext:
        ctx = RequesterContext(subject_id=CLIENT_SUBJECT, organization="Boston VA Medical Center",
                               organization_id="urn:oid:1.3.6.1.4.1.21367.2026.1.77",
                               home_community_id=DEMO_HOME_COMMUNITY_ID, role=DOCTOR, purpose_of_use=TREATMENT)
        return replace(ctx, **changes) if changes else ctx

    def header(self, **changes) -> etree._Element:
        now = datetime.now(UTC)
        a = unsigned_assertion(self.context(**changes), self.cert, issuer=self.cert.subject.rfc4514_string(), now=now)
        a = sign_assertion(a, self.key, self.cert)
        return build_security_header(a, self.key, self.cert, now=now)

    @property
    def der(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding

        return self.cert.public_bytes(Encoding.DER)


@pytest.fixture(scope="module")
def ehr(tmp_path_factory) -> InternalClient:
    d = tmp_path_factory.mktemp("ehr")
    key_path, cert_path = generate_demo_keys(d, common_name="Boston EHR")
    key, cert = load_key_and_cert(key_path, cert_path)
    return InternalClient("boston-ehr", key, cert, cert_path, key_path)


def pin_client(settings, client: InternalClient) -> None:
    store = ClientStore.load(settings.clients_path, settings.home_community_id) if settings.clients_path.exists() \
        else ClientStore(settings.home_community_id)
    store.add(client.name, [client.cert])
    store.save(settings.clients_path)


# --- the node ----------------------------------------------------------------------------------
@pytest.fixture
def world(tmp_path, backend, key_template, ehr):  # noqa: F811
    """Demo keys and partners, the samples, ``boston-ehr`` pinned as an internal client, and one
    veteran who granted and then revoked consent (what `xds-node consent revoke` does)."""
    from xds_node.node import Node

    shutil.copytree(key_template, tmp_path, dirs_exist_ok=True)
    settings = load_settings(env={}, data_dir=tmp_path, database_url=_database_url(backend, tmp_path))
    pin_client(settings, ehr)
    node = Node(settings)
    node.folder_indexer(SAMPLES).sync()
    rows = _folder_rows(node)
    owners = node.registry_store.patients_of_documents([r["unique_id"] for r in rows])
    pid = sorted(set(owners.values()))[0]
    node.consent_store.grant(pid, source="paper form")
    node.consent_store.revoke(pid, source="paper form")
    docs = sorted(uid for uid, owner in owners.items() if owner == pid)
    yield node, pid, docs
    node.close()


class Caller(SoapTestClient):
    """An in-process client whose TCP peer address (and TLS client certificate) the app sees."""

    def __init__(self, app, address: str = OUTSIDE, client_cert: bytes | None = None):
        super().__init__(app=app)
        self._run(self._client.aclose())
        if client_cert is not None:
            app = _with_tls_client(app, client_cert)
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(address, 40123)),
                                         base_url=self.base_url, timeout=60)


def _with_tls_client(app, der: bytes):
    """What TlsHttpToolsProtocol adds to the scope for a mutual-TLS connection."""
    async def wrapped(scope, receive, send):
        if scope["type"] == "http":
            scope = {**scope, "extensions": {"tls": {"client_cert_chain": [der], "client_cert_error": None}}}
        await app(scope, receive, send)

    return wrapped


def get_all(pid: str) -> etree._Element:
    statuses = [["('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"]]
    return rim.write_adhoc_query_request(StoredQuery(query_id=v.StoredQueryId.GET_ALL, slots={
        "$patientId": [[f"'{pid}'"]], "$XDSDocumentEntryStatus": statuses, "$XDSSubmissionSetStatus": statuses,
        "$XDSFolderStatus": statuses}))


def retrieve_request(node, uids: list[str]) -> etree._Element:
    return xdsb.write_retrieve_request([xdsb.DocumentRequest(node.settings.repository_unique_id, u) for u in uids])


def register_request(pid: str) -> etree._Element:
    return rim.write_submit_objects_request(f.submission(pid, 1))


def refused(reply, subcode: str = "InvalidSecurity") -> bool:
    return reply.is_fault and reply.fault_code.endswith("Sender") and subcode.encode() in reply.raw


def leaked(reply, uids: list[str]) -> bool:
    return any(u.encode() in reply.raw for u in uids)


# --- finding 1: /xds/* answers any caller -------------------------------------------------------
def test_anonymous_reads_from_another_host_are_refused_after_revocation(world):
    node, pid, docs = world
    c = Caller(node.app())
    try:
        for path, action, body in (("/xds/registry", v.Action.ITI18, find_documents(pid)),
                                   ("/xds/registry", v.Action.ITI18, get_all(pid)),
                                   ("/xds/repository", v.Action.ITI43, retrieve_request(node, docs))):
            reply = c.call(path, action, body)
            assert refused(reply), reply.raw[:400]
            assert "authentication required" in reply.fault_reason
            assert not leaked(reply, docs) and pid.split("^")[0].encode() not in reply.raw
    finally:
        c.close()
    denied = node.audit.list(outcome="denied")
    assert sorted(e.transaction for e in denied) == ["ITI-18", "ITI-18", "ITI-43"]
    assert {e.remote_address for e in denied} == {OUTSIDE}


def test_anonymous_writes_from_another_host_are_refused_and_change_nothing(world):
    node, _pid, _docs = world
    before = node.registry_store.count("doc")
    c = Caller(node.app())
    try:
        pid = f.patient(901)
        sub = no_hash_size(f.submission(pid, 1))
        assert refused(provide(c, sub, {sub.documents[0].id: b"<ClinicalDocument/>"}))
        assert refused(c.call("/xds/registry", v.Action.ITI42, register_request(pid)))
    finally:
        c.close()
    assert node.registry_store.count("doc") == before
    assert sorted(e.transaction for e in node.audit.list(outcome="denied")) == ["ITI-41", "ITI-42"]


def test_anonymous_loopback_caller_is_admitted_and_audited_as_such(world):
    """The demo's curl keeps working, and is no longer invisible in the audit trail."""
    node, pid, docs = world
    c = Caller(node.app(), address="127.0.0.1")
    try:
        reply = c.call("/xds/registry", v.Action.ITI18, find_documents(pid))
        assert reply.status == v.ResponseStatus.SUCCESS and reply.objects("ExtrinsicObject")
        got = c.call("/xds/repository", v.Action.ITI43, retrieve_request(node, docs[:1]))
        assert not got.is_fault and leaked(got, docs[:1])
    finally:
        c.close()
    rows = {e.transaction: e for e in node.audit.list()}
    assert rows["ITI-18"].user_subject_id == rows["ITI-43"].user_subject_id == "anonymous@loopback"
    assert rows["ITI-18"].patient_id == pid and rows["ITI-18"].outcome == "success"
    assert rows["ITI-43"].patient_id == pid and rows["ITI-43"].document_ids == docs[:1]


@pytest.mark.parametrize("setting", [{"anonymous_loopback": False}, {"secure_xds_endpoints": True}],
                         ids=["anonymous_loopback=false", "deprecated-secure_xds_endpoints"])
def test_loopback_is_not_enough_when_anonymous_loopback_is_off(world, setting):
    from xds_node.node import Node

    node, pid, docs = world
    strict = Node(replace(node.settings, **setting))
    c = Caller(strict.app(), address="127.0.0.1")
    try:
        assert refused(c.call("/xds/registry", v.Action.ITI18, find_documents(pid)))
        assert refused(c.call("/xds/repository", v.Action.ITI43, retrieve_request(node, docs)))
    finally:
        c.close()
        strict.close()


def test_a_partners_valid_assertion_is_refused_on_internal_endpoints(world):
    node, pid, docs = world
    partner = Requester.demo_partner(node.settings.keys_dir)
    c = Caller(node.app())
    try:
        for path, action, body in (("/xds/registry", v.Action.ITI18, find_documents(pid)),
                                   ("/xds/repository", v.Action.ITI43, retrieve_request(node, docs)),
                                   ("/ig/registry", v.Action.ITI18, find_documents(pid)),
                                   ("/ig/repository", v.Action.ITI43, retrieve_request(node, docs))):
            reply = c.call(path, action, body, headers=[partner.header()])
            assert refused(reply, "FailedAuthentication"), (path, reply.raw[:400])
            assert "partner credentials are not accepted" in reply.fault_reason
            assert not leaked(reply, docs)
        # the same assertion still works where partners belong (consent decides there)
        ok = c.call("/xca/query", v.Action.ITI38, find_documents(pid), headers=[partner.header()])
        assert not ok.is_fault and ok.error_codes == [v.ErrorCode.UNKNOWN_PATIENT_ID]
    finally:
        c.close()
    assert len(node.audit.list(outcome="denied")) == 4


def test_an_internal_clients_credentials_are_refused_on_the_gateway_endpoints(world, ehr):
    node, pid, _docs = world
    c = Caller(node.app())
    try:
        reply = c.call("/xca/query", v.Action.ITI38, find_documents(pid), headers=[ehr.header()])
        assert refused(reply, "FailedAuthentication")
        assert "internal client credentials are not accepted" in reply.fault_reason
    finally:
        c.close()
    tls = Caller(node.app(), client_cert=ehr.der)
    try:
        reply = tls.call("/xca/query", v.Action.ITI38, find_documents(pid))
        assert refused(reply, "FailedAuthentication") and "internal client" in reply.fault_reason
    finally:
        tls.close()


def test_internal_client_by_signed_saml_reads_and_writes_and_is_audited(world, ehr):
    node, pid, docs = world
    c = Caller(node.app())
    try:
        reply = c.call("/xds/registry", v.Action.ITI18, find_documents(pid), headers=[ehr.header()])
        assert reply.status == v.ResponseStatus.SUCCESS and reply.objects("ExtrinsicObject")
        got = c.call("/xds/repository", v.Action.ITI43, retrieve_request(node, docs[:2]), headers=[ehr.header()])
        assert leaked(got, docs[:2])
        new_pid = f.patient(902)
        sub = no_hash_size(f.submission(new_pid, 1))
        # ITI-41 through the test helper, with the client's Security header
        docs_el = {sub.documents[0].id: etree.Element(f"{{{v.XDSB}}}Document", nsmap={"xdsb": v.XDSB})}
        docs_el[sub.documents[0].id].text = "PENsaW5pY2FsRG9jdW1lbnQvPg=="
        put = c.call("/xds/repository", v.Action.ITI41, xdsb.write_provide_request(sub, docs_el),
                     headers=[ehr.header()])
        assert put.status == v.ResponseStatus.SUCCESS, put.raw[-900:]
        reg = c.call("/xds/registry", v.Action.ITI42, register_request(f.patient(903)), headers=[ehr.header()])
        assert reg.status == v.ResponseStatus.SUCCESS, reg.raw[-900:]
    finally:
        c.close()
    rows = {e.transaction: e for e in node.audit.list() if e.outcome != "denied"}
    assert set(rows) == {"ITI-18", "ITI-43", "ITI-41", "ITI-42"}
    for e in rows.values():
        assert e.user_subject_id == CLIENT_SUBJECT and e.partner_organization == "Boston VA Medical Center"
        assert e.remote_address == OUTSIDE and e.direction == "inbound"
        assert getattr(e, "partner", ehr.name) in (ehr.name, "")  # the client's name: T2's column, once merged
    assert rows["ITI-18"].patient_id == pid and rows["ITI-43"].document_ids == docs[:2]
    assert rows["ITI-41"].patient_id == new_pid and rows["ITI-41"].document_ids == [sub.documents[0].unique_id]
    assert rows["ITI-42"].patient_id == f.patient(903) and len(rows["ITI-42"].document_ids) == 1


def test_internal_client_by_tls_certificate_alone_is_audited_under_its_name(world, ehr):
    node, pid, _docs = world
    c = Caller(node.app(), client_cert=ehr.der)
    try:
        reply = c.call("/xds/registry", v.Action.ITI18, get_all(pid))
        assert reply.status == v.ResponseStatus.SUCCESS and reply.objects("ExtrinsicObject")
    finally:
        c.close()
    (row,) = node.audit.list(transaction="ITI-18")
    assert row.user_subject_id == ehr.name and row.patient_id == pid and row.outcome == "success"


def test_a_partners_tls_certificate_is_refused_on_internal_endpoints(world):
    from cryptography.hazmat.primitives.serialization import Encoding

    node, pid, _docs = world
    _key, cert = load_key_and_cert(node.settings.keys_dir / "demo-partner.key.pem",
                                   node.settings.keys_dir / "demo-partner.cert.pem")
    c = Caller(node.app(), client_cert=cert.public_bytes(Encoding.DER))
    try:
        reply = c.call("/xds/registry", v.Action.ITI18, find_documents(pid))
        assert refused(reply, "FailedAuthentication") and "partner credentials" in reply.fault_reason
    finally:
        c.close()


def test_clients_file_changes_reach_a_running_node(world, ehr, tmp_path):
    """clients add / remove take effect on the next request, without a restart."""
    node, pid, _docs = world
    other_key, other_cert = generate_demo_keys(tmp_path / "other", common_name="Worcester EHR")
    other = InternalClient("worcester-ehr", *load_key_and_cert(other_key, other_cert), other_cert, other_key)
    c = Caller(node.app())
    try:
        assert refused(c.call("/xds/registry", v.Action.ITI18, find_documents(pid), headers=[other.header()]),
                       "FailedAuthentication")
        pin_client(node.settings, other)
        ok = c.call("/xds/registry", v.Action.ITI18, find_documents(pid), headers=[other.header()])
        assert ok.status == v.ResponseStatus.SUCCESS, ok.raw[:400]
        store = ClientStore.load(node.settings.clients_path, node.settings.home_community_id)
        store.remove(other.name)
        store.save(node.settings.clients_path)
        assert refused(c.call("/xds/registry", v.Action.ITI18, find_documents(pid), headers=[other.header()]),
                       "FailedAuthentication")
        node.settings.clients_path.write_text("this is [not toml", encoding="utf-8")  # a broken file admits nobody
        assert refused(c.call("/xds/registry", v.Action.ITI18, find_documents(pid), headers=[ehr.header()]),
                       "FailedAuthentication")
    finally:
        c.close()


# --- finding 2: /ig/* is an open relay ----------------------------------------------------------
def test_initiating_gateway_refuses_anonymous_callers_even_from_loopback(world):
    node, pid, docs = world
    c = Caller(node.app(), address="127.0.0.1")
    try:
        for path, action, body in (("/ig/registry", v.Action.ITI18, find_documents(pid)),
                                   ("/ig/repository", v.Action.ITI43, retrieve_request(node, docs))):
            reply = c.call(path, action, body)
            assert refused(reply), reply.raw[:400]
            assert "authentication required" in reply.fault_reason
    finally:
        c.close()
    assert {e.endpoint for e in node.audit.list(outcome="denied")} == {"/ig/registry", "/ig/repository"}


def test_initiating_gateway_never_substitutes_the_system_user(world):
    """Defence in depth: wired without the policy, the handler still refuses a missing requester."""
    from xds_node.soap.app import SoapApp
    from xds_node.transactions import ig

    node, pid, _docs = world
    c = Caller(SoapApp(ig.endpoints(node, before=[])), address="127.0.0.1")
    try:
        reply = c.call("/ig/registry", v.Action.ITI18, find_documents(pid))
        assert refused(reply, "FailedAuthentication") and "internal client" in reply.fault_reason
    finally:
        c.close()


def test_start_banner_says_who_may_call_each_endpoint(tmp_path):
    from xds_node.node import access_lines

    settings = load_settings(env={}, data_dir=tmp_path)
    lines = dict(line.split(None, 1) for line in access_lines(settings))
    assert set(lines) == {"/xds/registry", "/xds/repository", "/xca/query", "/xca/retrieve", "/xcpd",
                          "/ig/registry", "/ig/repository", "/xdr"}
    assert "anonymous from loopback" in lines["/xds/registry"] and "internal clients" in lines["/xds/registry"]
    assert lines["/xca/query"].startswith("partners") and "internal" not in lines["/xca/query"]
    assert lines["/xdr"] == lines["/xca/query"]  # XDR pushes: partners only, like the responding gateway
    assert "no anonymous" in lines["/ig/registry"] and "partners" not in lines["/ig/registry"]
    strict = dict(line.split(None, 1) for line in access_lines(replace(settings, anonymous_loopback=False)))
    assert "no anonymous callers" in strict["/xds/repository"]
    lab = dict(line.split(None, 1) for line in access_lines(replace(settings, insecure_no_gateway_security=True)))
    assert lab["/xcpd"].startswith("ANYONE")


# --- a real server ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def live_world(tmp_path_factory, key_template, ehr):  # noqa: F811
    """Two `xds-node serve` processes over one data directory: mutual TLS, and plain HTTP with
    anonymous_loopback = false. One revoked veteran."""
    from xds_node.node import Node

    data = tmp_path_factory.mktemp("boundary")
    shutil.copytree(key_template, data, dirs_exist_ok=True)
    settings = load_settings(env={}, data_dir=data)
    pin_client(settings, ehr)
    node = Node(settings)
    node.folder_indexer(SAMPLES).sync()
    owners = node.registry_store.patients_of_documents([r["unique_id"] for r in _folder_rows(node)])
    pid = sorted(set(owners.values()))[0]
    node.consent_store.grant(pid, source="paper form")
    node.consent_store.revoke(pid, source="paper form")
    docs = sorted(uid for uid, owner in owners.items() if owner == pid)
    node.close()
    keys = data / "keys"
    mtls = LiveNode(data, args=["--tls-cert", str(keys / "node.cert.pem"), "--tls-key", str(keys / "node.key.pem"),
                                "--mtls"], scheme="https",
                    health_client={"verify": _tls(keys, keys / "demo-partner.cert.pem", keys / "demo-partner.key.pem")})
    try:
        plain = LiveNode(data, extra_env={"XDS_ANONYMOUS_LOOPBACK": "false"})
    except Exception:
        mtls.stop()
        raise
    yield {"data": data, "keys": keys, "pid": pid, "docs": docs, "mtls": mtls, "plain": plain}
    mtls.stop()
    plain.stop()


def _tls(keys: Path, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(keys / "node.cert.pem"))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def _live_client(url: str, verify=None) -> SoapTestClient:
    c = SoapTestClient(base_url=url)
    if verify is not None:
        c._run(c._client.aclose())
        c._client = httpx.AsyncClient(base_url=url, verify=verify, timeout=30)
    return c


def _live_audit(data: Path):
    from xds_node.audit.store import AuditLog
    from xds_node.db import make_engine

    engine = make_engine(load_settings(env={}, data_dir=data).audit_db_url)
    try:
        return AuditLog(engine).list()
    finally:
        engine.dispose()


def test_live_anonymous_reads_refused_when_anonymous_loopback_is_off(live_world):
    w = live_world
    c = _live_client(w["plain"].url)
    try:
        for path, action, body in (("/xds/registry", v.Action.ITI18, find_documents(w["pid"])),
                                   ("/xds/registry", v.Action.ITI18, get_all(w["pid"])),
                                   ("/xds/repository", v.Action.ITI43,
                                    xdsb.write_retrieve_request([xdsb.DocumentRequest(
                                        DEMO_REPOSITORY_ID, u) for u in w["docs"]])),
                                   ("/xds/registry", v.Action.ITI42, register_request(f.patient(904)))):
            reply = c.call(path, action, body)
            assert reply.http_status >= 400 and refused(reply), reply.raw[:400]
            assert not leaked(reply, w["docs"])
    finally:
        c.close()


def test_live_mtls_partner_refused_on_internal_endpoints(live_world):
    w = live_world
    keys = w["keys"]
    partner = Requester.demo_partner(keys)
    c = _live_client(w["mtls"].url, _tls(keys, keys / "demo-partner.cert.pem", keys / "demo-partner.key.pem"))
    try:
        for path, action in (("/xds/registry", v.Action.ITI18), ("/ig/registry", v.Action.ITI18)):
            reply = c.call(path, action, find_documents(w["pid"]), headers=[partner.header()])
            assert refused(reply, "FailedAuthentication"), reply.raw[:400]
            assert not leaked(reply, w["docs"])
        no_saml = c.call("/xds/registry", v.Action.ITI18, get_all(w["pid"]))
        assert refused(no_saml, "FailedAuthentication") and not leaked(no_saml, w["docs"])
    finally:
        c.close()


def test_live_mtls_internal_client_accepted_and_audited_with_its_name(live_world, ehr):
    w = live_world
    c = _live_client(w["mtls"].url, _tls(w["keys"], ehr.cert_path, ehr.key_path))
    try:
        reply = c.call("/xds/registry", v.Action.ITI18, find_documents(w["pid"]))
        assert reply.status == v.ResponseStatus.SUCCESS and reply.objects("ExtrinsicObject"), reply.raw[:400]
        signed = c.call("/xds/registry", v.Action.ITI18, get_all(w["pid"]), headers=[ehr.header()])
        assert signed.status == v.ResponseStatus.SUCCESS
        # the client's TLS certificate with a partner's assertion: not the same caller
        mixed = c.call("/xca/query", v.Action.ITI38, find_documents(w["pid"]),
                       headers=[Requester.demo_partner(w["keys"]).header()])
        assert refused(mixed, "FailedAuthentication")
    finally:
        c.close()
    rows = [e for e in _live_audit(w["data"]) if e.transaction == "ITI-18" and e.outcome == "success"]
    assert {e.user_subject_id for e in rows} >= {ehr.name, CLIENT_SUBJECT}
    assert all(e.patient_id == w["pid"] for e in rows)


def test_live_two_workers_pick_up_clients_add_and_remove(tmp_path, key_template, ehr):  # noqa: F811
    """`xds-node clients add|remove` while `serve --workers 2` runs: every worker follows on its next
    request (each request on a fresh connection, so both workers answer some)."""
    from xds_node.node import Node

    shutil.copytree(key_template, tmp_path, dirs_exist_ok=True)
    settings = load_settings(env={}, data_dir=tmp_path)
    Node(settings).close()  # schema in place before two workers start
    live = LiveNode(tmp_path, args=["--workers", "2"])
    try:
        def attempts() -> list:
            out = []
            for _ in range(6):
                c = _live_client(live.url)
                try:
                    out.append(c.call("/xds/registry", v.Action.ITI18, find_documents("P1^^^&1.2.3&ISO"),
                                      headers=[ehr.header()]))
                finally:
                    c.close()
            return out

        assert all(refused(r, "FailedAuthentication") for r in attempts())
        from xds_node.cli import main

        assert main(["clients", "add", ehr.name, "--cert", str(ehr.cert_path), "--data-dir", str(tmp_path)]) == 0
        assert all(not r.is_fault and r.status == v.ResponseStatus.SUCCESS for r in attempts())
        assert main(["clients", "remove", ehr.name, "--data-dir", str(tmp_path)]) == 0
        assert all(refused(r, "FailedAuthentication") for r in attempts())
    finally:
        live.stop()


# --- trying to get around it ---------------------------------------------------------------------
def test_ways_around_the_boundary_are_closed(world, ehr):
    from xds_node.admin import DEMO_PARTNER_HCID

    node, pid, docs = world
    partner = Requester.demo_partner(node.settings.keys_dir)
    # a partner's assertion carried over an internal client's TLS connection
    mixed = Caller(node.app(), client_cert=ehr.der)
    try:
        reply = mixed.call("/xds/registry", v.Action.ITI18, find_documents(pid), headers=[partner.header()])
        assert refused(reply, "FailedAuthentication") and not leaked(reply, docs)
    finally:
        mixed.close()
    c = Caller(node.app())
    try:
        # a client claiming to speak for a partner community
        reply = c.call("/xds/registry", v.Action.ITI18, find_documents(pid),
                       headers=[ehr.header(home_community_id=DEMO_PARTNER_HCID)])
        assert refused(reply, "FailedAuthentication")
        # a broken Security header from loopback does not fall back to anonymous
        local = Caller(node.app(), address="127.0.0.1")
        try:
            bad = local.call("/xds/registry", v.Action.ITI18, find_documents(pid),
                             headers=[Requester.demo_partner(node.settings.keys_dir).header(unsigned=True)])
            assert bad.is_fault and not leaked(bad, docs)
        finally:
            local.close()
        # a forwarded-for header claiming loopback changes nothing: the socket peer decides
        from xds_node.soap.envelope import build_request

        payload, ct, _ = build_request(v.Action.ITI18, find_documents(pid), to="http://testserver/xds/registry")
        resp = c._run(c._client.post("/xds/registry", content=payload, headers={
            "Content-Type": ct, "X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1",
            "Forwarded": "for=127.0.0.1"}))
        assert resp.status_code == 400 and b"authentication required" in resp.content
    finally:
        c.close()


@pytest.mark.parametrize(("address", "loopback"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("", False), ("localhost", False), ("127.0.0.1.nip.io", False),
    ("0.0.0.0", False)])
def test_what_counts_as_loopback(address, loopback):
    from xds_node.security.policy import is_loopback

    assert is_loopback(address) is loopback
