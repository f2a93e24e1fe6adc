"""Patient consent: append-only history, the directive in effect at an instant, the cached policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from xds_node.db import make_engine, metadata
from xds_node.security.consent import (
    ConsentPolicy,
    ConsentStore,
    consent_directives,
    format_history,
)

PID = "123^^^&1.2.3&ISO"
OTHER = "456^^^&1.2.3&ISO"
T0 = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


def days(n: float) -> timedelta:
    return timedelta(days=n)


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path}/x.db")
    metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def store(engine):
    return ConsentStore(engine)


def test_never_when_nothing_recorded(store):
    st = store.status(PID)
    assert st.state == "never"
    assert st.directive is None
    assert store.history(PID) == []


def test_grant_then_revoke_then_regrant(store):
    g = store.grant(PID, source="paper form", effective_from=T0, recorded_by="clerk1", note="VA 10-0485")
    assert g.kind == "opt-in" and g.patient_id == PID and g.effective_from == T0
    assert store.status(PID, T0 - days(1)).state == "never"
    st = store.status(PID, T0 + days(1))
    assert st.state == "granted" and st.directive.id == g.id

    r = store.revoke(PID, source="online", effective_from=T0 + days(10))
    assert store.status(PID, T0 + days(5)).state == "granted"  # revocation not yet effective
    st = store.status(PID, T0 + days(11))
    assert st.state == "revoked" and st.directive.id == r.id

    g2 = store.grant(PID, source="in person", effective_from=T0 + days(20))
    st = store.status(PID, T0 + days(21))
    assert st.state == "granted" and st.directive.id == g2.id
    # the past is still answered from history
    assert store.status(PID, T0 + days(15)).state == "revoked"
    # other patients are unaffected
    assert store.status(OTHER, T0 + days(21)).state == "never"


def test_future_grant_is_not_in_effect_yet(store):
    now = datetime.now(UTC)
    store.grant(PID, source="online", effective_from=now + days(3))
    assert store.status(PID).state == "never"
    assert store.status(PID, now + days(4)).state == "granted"


def test_expired_grant_is_not_granted(store):
    g = store.grant(PID, source="paper form", effective_from=T0, effective_until=T0 + days(30))
    assert store.status(PID, T0 + days(29)).state == "granted"
    st = store.status(PID, T0 + days(30))  # until is exclusive
    assert st.state == "expired" and st.directive.id == g.id


def test_open_grant_behind_an_expired_one_still_counts(store):
    store.grant(PID, source="paper form", effective_from=T0)
    store.grant(PID, source="online", effective_from=T0 + days(1), effective_until=T0 + days(2))
    # the later, time-limited grant lapsed; the earlier open-ended one is still in effect
    assert store.status(PID, T0 + days(3)).state == "granted"


def test_same_effective_time_latest_recorded_wins(store):
    store.grant(PID, source="paper form", effective_from=T0)
    store.revoke(PID, source="paper form", effective_from=T0)
    assert store.status(PID, T0 + days(1)).state == "revoked"


def test_naive_datetimes_are_utc(store):
    store.grant(PID, source="online", effective_from=datetime(2024, 1, 1, 12, 0))
    assert store.status(PID, datetime(2024, 1, 1, 11, 59)).state == "never"
    assert store.status(PID, datetime(2024, 1, 1, 12, 0)).state == "granted"


def test_history_is_append_only_and_ordered(store, engine):
    store.grant(PID, source="online", effective_from=T0 + days(5), note="second")
    store.grant(PID, source="paper form", effective_from=T0, note="first")
    store.revoke(PID, source="in person", effective_from=T0 + days(9), note="third")
    store.grant(OTHER, source="imported", effective_from=T0)
    hist = store.history(PID)
    assert [d.note for d in hist] == ["first", "second", "third"]
    assert [d.kind for d in hist] == ["opt-in", "opt-in", "revoke"]
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(consent_directives)).scalar_one() == 4


def test_validation(store):
    with pytest.raises(ValueError):
        store.grant("", source="online")
    with pytest.raises(ValueError):
        store.grant(PID, source="  ")
    with pytest.raises(ValueError):
        store.grant(PID, source="online", effective_from=T0, effective_until=T0)
    assert store.history(PID) == []


def test_opt_in_policy_allows_only_granted(store):
    policy = ConsentPolicy(store, "opt-in")
    assert not policy.allows(PID)
    store.grant(PID, source="online", effective_from=T0)
    assert policy.allows(PID)
    store.revoke(PID, source="online")
    assert not policy.allows(PID)
    assert not policy.allows("")


def test_opt_out_policy_allows_unless_revoked(store):
    policy = ConsentPolicy(store, "opt-out")
    assert policy.allows(PID)  # never recorded
    store.grant(OTHER, source="online", effective_from=T0, effective_until=T0 + days(1))
    assert policy.allows(OTHER)  # expired grant is not a revocation
    store.revoke(PID, source="paper form")
    assert not policy.allows(PID)


def test_policy_at_a_past_instant(store):
    policy = ConsentPolicy(store)
    store.grant(PID, source="online", effective_from=T0)
    store.revoke(PID, source="online", effective_from=T0 + days(10))
    assert policy.allows(PID, T0 + days(1))
    assert not policy.allows(PID, T0 + days(11))


def test_allows_any_and_filter(store):
    policy = ConsentPolicy(store)
    store.grant(OTHER, source="online", effective_from=T0)
    assert policy.allows_any([PID, OTHER])
    assert not policy.allows_any([PID])
    assert not policy.allows_any([])
    assert policy.filter_allowed([PID, OTHER]) == [OTHER]


def test_purpose_limited_grant(store):
    policy = ConsentPolicy(store)
    store.grant(PID, source="paper form", effective_from=T0, purposes=["TREATMENT"])
    assert policy.allows(PID, purpose="TREATMENT")
    assert not policy.allows(PID, purpose="PAYMENT")
    assert store.history(PID)[0].purposes == ("TREATMENT",)


def test_cache_invalidated_by_grant_and_revoke_in_process(store):
    calls = []
    real_status = store.status

    def counting(patient_id, at=None):
        calls.append(patient_id)
        return real_status(patient_id, at)

    store.status = counting  # type: ignore[method-assign]
    policy = ConsentPolicy(store, ttl=3600)
    assert not policy.allows(PID)
    assert not policy.allows(PID)
    assert calls == [PID]  # second decision came from the cache
    store.grant(PID, source="online", effective_from=T0)
    assert policy.allows(PID)  # invalidated: re-read
    assert calls == [PID, PID]
    store.revoke(PID, source="online")
    assert not policy.allows(PID)
    assert calls == [PID, PID, PID]


def test_cache_is_bypassed_by_another_store_until_ttl(engine):
    # a grant recorded by another process (another store) is seen once the entry expires
    writer = ConsentStore(engine)
    reader = ConsentStore(engine)
    stale = ConsentPolicy(reader, ttl=3600)
    fresh = ConsentPolicy(reader, ttl=0)
    assert not stale.allows(PID) and not fresh.allows(PID)
    writer.grant(PID, source="online", effective_from=T0)
    assert not stale.allows(PID)  # cached within its TTL
    assert fresh.allows(PID)
    stale.invalidate()
    assert stale.allows(PID)


def test_cache_is_bounded(store):
    policy = ConsentPolicy(store, max_entries=3)
    for i in range(10):
        policy.allows(f"{i}^^^&1.2.3&ISO")
    assert len(policy._cache) == 3


def test_mode_is_checked(store):
    with pytest.raises(ValueError):
        ConsentPolicy(store, "maybe")  # type: ignore[arg-type]


def test_format_history(store):
    assert "no consent" in format_history([])
    store.grant(PID, source="paper form", effective_from=T0, recorded_by="clerk1", note="VA form")
    store.revoke(PID, source="online", effective_from=T0 + days(3))
    text = format_history(store.history(PID), at=T0 + days(1))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["#", "kind", "effective"]
    assert "opt-in" in lines[2] and "paper form" in lines[2] and "clerk1" in lines[2]
    assert "revoke" in lines[3] and "2024-01-04 12:00:00Z" in lines[3]
    assert lines[-1].startswith(f"patient {PID}: granted")
