"""Two hosts, one PostgreSQL database: what adding a host takes, and what they must share.

Two ``xds-node serve`` processes on different ports with **different data directories** (nothing
on disk in common but the trust files, as two machines mounting one configuration share would
have) and one database URL:

- a document pushed by ITI-41 through host A is retrieved, byte for byte, through host B (its bytes
  are in the database: B's data directory never sees them);
- a partner's Security header accepted by A is refused as replayed by B;
- ``xds-node consent revoke`` run as host A's command line holds at B's next request;
- a partner and an internal client removed with host A's command line are refused by B at its
  next request, because both hosts name the same ``partners_file`` and ``clients_file``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from lxml import etree

from tests import factories as f
from tests.conftest import POSTGRES_URL, ROOT, LiveNode, _database_url
from tests.repository.test_provide_and_retrieve import documents_of, no_hash_size, provide, retrieve, status_of
from tests.responding.requester import DOCTOR, TREATMENT
from tests.responding.test_responding_gateway import find_documents
from tests.responding.test_trust_boundary import InternalClient
from tests.soapkit import SoapTestClient, _parse
from xds_node.admin import init_keys
from xds_node.config import load_settings
from xds_node.ebxml import vocabulary as v
from xds_node.security.keys import generate_demo_keys, load_key_and_cert
from xds_node.security.saml import RequesterContext, sign_assertion, unsigned_assertion
from xds_node.security.wss import build_security_header
from xds_node.soap.envelope import build_request

pytestmark = [pytest.mark.server, pytest.mark.postgres,
              pytest.mark.skipif(not POSTGRES_URL, reason="two hosts share a PostgreSQL database")]


@dataclass
class Host:
    name: str
    data: Path
    env: dict[str, str]
    live: LiveNode

    @property
    def url(self) -> str:
        return self.live.url

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        """The host's own command line (its data directory and settings), in a process of its own."""
        return subprocess.run([sys.executable, "-m", "xds_node.cli", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=120, env={**os.environ, **self.env, "XDS_DATA_DIR": str(self.data)})


@dataclass
class Hosts:
    a: Host
    b: Host
    shared: Path
    keys: Path
    pid: str

    def keypair(self, name: str) -> tuple:
        """(key, certificate, certificate file) of a signer whose subject is CN=name."""
        key_path, cert_path = generate_demo_keys(self.keys / name, common_name=name)
        return (*load_key_and_cert(key_path, cert_path), cert_path)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    root = tmp_path_factory.mktemp("two-hosts")
    shared, data_a, data_b = root / "shared", root / "host-a", root / "host-b"
    for d in (shared, data_a, data_b):
        d.mkdir()
    url = _database_url("postgres", root)
    env = {"XDS_DATABASE_URL": url, "XDS_PARTNERS_FILE": str(shared / "partners.toml"),
           "XDS_CLIENTS_FILE": str(shared / "clients.toml")}
    settings = load_settings(env=env, data_dir=data_a)
    init_keys(settings)  # node keys in host A's data directory, the demo partner pinned in the shared file
    from xds_node.node import Node

    node = Node(settings)  # schema before either host starts
    pid = f.patient(1600)
    node.close()
    a = LiveNode(data_a, env)
    try:
        b = LiveNode(data_b, env)
    except Exception:
        a.stop()
        raise
    keys = root / "test-keys"
    keys.mkdir()
    yield Hosts(Host("A", data_a, env, a), Host("B", data_b, env, b), shared, keys, pid)
    a.stop()
    b.stop()


def _client(host: Host) -> SoapTestClient:
    return SoapTestClient(base_url=host.url)


# --- documents ---------------------------------------------------------------------------------
def test_a_document_pushed_through_one_host_is_retrieved_through_the_other(hosts):
    pid = f.patient(1601)
    data = b"<ClinicalDocument>pushed to A " + os.urandom(16).hex().encode() + b"</ClinicalDocument>"
    big = os.urandom(6 * 1024 * 1024 + 3)  # streamed chunk by chunk from the database
    sub = no_hash_size(f.submission(pid, 2))
    a, b = _client(hosts.a), _client(hosts.b)
    try:
        reply = provide(a, sub, {sub.documents[0].id: data, sub.documents[1].id: big})
        assert reply.status == v.ResponseStatus.SUCCESS, reply.raw[:800]
        uids = [de.unique_id for de in sub.documents]
        got = retrieve(b, [(None, uid) for uid in uids])
        assert status_of(got) == v.ResponseStatus.SUCCESS, got.raw[:800]
        docs = documents_of(got)
        assert hashlib.sha1(docs[uids[0]]).hexdigest() == hashlib.sha1(data).hexdigest()
        assert hashlib.sha1(docs[uids[1]]).hexdigest() == hashlib.sha1(big).hexdigest()
    finally:
        a.close()
        b.close()
    for host in (hosts.a, hosts.b):  # neither host keeps the bytes on its own disk
        folder = host.data / "documents"
        assert not folder.exists() or not [p for p in folder.rglob("*") if p.is_file()]
    check = hosts.b.cli("fsck", "--json")
    assert check.returncode == 0, check.stdout + check.stderr


# --- a partner's side of the wire -------------------------------------------------------------------
def _header(hosts: Hosts, signer: str, hcid: str) -> etree._Element:
    key, cert, _ = SIGNERS[signer]
    ctx = RequesterContext(subject_id="Dr. Two Hosts", organization=f"{signer} hospital", organization_id=hcid,
                           home_community_id=hcid, role=DOCTOR, purpose_of_use=TREATMENT)
    a = unsigned_assertion(ctx, cert, issuer=cert.subject.rfc4514_string())
    return build_security_header(sign_assertion(a, key, cert), key, cert)


def _iti38(host: Host, security: etree._Element, pid: str):
    payload, ct, _ = build_request(v.Action.ITI38, find_documents(pid), to=host.url + "/xca/query",
                                   headers=[security])
    with httpx.Client(timeout=60) as c:
        return _parse(c.post(host.url + "/xca/query", content=payload, headers={"Content-Type": ct}))


SIGNERS: dict[str, tuple] = {}


def _partner(hosts: Hosts, name: str) -> str:
    """Pin a new partner ``name`` through host A's command line (the shared partners file)."""
    hcid = f"urn:oid:1.3.6.1.4.1.21367.2026.78.{uuid.uuid4().int % 10**9}"
    SIGNERS[name] = hosts.keypair(name)
    added = hosts.a.cli("partners", "add", name, "--cert", str(SIGNERS[name][2]), "--community", hcid)
    assert added.returncode == 0, added.stderr
    return hcid


def _seed_patient(hosts: Hosts, pid: str) -> list[str]:
    """Register a document for ``pid`` through host A (anonymous loopback, as the demo allows)."""
    sub = no_hash_size(f.submission(pid, 1))
    c = _client(hosts.a)
    try:
        assert provide(c, sub, {sub.documents[0].id: b"<doc>" + pid.encode() + b"</doc>"}).status == \
            v.ResponseStatus.SUCCESS
    finally:
        c.close()
    return [de.id for de in sub.documents]


def test_a_security_header_accepted_by_one_host_is_refused_by_the_other(hosts):
    pid = f.patient(1602)
    _seed_patient(hosts, pid)
    assert hosts.a.cli("consent", "grant", pid, "--force").returncode == 0
    hcid = _partner(hosts, "Replay Across Hosts")
    h = _header(hosts, "Replay Across Hosts", hcid)
    first = _iti38(hosts.a, h, pid)
    assert not first.is_fault and first.objects("ExtrinsicObject"), first.raw[:600]
    again = _iti38(hosts.b, h, pid)  # the same header in a new message (new wsa:MessageID)
    assert again.is_fault and "replayed" in again.fault_reason, again.raw[:600]
    assert b"ExtrinsicObject" not in again.raw


def test_consent_revoked_through_one_hosts_cli_holds_on_the_other(hosts):
    pid = f.patient(1603)
    entries = _seed_patient(hosts, pid)
    hcid = _partner(hosts, "Consent Across Hosts")
    assert hosts.a.cli("consent", "grant", pid, "--force").returncode == 0
    reply = _iti38(hosts.b, _header(hosts, "Consent Across Hosts", hcid), pid)
    assert sorted(o.get("id") for o in reply.objects("ExtrinsicObject")) == sorted(entries), reply.raw[:600]
    revoked = hosts.a.cli("consent", "revoke", pid, "--force")
    assert revoked.returncode == 0, revoked.stderr
    reply = _iti38(hosts.b, _header(hosts, "Consent Across Hosts", hcid), pid)  # B's very next request
    assert not reply.is_fault and not reply.objects("ExtrinsicObject")
    assert reply.error_codes == [v.ErrorCode.UNKNOWN_PATIENT_ID]  # exactly as for an unknown patient


def test_a_partner_removed_with_one_hosts_cli_is_refused_by_the_other(hosts):
    pid = f.patient(1604)
    _seed_patient(hosts, pid)
    assert hosts.a.cli("consent", "grant", pid, "--force").returncode == 0
    hcid = _partner(hosts, "Removed Across Hosts")
    reply = _iti38(hosts.b, _header(hosts, "Removed Across Hosts", hcid), pid)
    assert not reply.is_fault and reply.objects("ExtrinsicObject"), reply.raw[:600]
    assert hosts.a.cli("partners", "remove", "Removed Across Hosts").returncode == 0
    reply = _iti38(hosts.b, _header(hosts, "Removed Across Hosts", hcid), pid)
    assert reply.is_fault and b"ExtrinsicObject" not in reply.raw, reply.raw[:600]


def test_an_internal_client_removed_with_one_hosts_cli_is_refused_by_the_other(hosts):
    key_path, cert_path = generate_demo_keys(hosts.keys / "ehr", common_name="Two Hosts EHR")
    key, cert = load_key_and_cert(key_path, cert_path)
    ehr = InternalClient("two-hosts-ehr", key, cert, cert_path, key_path)

    def ask(host: Host):
        c = _client(host)
        try:
            return c.call("/xds/registry", v.Action.ITI18, find_documents(hosts.pid), headers=[ehr.header()])
        finally:
            c.close()

    assert ask(hosts.b).is_fault  # not pinned yet
    assert hosts.a.cli("clients", "add", ehr.name, "--cert", str(cert_path)).returncode == 0
    accepted = ask(hosts.b)
    assert not accepted.is_fault and accepted.status == v.ResponseStatus.SUCCESS, accepted.raw[:600]
    assert hosts.a.cli("clients", "remove", ehr.name).returncode == 0
    refused = ask(hosts.b)
    assert refused.is_fault and b"FailedAuthentication" in refused.raw, refused.raw[:600]
