"""The shared replay store, the partners file followed while running, and identity rules, below HTTP
(the live tests in test_trust_boundary_live.py drive the same through real servers)."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta

import pytest

from xds_node.db import make_engine
from xds_node.security.filewatch import WatchedFile, atomic_write
from xds_node.security.keys import generate_demo_keys, load_key_and_cert
from xds_node.security.replay import DatabaseReplayStore, MemoryReplayStore, ReplayKey, ReplayRefused
from xds_node.security.trust import Partner, TrustStore, same_name, valid_hcid

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def keys_for(message: str, minutes: int = 5) -> list[ReplayKey]:
    return [ReplayKey(f"sig:{message}", NOW + timedelta(minutes=minutes)),
            ReplayKey(f"ts:{message}", NOW + timedelta(minutes=minutes))]


@pytest.fixture(params=["database", "memory"])
def make_store(request, settings):
    """A factory of stores; database stores made by it share one database (two workers/hosts)."""
    engines = []

    def make(**kw):
        if request.param == "memory":
            return MemoryReplayStore(**kw)
        engine = make_engine(settings.db_url)
        engines.append(engine)
        store = DatabaseReplayStore(engine, **kw)
        store.create_schema()
        return store

    yield make
    for e in engines:
        e.dispose()


def test_a_message_is_admitted_once_and_a_resend_only_when_byte_identical(make_store):
    store = make_store(resend_window=120, max_resends=2)
    assert store.admit("p", keys_for("m1"), "digest-1", NOW) is False
    with pytest.raises(ReplayRefused, match="replayed"):  # same header, other body
        store.admit("p", keys_for("m1"), "digest-2", NOW)
    with pytest.raises(ReplayRefused, match="replayed"):  # no digest known: never a resend
        store.admit("p", keys_for("m1"), None, NOW)
    assert store.admit("p", keys_for("m1"), "digest-1", NOW + timedelta(seconds=60)) is True
    assert store.admit("p", keys_for("m1"), "digest-1", NOW + timedelta(seconds=61)) is True
    with pytest.raises(ReplayRefused):  # max_resends reached
        store.admit("p", keys_for("m1"), "digest-1", NOW + timedelta(seconds=62))
    assert store.admit("p", keys_for("m2"), "digest-1x", NOW) is False
    with pytest.raises(ReplayRefused):  # outside the window
        store.admit("p", keys_for("m2"), "digest-1x", NOW + timedelta(seconds=121))


def test_resends_off_with_a_zero_window(make_store):
    store = make_store(resend_window=0)
    store.admit("p", keys_for("m"), "d", NOW)
    with pytest.raises(ReplayRefused):
        store.admit("p", keys_for("m"), "d", NOW)


def test_partial_overlap_is_a_replay(make_store):
    store = make_store()
    store.admit("p", keys_for("m"), "d", NOW)
    with pytest.raises(ReplayRefused):  # the same signature under a new Timestamp
        store.admit("p", [keys_for("m")[0], ReplayKey("ts:other", NOW + timedelta(minutes=5))], "d", NOW)


def test_quota_is_per_partner_and_freed_by_expiry(make_store):
    store = make_store(quota=6)
    for i in range(3):
        store.admit("flood", keys_for(f"f{i}", minutes=1 + i), f"d{i}", NOW)
    with pytest.raises(ReplayRefused, match="quota"):
        store.admit("flood", keys_for("f3"), "d3", NOW)
    with pytest.raises(ReplayRefused, match="quota"):  # refused again without recounting
        store.admit("flood", keys_for("f4"), "d4", NOW + timedelta(seconds=30))
    for i in range(3):  # another partner is untouched, and its entries are kept
        store.admit("calm", keys_for(f"c{i}"), f"c{i}", NOW)
    with pytest.raises(ReplayRefused, match="replayed"):
        store.admit("calm", keys_for("c0"), "other", NOW)
    # the flooder's first message expires: room for one more, not two
    later = NOW + timedelta(minutes=1, seconds=1)
    store.admit("flood", keys_for("f5", minutes=10), "d5", later)
    with pytest.raises(ReplayRefused, match="quota"):
        store.admit("flood", keys_for("f6", minutes=10), "d6", later)


def test_two_stores_on_one_database_share_every_decision(settings):
    """Two processes (workers or hosts) on one database: what one admitted, the other refuses."""
    engines = [make_engine(settings.db_url) for _ in range(2)]
    try:
        a, b = (DatabaseReplayStore(e, quota=4) for e in engines)
        a.create_schema()
        a.admit("p", keys_for("m"), "d", NOW)
        with pytest.raises(ReplayRefused, match="replayed"):
            b.admit("p", keys_for("m"), "other body", NOW)
        assert b.admit("p", keys_for("m"), "d", NOW) is True  # a resend, whichever worker gets it
        b.admit("p", keys_for("n"), "e", NOW)
        with pytest.raises(ReplayRefused, match="quota"):
            a.admit("p", keys_for("o"), "f", NOW)
        assert a.live_entries("p", NOW) == 4 and a.live_entries("p", NOW + timedelta(minutes=6)) == 0
    finally:
        for e in engines:
            e.dispose()


# --- the partners file --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    return {n: load_key_and_cert(*generate_demo_keys(d / n, common_name=n))[1] for n in ("one", "two")}


def test_watched_partners_file_follows_changes_and_keeps_the_last_good(tmp_path, certs, caplog):
    path = tmp_path / "partners.toml"
    TrustStore([Partner("one", communities=["1.2.3", "1.2.4"], certificates=[certs["one"]])]).save(path)
    store = TrustStore.watching(path)
    assert store.partner_for_community("urn:oid:1.2.4").name == "one"
    assert store.partner_for_certificate(certs["two"]) is None

    TrustStore([Partner("one", communities=["1.2.3"], certificates=[certs["one"]]),
                Partner("two", communities=["1.2.5"], certificates=[certs["two"]])]).save(path)
    assert store.partner_for_certificate(certs["two"]).name == "two"
    assert store.partner_for_community("1.2.4") is None

    good = path.read_bytes()
    with caplog.at_level(logging.ERROR, logger="xds_node.security.filewatch"):
        atomic_write(path, good.replace(b"[[partner]]", b"[[partner", 1))
        for _ in range(3):
            assert store.partner_for_certificate(certs["two"]).name == "two"
    assert len([r for r in caplog.records if "not valid" in r.message]) == 1  # once per change, not per call
    path.write_bytes(b"")  # truncated by an editor about to write: not "trust nobody"
    assert store.partner_for_certificate(certs["two"]).name == "two"

    os.unlink(path)  # no file: nobody is trusted
    assert store.partners() == []
    with pytest.raises(TypeError):  # a watched store is changed through its file only
        store.add(Partner("x", "1.2.9"))


def test_watched_file_is_generic(tmp_path):
    """The same mechanism serves any file (clients.toml): loader and empty value are parameters."""
    path = tmp_path / "clients.toml"
    watched = WatchedFile(path, lambda p: p.read_text().split(), empty=list, what="clients file")
    assert watched.get() == []
    atomic_write(path, b"a b")
    atomic_write(path, b"a c")  # within one mtime tick: the rename's new inode still shows it
    assert watched.get() == ["a", "c"]


def test_legacy_single_community_is_still_read(tmp_path, certs):
    from cryptography.hazmat.primitives.serialization import Encoding

    pem = certs["one"].public_bytes(Encoding.PEM).decode()
    path = tmp_path / "partners.toml"
    path.write_text(f'[[partner]]\nname = "old"\nhome_community_id = "urn:oid:1.2.3"\ncertificates = ["""{pem}"""]\n')
    p = TrustStore.load(path).partner("old")
    assert p.communities == ["urn:oid:1.2.3"] and p.home_community_id == "urn:oid:1.2.3"


@pytest.mark.parametrize("bad", ["", "urn:oid:", "1", "1.2.x", "3.1.2", "1..2", "1.02", "urn:oid:1.2 3", "x" * 90])
def test_community_must_be_an_oid(bad):
    with pytest.raises(ValueError):
        valid_hcid(bad)


def test_issuer_names_compare_as_dns():
    assert same_name("CN=Partner A, O=Acme", "cn=partner a,o=ACME")
    assert same_name("CN=Partner  A", "CN=Partner A")
    assert not same_name("CN=A,O=B", "O=B,CN=A")  # RDN order is part of the name
    assert not same_name("CN=Partner A", "CN=Partner B")
    assert same_name("urn:example:issuer", "urn:example:issuer")
    assert not same_name("urn:example:issuer", "URN:example:issuer")


def test_partner_accepts_its_certificate_subject_or_listed_issuers(certs):
    p = Partner("one", communities=["1.2.3"], certificates=[certs["one"]], issuers=["urn:example:idp"])
    assert p.accepts_issuer("CN=one", certs["one"])
    assert p.accepts_issuer("urn:example:idp", certs["one"])
    assert not p.accepts_issuer("CN=two", certs["one"])
    assert not p.accepts_issuer("CN=one", certs["two"])  # the subject of the certificate that signed


def test_a_full_partner_still_gets_its_resend(make_store):
    store = make_store(quota=2)
    store.admit("p", keys_for("m"), "d", NOW)
    with pytest.raises(ReplayRefused, match="quota"):
        store.admit("p", keys_for("n"), "e", NOW)
    assert store.admit("p", keys_for("m"), "d", NOW) is True
    with pytest.raises(ReplayRefused, match="replayed"):
        store.admit("p", keys_for("m"), "other body", NOW)


def test_an_idle_worker_falls_back_to_the_newest_good_version_not_its_own(tmp_path, certs):
    """Partner two is removed while worker B is idle, then the file is broken: B must not go on
    trusting two from its own older copy."""
    path = tmp_path / "partners.toml"
    both = [Partner("one", "1.2.3", [certs["one"]]), Partner("two", "1.2.5", [certs["two"]])]
    TrustStore(both).save(path)
    worker_a, worker_b = TrustStore.watching(path), TrustStore.watching(path)
    assert worker_b.partner_for_certificate(certs["two"]) is not None
    TrustStore(both[:1]).save(path)
    assert worker_a.partner_for_certificate(certs["two"]) is None  # A read the change, B did not
    atomic_write(path, path.read_bytes() + b"\n[[partner\n")
    assert worker_b.partner_for_certificate(certs["two"]) is None
    assert worker_b.partner_for_certificate(certs["one"]).name == "one"
