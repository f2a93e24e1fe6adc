"""The trust boundary over HTTP, as partners meet it: replay state shared by every worker and host,
byte-identical resends answered, identity bound to the signing certificate, partners with member
communities managed by the command line while the node runs, SAML size limits.

Two node processes share one database and one partners file: ``A`` runs ``serve --workers 2`` and
``B`` is a second "host". Sending the first message to one and the reuse to the other makes the
per-process replay cache of old deterministic to catch. Each test uses its own partners, so the
per-partner replay quota (small here: ``QUOTA`` entries, two per message) of one does not touch
another's.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from lxml import etree

from tests.conftest import BACKENDS, ROOT, LiveNode, _database_url
from tests.responding.requester import DOCTOR, TREATMENT
from tests.responding.test_responding_gateway import SAMPLES, find_documents
from tests.soapkit import _parse
from xds_node.admin import DEMO_PARTNER_HCID, init_keys
from xds_node.cli import main as cli
from xds_node.config import load_settings
from xds_node.ebxml import vocabulary as v
from xds_node.security.filewatch import atomic_write
from xds_node.security.keys import generate_demo_keys, load_key_and_cert
from xds_node.security.saml import (
    ATTRNAME_URI,
    RequesterContext,
    sign_assertion,
    unsigned_assertion,
)
from xds_node.security.wss import SAML2, build_security_header
from xds_node.soap.envelope import build_request

QUOTA = 20  # replay entries per partner: ten messages
pytestmark = pytest.mark.server


@dataclass
class World:
    data: Path
    settings: object
    a: LiveNode  # serve --workers 2
    b: LiveNode  # a second host on the same database and partners file
    patients: list[str]
    keys: Path
    made: dict[str, tuple] = field(default_factory=dict)

    def cli(self, *args: str) -> int:
        return cli([*args, "--data-dir", str(self.data)])

    def keypair(self, name: str) -> tuple:
        """(key, certificate, certificate file) of a signer whose subject is CN=name."""
        if name not in self.made:
            paths = generate_demo_keys(self.keys / name, common_name=name)
            self.made[name] = (*load_key_and_cert(*paths), paths[1])
        return self.made[name]

    def add_partner(self, name: str, *communities: str, issuers: tuple[str, ...] = (), cert: str | None = None) -> None:
        args = ["partners", "add", name, "--cert", str(self.keypair(cert or name)[2])]
        for c in communities:
            args += ["--community", c]
        for i in issuers:
            args += ["--issuer", i]
        assert self.cli(*args) == 0


@pytest.fixture(scope="module", params=BACKENDS)
def world(request, tmp_path_factory):
    data = tmp_path_factory.mktemp("trust-live")
    url = _database_url(request.param, data)
    settings = load_settings(env={}, data_dir=data, database_url=url)
    init_keys(settings)
    from xds_node.node import Node

    node = Node(settings)  # schema, sample documents and consent before the workers start
    node.folder_indexer(SAMPLES).sync()
    patients = sorted({e.patient_id for e in node.registry_store.fetch(
        "doc", [r["entry_uuid"] for r in node.repository.rows_for_source(
            next(s for s in node.repository.sources if s.startswith("folder:")))])})
    for pid in patients[:2]:
        node.consent_store.grant(pid, source="paper form")
    node.close()
    env = {"XDS_DATABASE_URL": url, "XDS_REPLAY_PARTNER_QUOTA": str(QUOTA)}
    a = LiveNode(data, env, ["--workers", "2"])
    try:
        b = LiveNode(data, env)
    except Exception:
        a.stop()
        raise
    keys = data / "test-keys"
    keys.mkdir()
    yield World(data, settings, a, b, patients, keys)
    a.stop()
    b.stop()


def header(world: World, signer: str, *, hcid: str, issuer: str | None = None, mutate=None) -> etree._Element:
    key, cert, _ = world.keypair(signer)
    ctx = RequesterContext(subject_id="Dr. Test", organization=f"{signer} hospital", organization_id=hcid,
                           home_community_id=hcid, role=DOCTOR, purpose_of_use=TREATMENT)
    a = unsigned_assertion(ctx, cert, issuer=issuer or cert.subject.rfc4514_string())
    if mutate is not None:
        mutate(a)
    return build_security_header(sign_assertion(a, key, cert), key, cert)


def message(world: World, security: etree._Element, patient: int = 0) -> bytes:
    payload, _ct, _mid = build_request(v.Action.ITI38, find_documents(world.patients[patient]),
                                       to="http://node/xca/query", headers=[security])
    assert isinstance(payload, bytes)
    return payload


def post(node: LiveNode, data: bytes):
    ct = f'application/soap+xml; charset=UTF-8; action="{v.Action.ITI38}"'
    with httpx.Client(timeout=60) as c:  # a fresh connection each time: any worker may answer
        return _parse(c.post(node.url + "/xca/query", content=data, headers={"Content-Type": ct}))


def answered(reply) -> bool:
    return reply.http_status == 200 and not reply.is_fault and reply.status == v.ResponseStatus.SUCCESS


def refused(reply, reason: str) -> bool:
    return reply.is_fault and reason in reply.fault_reason


def _hcid() -> str:
    return f"urn:oid:1.3.6.1.4.1.21367.2026.77.{uuid.uuid4().int % 10**9}"


# --- replay and resend ------------------------------------------------------------------------------
def test_reused_security_header_is_refused_on_every_worker_and_host(world):
    hcid = _hcid()
    world.add_partner("Replay Partner", hcid)
    h = header(world, "Replay Partner", hcid=hcid)
    assert answered(post(world.a, message(world, h)))
    # the same Security header in a message that is not byte-identical (new wsa:MessageID)
    for node in (world.b, world.a, world.a):
        reply = post(node, message(world, h))
        assert refused(reply, "replayed"), reply.raw[:400]


def test_a_captured_header_is_refused_on_every_other_partner_endpoint(world):
    """Replay state is the partner's, not the endpoint's: a Security header answered on ITI-38 and
    put on an ITI-39 retrieve or an XCPD query (another endpoint, another action, another worker or
    host) is refused as replayed before anything is read or disclosed."""
    from xds_node.ebxml import xdsb

    hcid = _hcid()
    world.add_partner("Endpoint Partner", hcid)
    h = header(world, "Endpoint Partner", hcid=hcid)
    assert answered(post(world.a, message(world, h)))
    retrieve = xdsb.write_retrieve_request([xdsb.DocumentRequest(world.settings.repository_unique_id, "1.2.3.4")])
    xcpd = etree.fromstring(
        b'<PRPA_IN201305UV02 xmlns="urn:hl7-org:v3" ITSVersion="XML_1.0"><id root="1.2.3" extension="x"/>'
        b'</PRPA_IN201305UV02>')
    for node, path, action, body in ((world.b, "/xca/retrieve", v.Action.ITI39, retrieve),
                                     (world.a, "/xcpd", v.Action.ITI55, xcpd)):
        payload, ct, _ = build_request(action, body, to=f"http://node{path}", headers=[h])
        with httpx.Client(timeout=60) as c:
            reply = _parse(c.post(node.url + path, content=payload, headers={"Content-Type": ct}))
        assert refused(reply, "replayed"), (path, reply.raw[:400])


def test_captured_security_header_with_another_body_is_refused(world):
    hcid = _hcid()
    world.add_partner("Body Partner", hcid)
    h = header(world, "Body Partner", hcid=hcid)
    assert answered(post(world.b, message(world, h, patient=0)))
    for node in (world.a, world.b):
        reply = post(node, message(world, h, patient=1))  # another patient, same captured header
        assert refused(reply, "replayed"), reply.raw[:400]
        assert b"RegistryObjectList" not in reply.raw


def test_byte_identical_resend_is_answered_again_and_audited_as_a_resend(world):
    hcid = _hcid()
    world.add_partner("Resend Partner", hcid)
    data = message(world, header(world, "Resend Partner", hcid=hcid))
    first = post(world.a, data)
    assert answered(first)
    docs = sorted(o.get("id") for o in first.objects("ExtrinsicObject"))
    assert docs
    for node in (world.b, world.a, world.b):  # the default allows three resends
        again = post(node, data)
        assert answered(again), again.raw[:400]
        assert sorted(o.get("id") for o in again.objects("ExtrinsicObject")) == docs
    assert refused(post(world.a, data), "replayed")  # a fourth is a replay
    from xds_node.node import Node

    node = Node(world.settings)
    try:
        rows = [e for e in node.audit.list(transaction="ITI-38", limit=1000) if e.partner_community == hcid]
    finally:
        node.close()
    assert len(rows) == 4  # the first answer and three resends (a refusal carries no verified partner)
    assert sum("resend" in e.reason for e in rows) == 3


def test_a_message_raced_at_every_worker_and_host_at_once_is_answered_a_bounded_number_of_times(world):
    """Replay admission by group commit, attacked: the same signed message (a retry storm or a
    captured copy) and the same header with another body, all fired at once on fresh connections at
    two workers and a second host. Exactly one is the original, at most the allowed three resends
    are answered again, every other copy is refused, and the other body is never answered."""
    import concurrent.futures

    hcid = _hcid()
    world.add_partner("Racing Partner", hcid)
    h = header(world, "Racing Partner", hcid=hcid)
    data, other = message(world, h, patient=0), message(world, h, patient=1)
    shots = [(world.a, data), (world.b, data)] * 6 + [(world.a, other), (world.b, other)] * 2
    with concurrent.futures.ThreadPoolExecutor(len(shots)) as pool:
        replies = list(pool.map(lambda shot: (shot[1], post(*shot)), shots))
    same = [r for d, r in replies if d is data]
    swapped = [r for d, r in replies if d is other]
    assert all(answered(r) or refused(r, "replayed") for r in same + swapped), [r.raw[:300] for r in same + swapped]
    ok = [r for r in same if answered(r)]
    answered_other = [r for r in swapped if answered(r)]
    # whichever body got in first is the original; only its byte-identical copies are resends (at
    # most three), and the other body is refused every time
    assert (not ok) != (not answered_other), (len(ok), len(answered_other))
    assert 1 <= len(ok) + len(answered_other) <= 4
    from xds_node.node import Node

    node = Node(world.settings)
    try:
        rows = [e for e in node.audit.list(transaction="ITI-38", limit=1000) if e.partner_community == hcid]
    finally:
        node.close()
    assert len(rows) == len(ok) + len(answered_other)  # every answer audited, no refusal counted as one


_REPLAY_BROKEN = {
    "sqlite": ["CREATE TRIGGER replay_disk_full BEFORE INSERT ON replay_entry "
               "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION xds_test_replay_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = 'disk_full'; END $$",
        "CREATE TRIGGER replay_disk_full BEFORE INSERT ON replay_entry FOR EACH ROW "
        "EXECUTE FUNCTION xds_test_replay_full()",
    ],
}


def test_replay_state_that_cannot_be_written_is_a_retry_later_not_a_security_refusal(world):
    """The database refuses replay entries (a full disk): a good message is not admitted (nothing
    disclosed) and its sender is told to retry (503 Receiver, Retry-After), not that its security
    header is wrong; once the database writes again the very same message is answered."""
    from sqlalchemy import text

    from xds_node.db import make_engine

    hcid = _hcid()
    world.add_partner("Patient Partner", hcid)
    data = message(world, header(world, "Patient Partner", hcid=hcid))
    engine = make_engine(world.settings.audit_db_url)  # where replay state lives (its own file on SQLite)
    dialect = engine.dialect.name
    try:
        with engine.begin() as conn:
            for stmt in _REPLAY_BROKEN[dialect]:
                conn.execute(text(stmt))
        try:
            for node in (world.a, world.b):
                reply = post(node, data)
                assert reply.http_status == 503 and reply.is_fault, reply.raw[:400]
                assert b"Receiver" in reply.raw and b"RegistryObjectList" not in reply.raw
                assert b"security header" not in reply.raw
        finally:
            with engine.begin() as conn:
                conn.execute(text("DROP TRIGGER replay_disk_full" + (" ON replay_entry" if dialect == "postgresql"
                                                                     else "")))
        assert answered(post(world.a, data))  # nothing of it was recorded: now it is the original
    finally:
        engine.dispose()


def test_one_partner_over_its_quota_does_not_affect_another(world):
    flood, calm = _hcid(), _hcid()
    world.add_partner("Flooding Partner", flood)
    world.add_partner("Calm Partner", calm)
    for i in range(QUOTA // 2):
        reply = post((world.a, world.b)[i % 2], message(world, header(world, "Flooding Partner", hcid=flood)))
        assert answered(reply), (i, reply.raw[:400])
    for node in (world.a, world.b):
        reply = post(node, message(world, header(world, "Flooding Partner", hcid=flood)))
        assert refused(reply, "replay quota exceeded"), reply.raw[:400]
    for node in (world.a, world.b, world.a):
        assert answered(post(node, message(world, header(world, "Calm Partner", hcid=calm))))


# --- identity -----------------------------------------------------------------------------------
def test_issuer_must_be_the_signing_certificate_or_listed(world):
    hcid = _hcid()
    world.add_partner("Issuer Partner", hcid, issuers=("urn:example:saml-issuer",))
    for node in (world.a, world.b):
        reply = post(node, message(world, header(world, "Issuer Partner", hcid=hcid,
                                                 issuer="CN=xds-node demo partner")))
        assert refused(reply, "issuer is not the signer"), reply.raw[:400]
    # compared as a DN, not as a string; and the listed name
    for issuer in ("cn=issuer  partner", "CN=Issuer Partner", "urn:example:saml-issuer"):
        assert answered(post(world.b, message(world, header(world, "Issuer Partner", hcid=hcid, issuer=issuer))))


def test_member_communities_accepted_each_as_itself_and_a_foreign_one_refused(world):
    own, member = _hcid(), _hcid()
    world.add_partner("Implementer", own, member)  # one certificate, two member organisations
    for hcid in (own, member):
        for node in (world.a, world.b):
            reply = post(node, message(world, header(world, "Implementer", hcid=hcid)))
            assert answered(reply), reply.raw[:400]
    for foreign in (DEMO_PARTNER_HCID, _hcid()):  # another partner's community; nobody's
        reply = post(world.a, message(world, header(world, "Implementer", hcid=foreign)))
        assert refused(reply, "home community not accepted"), reply.raw[:400]
    from xds_node.node import Node

    node = Node(world.settings)
    try:
        rows = [e for e in node.audit.list(transaction="ITI-38", outcome="success", limit=1000)
                if e.partner_community in (own, member)]
    finally:
        node.close()
    assert sorted(e.partner_community for e in rows) == sorted([own, own, member, member])


# --- partners changed while the node runs ----------------------------------------------------------
def test_partner_added_replaced_removed_while_running(world):
    hcid = _hcid()
    world.keypair("Late Partner")
    for node in (world.a, world.b):
        assert refused(post(node, message(world, header(world, "Late Partner", hcid=hcid))), "unknown signer")
    world.add_partner("Late Partner", hcid)
    for node in (world.b, world.a, world.a):
        assert answered(post(node, message(world, header(world, "Late Partner", hcid=hcid))))

    # replace: a new certificate; the old one is no longer trusted
    world.keypair("Late Partner v2")
    assert world.cli("partners", "replace", "Late Partner", "--cert", str(world.keypair("Late Partner v2")[2])) == 0
    for node in (world.a, world.b):
        assert refused(post(node, message(world, header(world, "Late Partner", hcid=hcid))), "unknown signer")
        reply = post(node, message(world, header(world, "Late Partner v2", hcid=hcid)))
        assert answered(reply), reply.fault_reason

    # a broken file keeps the last good partners
    path = world.data / "partners.toml"
    good = path.read_bytes()
    try:
        atomic_write(path, good + b"\n[[partner\n")  # an editor's save of a broken file
        for node in (world.a, world.b):
            reply = post(node, message(world, header(world, "Late Partner v2", hcid=hcid)))
            assert answered(reply), reply.fault_reason
        path.write_bytes(b"")  # an editor truncating before it writes: not "trust nobody"
        reply = post(world.a, message(world, header(world, "Late Partner v2", hcid=hcid)))
        assert answered(reply), reply.fault_reason
    finally:
        atomic_write(path, good)

    assert world.cli("partners", "remove", "Late Partner") == 0
    for node in (world.b, world.a, world.a, world.a):
        assert refused(post(node, message(world, header(world, "Late Partner v2", hcid=hcid))), "unknown signer")


def test_partners_add_with_many_communities_and_duplicates_are_clean_errors(world, tmp_path):
    first, second = _hcid(), _hcid()
    world.keypair("Twice")
    cert = str(world.keypair("Twice")[2])
    world.keypair("Other")

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "xds_node.cli", "partners", *args, "--data-dir", str(world.data)],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)

    ok = run("add", "Twice", "--cert", cert, "--community", first, "--community", second.removeprefix("urn:oid:"))
    assert ok.returncode == 0, ok.stderr
    for hcid in (first, second):
        assert answered(post(world.b, message(world, header(world, "Twice", hcid=hcid))))
    cases = {
        "same certificate": ("add", "Twice again", "--cert", cert, "--community", _hcid()),
        "same name": ("add", "Twice", "--cert", str(world.keypair("Other")[2]), "--community", _hcid()),
        "community taken": ("add", "Other", "--cert", str(world.keypair("Other")[2]), "--community", first),
        "not an OID": ("add", "Other", "--cert", str(world.keypair("Other")[2]), "--community", "urn:oid:1.2.x"),
        "no such file": ("add", "Other", "--cert", str(tmp_path / "missing.pem"), "--community", _hcid()),
        "replace unknown": ("replace", "Nobody", "--cert", cert),
        "remove unknown": ("remove", "Nobody"),
    }
    for case, args in cases.items():
        bad = run(*args)
        assert bad.returncode == 2, (case, bad.stdout, bad.stderr)
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in bad.stderr, (case, bad.stderr)
    assert "partners replace" in run(*cases["same certificate"]).stderr
    assert "partners replace" in run(*cases["same name"]).stderr


# --- SAML limits ------------------------------------------------------------------------------------
def _attributes(count: int, size: int = 8):
    def mutate(a: etree._Element) -> None:
        stmt = a.find(f"{{{SAML2}}}AttributeStatement")
        for i in range(count):
            at = etree.SubElement(stmt, f"{{{SAML2}}}Attribute", Name=f"urn:example:extra:{i}",
                                  NameFormat=ATTRNAME_URI)
            etree.SubElement(at, f"{{{SAML2}}}AttributeValue").text = "x" * size
    return mutate


def test_oversized_assertion_and_too_many_attributes_are_refused(world):
    hcid = _hcid()
    world.add_partner("Big Partner", hcid)
    cases = [(_attributes(80), "too many attributes"), (_attributes(1, 70_000), "assertion too large")]
    for mutate, reason in cases:
        for node in (world.a, world.b):
            reply = post(node, message(world, header(world, "Big Partner", hcid=hcid, mutate=mutate)))
            assert refused(reply, reason), reply.raw[:400]
    # within the limits the same kind of assertion is fine
    assert answered(post(world.a, message(world, header(world, "Big Partner", hcid=hcid, mutate=_attributes(40)))))
