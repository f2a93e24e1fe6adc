"""Patient consent: append-only history, the directive in effect at an instant, the policy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from tests.conftest import _database_url
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
def engine(tmp_path, backend):
    engine = make_engine(_database_url(backend, tmp_path))
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


def test_decision_made_by_another_store_is_seen_at_once(engine):
    # no per-process cache: what another process (another store on the same database) records
    # holds for the very next decision of this one
    writer = ConsentStore(engine)
    policy = ConsentPolicy(ConsentStore(engine))
    assert not policy.allows(PID)
    writer.grant(PID, source="online", effective_from=T0)
    assert policy.allows(PID)
    writer.revoke(PID, source="online")
    assert not policy.allows(PID)
    writer.grant(PID, source="online")
    assert policy.allows(PID)


def test_revocation_ends_a_scheduled_grant(store):
    # grant from now+15 s, revoke now: the grant never takes effect, and `show` says revoked
    now = datetime.now(UTC)
    store.grant(PID, source="online", effective_from=now + timedelta(seconds=15))
    r = store.revoke(PID, source="online", effective_from=now)
    later = now + timedelta(seconds=20)
    st = store.status(PID, later)
    assert st.state == "revoked" and st.directive.id == r.id
    assert not ConsentPolicy(store).allows(PID, later)
    assert ConsentPolicy(store, "opt-out").allows(PID, later) is False
    assert format_history(store.history(PID), at=later).splitlines()[-1].startswith(f"patient {PID}: revoked")
    # far in the future too: nothing brings the ended grant back
    assert store.status(PID, now + days(400)).state == "revoked"


def test_revocation_ends_a_time_limited_grant_and_a_later_grant_counts_from_its_start(store):
    store.grant(PID, source="paper form", effective_from=T0, effective_until=T0 + days(100))
    store.grant(PID, source="paper form", effective_from=T0 + days(50))  # scheduled, open-ended
    store.revoke(PID, source="online", effective_from=T0 + days(10))
    for day in (11, 49, 51, 99, 101):
        assert store.status(PID, T0 + days(day)).state == "revoked", day
    assert store.status(PID, T0 + days(5)).state == "granted"  # before the revocation started
    g = store.grant(PID, source="in person", effective_from=T0 + days(60))  # re-opt-in
    assert store.status(PID, T0 + days(59)).state == "revoked"
    st = store.status(PID, T0 + days(61))
    assert st.state == "granted" and st.directive.id == g.id


def test_scheduled_revocation_ends_grants_only_from_its_start(store):
    now = datetime.now(UTC)
    store.grant(PID, source="online", effective_from=now - days(1))
    store.revoke(PID, source="online", effective_from=now + days(1))
    policy = ConsentPolicy(store)
    assert policy.allows(PID)
    assert not policy.allows(PID, now + days(2))


def test_recording_order_is_the_row_id_not_the_clock():
    # a grant recorded after the revocation (higher id) wins even if its host clock ran behind
    from xds_node.security.consent import Directive, status_from

    def d(id_, kind, start, recorded):
        return Directive(id_, PID, kind, start, None, "online", "", recorded, "")

    revoke = d(1, "revoke", T0, T0 + days(2))
    regrant = d(2, "opt-in", T0 + days(1), T0 + days(1))
    assert status_from([revoke, regrant], T0 + days(3)).state == "granted"
    assert status_from([d(1, "opt-in", T0 + days(1), T0 + days(1)), d(2, "revoke", T0, T0)],
                       T0 + days(3)).state == "revoked"


def test_decision_explains_itself(store):
    policy = ConsentPolicy(store)
    assert "not opted in" in policy.decide(PID).reason
    store.grant(PID, source="online", effective_from=T0, purposes=["TREATMENT"])
    assert policy.decide(PID, purpose="TREATMENT")
    refused = policy.decide(PID, purpose="PAYMENT")
    assert not refused and "limited to purpose of use TREATMENT" in refused.reason
    r = store.revoke(PID, source="online")
    refused = policy.decide(PID)
    assert not refused and refused.reason == f"consent revoked (directive #{r.id})"


def test_patient_id_must_be_cx(store):
    for bad in ("VET0002", "VET0002^^^&1.2.3", "VET0002^^^1.2.3&ISO", "^^^&1.2.3&ISO", "VET0002^^^&abc&ISO"):
        with pytest.raises(ValueError, match="CX"):
            store.grant(bad, source="online")
        with pytest.raises(ValueError, match="CX"):
            store.revoke(bad, source="online")
    assert store.grant(" VET0002^^^&1.2.3&ISO ", source="online").patient_id == "VET0002^^^&1.2.3&ISO"


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
