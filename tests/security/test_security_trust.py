"""Partners file (TOML) round trip, pinned lookups, and the demo key helpers."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from xds_node.security.keys import generate_demo_keys, load_key_and_cert
from xds_node.security.trust import Partner, TrustStore, fingerprint


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory):
    d: Path = tmp_path_factory.mktemp("trustkeys")
    a = generate_demo_keys(d, common_name="VA Gateway")
    b = generate_demo_keys(d, common_name="Mercy Hospital")
    return d, a, b


def test_generate_demo_keys(material):
    _, (key_path, cert_path), _ = material
    assert key_path.name == "va-gateway.key.pem" and cert_path.name == "va-gateway.cert.pem"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key, cert = load_key_and_cert(key_path, cert_path)
    assert key.key_size == 2048
    assert cert.subject.rfc4514_string() == "CN=VA Gateway"


def test_load_key_and_cert_rejects_mismatch(material):
    _, (key_a, _), (_, cert_b) = material
    with pytest.raises(ValueError):
        load_key_and_cert(key_a, cert_b)


def test_toml_round_trip(material, tmp_path):
    _, (_, cert_a), (_, cert_b) = material
    rel = Path("certs") / "va.pem"
    (tmp_path / "certs").mkdir()
    (tmp_path / rel).write_bytes(cert_a.read_bytes())
    inline = cert_b.read_text()
    (tmp_path / "partners.toml").write_text(
        f"""
[[partner]]
name = "VA"
home_community_id = "2.16.840.1.113883.4.349"
certificates = ["{rel.as_posix()}"]
retrieve_batch_size = 20
[partner.endpoints]
ITI-38 = "https://va.example/xca/query"
"ITI-39 retrieve" = "https://va.example/xca/retrieve"

[[partner]]
name = "Mercy \\"Hospital\\""
home_community_id = "urn:oid:1.3.6.1.4.1.21367.2026.7"
certificates = [\"\"\"
{inline}\"\"\"]
allow_sha1 = true
timeout = 12.5
[partner.options]
note = "line1\\nline2"
limits = {{ max = 3, tags = ["a", "b"] }}
"""
    )
    store = TrustStore.load(tmp_path / "partners.toml")
    va = store.partner("VA")
    assert va.home_community_id == "urn:oid:2.16.840.1.113883.4.349"
    assert va.endpoints == {"ITI-38": "https://va.example/xca/query", "ITI-39 retrieve": "https://va.example/xca/retrieve"}
    assert va.retrieve_batch_size == 20 and va.allow_sha1 is False and va.timeout == 30.0
    mercy = store.partner('Mercy "Hospital"')
    assert mercy.allow_sha1 is True and mercy.timeout == 12.5
    assert mercy.options == {"note": "line1\nline2", "limits": {"max": 3, "tags": ["a", "b"]}}

    out = tmp_path / "saved" / "partners.toml"
    out.parent.mkdir()
    store.save(out)
    again = TrustStore.load(out)
    assert [(p.name, p.home_community_id, p.endpoints, p.allow_sha1, p.retrieve_batch_size, p.timeout, p.options,
             p.fingerprints) for p in again.partners()] == [
        (p.name, p.home_community_id, p.endpoints, p.allow_sha1, p.retrieve_batch_size, p.timeout, p.options,
         p.fingerprints) for p in store.partners()
    ]


def test_lookups_are_pinned(material):
    a = load_key_and_cert(*material[1])[1]
    b = load_key_and_cert(*material[2])[1]
    store = TrustStore([Partner("VA", "urn:oid:2.16.840.1.113883.4.349", [a])])
    assert store.partner_for_certificate(a).name == "VA"
    assert store.partner_for_certificate(a.public_bytes(Encoding.PEM)).name == "VA"
    assert store.partner_for_certificate(a.public_bytes(Encoding.DER)).name == "VA"
    assert store.partner_for_certificate(b) is None
    assert store.partner_for_fingerprint(fingerprint(a).upper()).name == "VA"
    assert store.partner_for_community("2.16.840.1.113883.4.349").name == "VA"
    assert store.partner_for_community("urn:oid:2.16.840.1.113883.4.349").name == "VA"
    assert store.partner_for_community("urn:oid:1.2.3") is None


def test_duplicates_rejected(material):
    a = load_key_and_cert(*material[1])[1]
    b = load_key_and_cert(*material[2])[1]
    store = TrustStore([Partner("VA", "1.2.3", [a])])
    with pytest.raises(ValueError):
        store.add(Partner("Other", "1.2.4", [a]))  # one certificate, one partner
    with pytest.raises(ValueError):
        store.add(Partner("Other", "urn:oid:1.2.3", [b]))
    with pytest.raises(ValueError):
        store.add(Partner("VA", "1.2.5", [b]))
    store.add(Partner("Other", "1.2.4", [b]))
    store.remove("VA")
    assert store.partner_for_certificate(a) is None and store.partner_for_community("1.2.3") is None


def test_unknown_keys_rejected(tmp_path):
    (tmp_path / "p.toml").write_text('[[partner]]\nname = "x"\nhome_community_id = "1.2"\nallow_sha = true\n')
    with pytest.raises(ValueError):
        TrustStore.load(tmp_path / "p.toml")


def test_a_partner_name_longer_than_the_replay_state_holds_is_refused_when_configured():
    """Replay state is keyed by the partner's name (200 characters): a longer name would make every
    group-commit round its messages join fail, other partners' requests with them."""
    assert Partner("x" * 200, "1.2.3", []).name
    with pytest.raises(ValueError, match="longer than 200"):
        Partner("x" * 201, "1.2.3", [])
