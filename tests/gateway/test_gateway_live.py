"""The initiating gateway against four responding gateways of our own, each an ``xds-node serve``
process on 127.0.0.1 with its own data, homeCommunityId and partners.toml pinning our signing cert:

* A answers (behind a counting proxy; retrieve_batch_size = 2);
* B is slow: a proxy holds every request 3 s, past B's 1 s timeout;
* C answers XCPD but its proxy turns every ITI-38 into an HTTP 500 SOAP fault;
* D holds the patient, who has not consented there.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from lxml import etree

from tests.conftest import LiveNode
from tests.gateway.proxy import Proxy
from xds_node.config import load_settings
from xds_node.ebxml import rim, xdsb
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import StoredQuery
from xds_node.gateway.initiating import InitiatingGateway
from xds_node.node import Node
from xds_node.patients.model import parse_cx
from xds_node.security.keys import generate_demo_keys
from xds_node.soap.app import SoapApp
from xds_node.soap.envelope import build_request, parse_envelope
from xds_node.transactions import ig

pytestmark = pytest.mark.server

SAMPLES = Path(__file__).resolve().parents[2] / "sample_documents"
ALEX = SAMPLES / "alex-testpatient"
ALEX_ID = "VET0001^^^&1.3.6.1.4.1.21367.2026.1.9&ISO"
OURS = "urn:oid:1.3.6.1.4.1.21367.2026.9.1"
HCID = {k: f"urn:oid:1.3.6.1.4.1.21367.2026.9.{n}" for k, n in (("A", 10), ("B", 20), ("C", 30), ("D", 40))}
REPO = {k: f"1.3.6.1.4.1.21367.2026.9.{n}.2" for k, n in (("A", 10), ("B", 20), ("C", 30), ("D", 40))}
E = v.ErrorCode


def _seed(data_dir: Path, name: str, *, consent: bool, folders: list[Path]) -> None:
    node = Node(load_settings(env={}, data_dir=data_dir, home_community_id=HCID[name],
                              repository_unique_id=REPO[name], organization_name=f"Community {name}"))
    try:
        for folder in folders:
            report = node.folder_indexer(folder).sync()
            assert not report.rejected, report.rejected
        if consent:
            for pid in {p.patient_id for p in _patients(node)}:
                node.consent_store.grant(pid, source="test")
    finally:
        node.close()


def _patients(node):
    from sqlalchemy import select

    from xds_node.patients import tables as t

    with node.engine.connect() as conn:
        ids = [r.patient_id for r in conn.execute(select(t.patient.c.patient_id))]
    return [node.patients.get(i) for i in ids]


def _pin_us(data_dir: Path, cert: Path) -> None:
    (data_dir / "partners.toml").write_text(
        f'[[partner]]\nname = "va-initiating-gateway"\nhome_community_id = "{OURS}"\n'
        f'certificates = ["{cert}"]\n', encoding="utf-8")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("xca")
    ours = root / "ours"
    key, cert = generate_demo_keys(ours / "keys", common_name="VA initiating gateway")
    key.replace(ours / "keys" / "node.key.pem")
    cert.replace(ours / "keys" / "node.cert.pem")
    cert = ours / "keys" / "node.cert.pem"

    dirs = {k: root / k for k in HCID}
    _seed(dirs["A"], "A", consent=True, folders=sorted(p for p in SAMPLES.iterdir() if p.is_dir()))
    _seed(dirs["B"], "B", consent=True, folders=[ALEX])
    _seed(dirs["C"], "C", consent=True, folders=[ALEX])
    _seed(dirs["D"], "D", consent=False, folders=[ALEX])
    for d in dirs.values():
        _pin_us(d, cert)

    def start(name: str) -> LiveNode:
        return LiveNode(dirs[name], extra_env={"XDS_HOME_COMMUNITY_ID": HCID[name],
                                               "XDS_REPOSITORY_UNIQUE_ID": REPO[name]})

    with ThreadPoolExecutor(4) as pool:
        nodes = dict(zip(HCID, pool.map(start, HCID), strict=True))
    proxies = {"A": Proxy(nodes["A"].port), "B": Proxy(nodes["B"].port, delay=3.0),
               "C": Proxy(nodes["C"].port, fault_actions=(v.Action.ITI38,))}
    urls = {k: proxies[k].url if k in proxies else nodes[k].url for k in HCID}
    lines = []
    for k in HCID:
        lines += ["[[partner]]", f'name = "community-{k}"', f'home_community_id = "{HCID[k]}"',
                  f"timeout = {1.0 if k == 'B' else 10.0}", f"retrieve_batch_size = {2 if k == 'A' else 50}",
                  "[partner.endpoints]", f'xcpd = "{urls[k]}/xcpd"', f'xca_query = "{urls[k]}/xca/query"',
                  f'xca_retrieve = "{urls[k]}/xca/retrieve"', ""]
    (ours / "partners.toml").write_text("\n".join(lines), encoding="utf-8")
    settings = load_settings(env={}, data_dir=ours, home_community_id=OURS, organization_name="VA test")
    node = Node(settings)
    node.patients.add_from_cda((ALEX / "ccd-2024.xml").read_bytes())
    node.consent_store.grant(ALEX_ID, source="test")  # naming Alex to partners needs Alex's consent
    try:
        yield {"node": node, "proxies": proxies, "nodes": nodes, "dirs": dirs, "root": root}
    finally:
        node.close()
        for p in proxies.values():
            p.stop()
        for n in nodes.values():
            n.stop()


def run(world, work):
    """Run ``work(gateway, ctx)`` with a fresh gateway (connection pool) on a fresh loop."""
    node = world["node"]
    settings = ig.IgSettings.from_settings(node.settings, env={})

    async def main():
        gateway = ig.build_gateway(node, settings)
        try:
            return await work(gateway, settings.requester())
        finally:
            await gateway.client.aclose()

    return asyncio.run(main())


def by_partner(result) -> dict[str, object]:
    return {o.partner.removeprefix("community-"): o for o in result.partners}


def correlate_everywhere(node) -> None:
    remote = parse_cx(ALEX_ID)
    for k in HCID:
        node.patients.save_correlation(ALEX_ID, HCID[k], remote.extension, remote.root)


def test_discover_stores_correlations_and_survives_a_slow_partner(world):
    node = world["node"]
    demo = node.patients.get(ALEX_ID).demographics

    async def work(gw: InitiatingGateway, ctx):
        return await gw.discover(demo, ctx)

    result = run(world, work)
    outcomes = by_partner(result)
    assert result.local_patient_id == ALEX_ID  # found in our own index from the demographics
    assert result.status == v.ResponseStatus.PARTIAL_SUCCESS
    assert {k: o.state for k, o in outcomes.items()} == {"A": "answered", "B": "timeout", "C": "answered",
                                                          "D": "answered"}
    assert outcomes["D"].detail == "not found"  # no consent at D: answered exactly like an unknown patient
    assert [(e.code, e.location) for e in result.errors] == [(E.UNAVAILABLE_COMMUNITY, HCID["B"])]
    stored = {m.community: m for m in result.matches}
    assert set(stored) == {HCID["A"], HCID["C"]}
    assert all(m.trusted and m.stored and m.remote_patient_id == ALEX_ID for m in stored.values())
    assert {c.community_id for c in node.patients.correlations_for(ALEX_ID)} >= {HCID["A"], HCID["C"]}
    outbound = [e for e in node.audit.list(transaction="ITI-55") if e.direction == "outbound"]
    # first the committed intent (naming our patient is the disclosure), then one row per partner
    assert [e.outcome for e in outbound if e.outcome == "attempt"] == ["attempt"]
    assert {e.partner_community: e.outcome for e in outbound if e.outcome != "attempt"} == {
        HCID["A"]: "success", HCID["B"]: "failure", HCID["C"]: "success", HCID["D"]: "success"}


def test_query_merges_answers_and_reports_each_failed_community(world):
    node = world["node"]
    correlate_everywhere(node)

    async def work(gw, ctx):
        return await gw.query(ALEX_ID, ctx)

    result = run(world, work)
    outcomes = by_partner(result)
    assert result.status == v.ResponseStatus.PARTIAL_SUCCESS
    assert {k: o.state for k, o in outcomes.items()} == {"A": "answered", "B": "timeout", "C": "failed",
                                                          "D": "answered"}
    assert outcomes["D"].detail == "patient not known there"  # XDSUnknownPatientId is not a failure
    assert sorted((e.code, e.location) for e in result.errors) == [
        (E.UNAVAILABLE_COMMUNITY, HCID["B"]), (E.UNAVAILABLE_COMMUNITY, HCID["C"])]
    docs = result.documents()
    assert len(docs) == 5 and {d["home"] for d in docs} == {HCID["A"]}
    assert {d["repository_unique_id"] for d in docs} == {REPO["A"]}
    merged = etree.fromstring(result.response_bytes())
    assert merged.get("status") == v.ResponseStatus.PARTIAL_SUCCESS
    assert all(o.get("home") == HCID["A"] for o in merged.find(f"{{{v.RIM}}}RegistryObjectList"))


def test_retrieve_is_batched_per_partner_and_isolates_failures(world, tmp_path):
    node = world["node"]
    correlate_everywhere(node)
    proxy_a = world["proxies"]["A"]
    before = proxy_a.counts[v.Action.ITI39]

    async def work(gw, ctx):
        found = await gw.query(ALEX_ID, ctx)
        refs = [xdsb.DocumentRequest(d["repository_unique_id"], d["document_unique_id"], d["home"])
                for d in found.documents()]
        refs += [xdsb.DocumentRequest(REPO["B"], refs[0].document_unique_id, HCID["B"]),
                 xdsb.DocumentRequest(REPO["D"], refs[0].document_unique_id, HCID["D"])]
        return await gw.retrieve(refs, ctx, dest=tmp_path / "out")

    result = run(world, work)
    outcomes = by_partner(result)
    assert proxy_a.counts[v.Action.ITI39] - before == 3  # 5 documents, batches of 2
    assert outcomes["A"].calls == 3 and outcomes["A"].count == 5
    assert result.status == v.ResponseStatus.PARTIAL_SUCCESS
    assert outcomes["B"].state == "timeout"
    codes = sorted((e.code, e.location) for e in result.errors)
    assert codes == sorted([(E.UNAVAILABLE_COMMUNITY, HCID["B"]), (E.DOCUMENT_UNIQUE_ID_ERROR, HCID["D"])])
    assert len(result.documents) == 5
    originals = {p.read_bytes() for p in ALEX.iterdir()}
    for d in result.documents:
        assert d.home_community_id == HCID["A"] and d.path is not None and d.path.parent == tmp_path / "out"
        assert d.path.read_bytes() in originals
    assert not (tmp_path / "out" / ".xds-spool").exists()


@pytest.fixture(scope="module")
def ehr(world, tmp_path_factory):
    """Our EHR, pinned as an internal client of our node (clients.toml), signing its own SAML."""
    from tests.responding.test_trust_boundary import InternalClient, pin_client
    from xds_node.security.keys import load_key_and_cert

    key_path, cert_path = generate_demo_keys(tmp_path_factory.mktemp("ehr"), common_name="VA EHR")
    client = InternalClient("va-ehr", *load_key_and_cert(key_path, cert_path), cert_path, key_path)
    pin_client(world["node"].settings, client)
    return client


def _partner_audit(world, name: str) -> list:
    """What partner community ``name`` recorded about our outbound calls (its own audit trail)."""
    from xds_node.audit.store import AuditLog
    from xds_node.db import make_engine

    engine = make_engine(load_settings(env={}, data_dir=world["dirs"][name]).audit_db_url)
    try:
        return AuditLog(engine).list()
    finally:
        engine.dispose()


def test_local_consumers_use_the_initiating_gateway_endpoints_unchanged(world, ehr):
    from tests.responding.test_trust_boundary import CLIENT_SUBJECT

    node = world["node"]
    correlate_everywhere(node)
    app = SoapApp(ig.endpoints(node))
    seen_before = {e.event_id for e in _partner_audit(world, "A")}

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ig") as client:
            async def call(path, action, body):
                payload, ct, _ = build_request(action, body, to="http://ig" + path,
                                               headers=[ehr.header(home_community_id=OURS)])
                resp = await client.post(path, content=payload, headers={"content-type": ct})
                return parse_envelope(resp.content, resp.headers["content-type"], require_action=False)

            query = rim.write_adhoc_query_request(StoredQuery(v.StoredQueryId.FIND_DOCUMENTS, slots={
                "$XDSDocumentEntryPatientId": [[f"'{ALEX_ID}'"]],
                "$XDSDocumentEntryStatus": [["('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"]]}))
            q = await call(ig.IG_REGISTRY_PATH, v.Action.ITI18, query)
            objects = list(q.body.find(f"{{{v.RIM}}}RegistryObjectList"))
            uids = [ei.get("value") for o in objects for ei in o.iter(f"{{{v.RIM}}}ExternalIdentifier")
                    if ei.get("identificationScheme") == v.DOC_UNIQUE_ID]
            refs = [xdsb.DocumentRequest(REPO["A"], uid, HCID["A"]) for uid in uids[:3]]
            r = await call(ig.IG_REPOSITORY_PATH, v.Action.ITI43, xdsb.write_retrieve_request(refs))
            return q, objects, r

    q, objects, r = asyncio.run(main())
    assert q.body.get("status") == v.ResponseStatus.PARTIAL_SUCCESS
    assert len(objects) == 5 and {o.get("home") for o in objects} == {HCID["A"]}
    assert {e.get("location") for e in q.body.iter(f"{{{v.RS}}}RegistryError")} == {HCID["B"], HCID["C"]}
    assert r.body.find(f"{{{v.RS}}}RegistryResponse").get("status") == v.ResponseStatus.SUCCESS
    docs = list(r.body.iter(f"{{{v.XDSB}}}DocumentResponse"))
    assert len(docs) == 3 and r.mtom
    originals = {p.read_bytes() for p in ALEX.iterdir()}
    for dr in docs:
        assert dr.findtext(f"{{{v.XDSB}}}HomeCommunityId") == HCID["A"]
        assert r.binary(dr.find(f"{{{v.XDSB}}}Document")) in originals
    # the consumer's own requests are audited too, beside the outbound calls they caused
    local = [e for e in node.audit.list() if e.direction == "inbound" and e.endpoint.startswith("/ig/")]
    assert {(e.transaction, e.outcome) for e in local} >= {("ITI-18", "partial"), ("ITI-43", "success")}
    assert any(e.patient_id == ALEX_ID for e in local if e.transaction == "ITI-18")
    assert any(len(e.document_ids) == 3 for e in local if e.transaction == "ITI-43")
    assert {e.user_subject_id for e in local} == {CLIENT_SUBJECT}
    # the requester goes out as itself: the partner's audit trail and our outbound rows name the person
    theirs = [e for e in _partner_audit(world, "A") if e.event_id not in seen_before and e.outcome != "denied"]
    assert {e.transaction for e in theirs} == {"ITI-38", "ITI-39"}
    assert {(e.user_subject_id, e.partner_organization, e.user_role_code) for e in theirs} == {
        (CLIENT_SUBJECT, "Boston VA Medical Center", "112247003")}
    outbound = [e for e in node.audit.list() if e.direction == "outbound" and e.partner_organization == "community-A"]
    assert outbound and CLIENT_SUBJECT in {e.user_subject_id for e in outbound}


def test_initiating_gateway_sends_nothing_for_an_anonymous_caller(world):
    node = world["node"]
    correlate_everywhere(node)
    before = sum(p.counts.get(v.Action.ITI38, 0) for p in world["proxies"].values())
    app = SoapApp(ig.endpoints(node))

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ig") as client:
            query = rim.write_adhoc_query_request(StoredQuery(v.StoredQueryId.FIND_DOCUMENTS, slots={
                "$XDSDocumentEntryPatientId": [[f"'{ALEX_ID}'"]]}))
            payload, ct, _ = build_request(v.Action.ITI18, query, to="http://ig/ig/registry")
            resp = await client.post(ig.IG_REGISTRY_PATH, content=payload, headers={"content-type": ct})
            return resp

    resp = asyncio.run(main())
    assert resp.status_code == 400 and b"authentication required" in resp.content
    assert sum(p.counts.get(v.Action.ITI38, 0) for p in world["proxies"].values()) == before


def test_certificate_only_client_goes_out_under_its_client_name(world, ehr):
    """A client known only by its TLS certificate states no person: the partner sees the client's name,
    with the ig_* role and purpose filling what it did not state."""
    from tests.responding.test_trust_boundary import _with_tls_client

    node = world["node"]
    correlate_everywhere(node)
    app = _with_tls_client(SoapApp(ig.endpoints(node)), ehr.der)
    seen_before = {e.event_id for e in _partner_audit(world, "A")}

    async def main():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ig") as client:
            query = rim.write_adhoc_query_request(StoredQuery(v.StoredQueryId.FIND_DOCUMENTS, slots={
                "$XDSDocumentEntryPatientId": [[f"'{ALEX_ID}'"]],
                "$XDSDocumentEntryStatus": [["('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"]]}))
            payload, ct, _ = build_request(v.Action.ITI18, query, to="http://ig/ig/registry")
            return await client.post(ig.IG_REGISTRY_PATH, content=payload, headers={"content-type": ct})

    resp = asyncio.run(main())
    assert resp.status_code == 200, resp.content[:400]
    theirs = [e for e in _partner_audit(world, "A") if e.event_id not in seen_before and e.transaction == "ITI-38"]
    assert theirs and {e.user_subject_id for e in theirs} == {ehr.name}
    assert {e.purpose_of_use for e in theirs} == {"TREATMENT"}
    assert {e.partner_organization for e in theirs} == {"VA test"}  # ig_organization fills what it did not state


def test_command_line_json(world, capsys, monkeypatch):
    from xds_node.gateway import commands

    node = world["node"]
    correlate_everywhere(node)
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    commands.add_parsers(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["query", ALEX_ID, "--json", "--data-dir", str(node.settings.data_dir)])
    monkeypatch.setenv("XDS_HOME_COMMUNITY_ID", OURS)
    code = args.func(args)
    out = json.loads(capsys.readouterr().out)
    assert code == 1  # PartialSuccess
    assert out["status"] == "PartialSuccess" and len(out["documents"]) == 5
    assert {p["partner"]: p["state"] for p in out["partners"]}["community-B"] == "timeout"


def test_command_line_tables_for_people(world, capsys, monkeypatch):
    from xds_node.gateway import commands

    node = world["node"]
    correlate_everywhere(node)
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    commands.add_parsers(parser.add_subparsers(dest="command"))
    monkeypatch.setenv("XDS_HOME_COMMUNITY_ID", OURS)
    monkeypatch.setenv("COLUMNS", "200")
    args = parser.parse_args(["query", ALEX_ID, "--data-dir", str(node.settings.data_dir)])
    assert args.func(args) == 1
    captured = capsys.readouterr()
    progress, table = captured.err, captured.out
    assert "timed out" in progress and "answered" in progress and "failed" in progress
    assert "5 document(s)" in table and "XDSUnavailableCommunity" in table and "PartialSuccess" in table


def test_our_patient_is_named_to_partners_only_with_consent(world, ehr, capsys, monkeypatch):
    """XCPD, ITI-38 and /ig/registry for our patient reveal the patient to every partner: after a
    revocation nothing is sent (the loopback partners see no request), the command says why and
    exits 2, the refusal is audited; opting in again lets the calls go out again."""
    from xds_node.gateway import commands

    node = world["node"]
    correlate_everywhere(node)
    proxies = world["proxies"]
    monkeypatch.setenv("XDS_HOME_COMMUNITY_ID", OURS)
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    commands.add_parsers(parser.add_subparsers(dest="command"))
    demo = node.patients.get(ALEX_ID).demographics
    data = ["--data-dir", str(node.settings.data_dir)]
    discover = ["discover", "--family", demo.family, "--given", demo.given[0], "--birth-date", demo.birth_date,
                "--gender", demo.gender, *data]

    def sent() -> int:
        return sum(sum(p.counts.values()) for p in proxies.values())

    def ig_find_documents():
        app = SoapApp(ig.endpoints(node))

        async def main():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ig") as client:
                query = rim.write_adhoc_query_request(StoredQuery(v.StoredQueryId.FIND_DOCUMENTS, slots={
                    "$XDSDocumentEntryPatientId": [[f"'{ALEX_ID}'"]],
                    "$XDSDocumentEntryStatus": [["('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"]]}))
                payload, ct, _ = build_request(v.Action.ITI18, query, to="http://ig" + ig.IG_REGISTRY_PATH,
                                               headers=[ehr.header(home_community_id=OURS)])
                resp = await client.post(ig.IG_REGISTRY_PATH, content=payload, headers={"content-type": ct})
                return parse_envelope(resp.content, resp.headers["content-type"], require_action=False)

        return asyncio.run(main())

    revocation = node.consent_store.revoke(ALEX_ID, source="online", note="patient called")
    try:
        before = sent()
        for argv in (discover, ["query", ALEX_ID, *data], ["retrieve-remote", "--patient", ALEX_ID, "-o",
                                                           str(world["root"] / "out-refused"), *data]):
            args = parser.parse_args(argv)
            assert args.func(args) == 2, argv[0]
            err = capsys.readouterr().err
            assert f"{argv[0]}: refused: patient {ALEX_ID} may not be named to partner communities: " \
                   f"consent revoked (directive #{revocation.id}); nothing was sent" in err
        reply = ig_find_documents()
        assert reply.body.get("status") == v.ResponseStatus.FAILURE
        assert "consent revoked" in reply.body.find(f".//{{{v.RS}}}RegistryError").get("codeContext")
        assert sent() == before  # not one request reached a partner
        denied = [e for e in node.audit.list(outcome="denied") if e.direction == "outbound"]
        assert {e.transaction for e in denied} == {"ITI-55", "ITI-38"}
        assert all(e.patient_id == ALEX_ID and "consent revoked" in e.reason for e in denied)
        # a discovery naming our patient explicitly, or an id that is not a CX, is refused too
        args = parser.parse_args(["discover", "--patient", ALEX_ID, *discover[1:]])
        assert args.func(args) == 2
        args = parser.parse_args(["query", "VET0001", *data])
        assert args.func(args) == 2 and "not in CX form" in capsys.readouterr().err
        assert sent() == before
    finally:
        node.consent_store.grant(ALEX_ID, source="paper form", note="opted in again")
    args = parser.parse_args(["query", ALEX_ID, "--json", *data])
    assert args.func(args) == 1 and json.loads(capsys.readouterr().out)["documents"]  # PartialSuccess: B, C fail
    assert sent() > before
