"""Per-partner progress events of the initiating gateway (xds_node.gateway.progress): the same fan-out
as test_gateway_unit (partners simulated with httpx.MockTransport), followed as an async iterator."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.gateway.test_gateway_unit import (
    ALEX,
    ALEX_HERE,
    CTX,
    LOCAL,
    S,
    World,
    _index,
    correlate,
    hcid,
    query_answer,
    retrieve_answer,
    run,
    xcpd_answer,
)
from xds_node.ebxml import xdsb
from xds_node.gateway.progress import Finished, PartnerEvent, follow
from xds_node.security.keys import generate_demo_keys, load_key_and_cert


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return load_key_and_cert(*generate_demo_keys(tmp_path_factory.mktemp("keys"), common_name="VA gateway"))


async def _collect(transaction, start):
    events, finished = [], None
    async for item in follow(transaction, start):
        if isinstance(item, Finished):
            finished = item
        else:
            events.append(item)
    return events, finished


def _by_partner(events):
    out: dict[str, list[str]] = {}
    for e in events:
        out.setdefault(e.partner, []).append(e.kind)
    return out


def test_query_events_start_then_end_per_partner_and_are_snapshots(keys, tmp_path):
    world = World(keys, {"good": query_answer(S.SUCCESS, 2, home=hcid("good")),
                         "slow": lambda m: httpx.ReadTimeout("slow"),
                         "down": lambda m: httpx.ConnectError("refused")}, tmp=tmp_path)
    correlate(world, ["good", "slow", "down"])
    events, finished = run(_collect("ITI-38", lambda p: world.gw.query(LOCAL.cx, CTX, progress=p)))
    assert _by_partner(events) == {"good": ["started", "answered"], "slow": ["started", "timeout"],
                                   "down": ["started", "failed"]}
    final = {e.partner: e for e in events if e.done}
    assert final["good"].count == 2 and final["good"].transaction == "ITI-38"
    assert "did not answer in time" in final["slow"].detail
    assert "could not be reached" in final["down"].detail
    # a "started" event keeps saying started although the outcome object moved on
    assert all(not e.done and e.seconds == 0 for e in events if e.kind == "started")
    assert finished.error is None and finished.result.status == S.PARTIAL_SUCCESS
    assert PartnerEvent.of(finished.result.partners[0], "ITI-38").to_dict()["transaction"] == "ITI-38"


def test_discover_and_retrieve_events(keys, tmp_path):
    world = World(keys, {"a": xcpd_answer(None), "b": lambda m: httpx.ConnectError("x")}, tmp=tmp_path,
                  patients=_index(tmp_path, ALEX_HERE))
    events, finished = run(_collect("ITI-55", lambda p: world.gw.discover(ALEX, CTX, local_patient_id=LOCAL.cx,
                                                                          progress=p)))
    assert _by_partner(events) == {"a": ["started", "answered"], "b": ["started", "failed"]}
    assert [e.detail for e in events if e.partner == "a" and e.done] == ["not found"]
    assert finished.result.status == S.PARTIAL_SUCCESS

    store = {"1.1": b"<a/>", "1.2": b"<b/>"}
    world = World(keys, {"r": retrieve_answer(store, hcid("r"), "1.9")}, tmp=tmp_path)
    refs = [xdsb.DocumentRequest("1.9", uid, hcid("r")) for uid in store]
    events, finished = run(_collect("ITI-39", lambda p: world.gw.retrieve(refs, CTX, progress=p)))
    assert [(e.kind, e.count) for e in events] == [("started", 0), ("answered", 2)]
    assert sorted(d.document_unique_id for d in finished.result.documents) == ["1.1", "1.2"]


def test_refusal_without_consent_has_no_partner_events(keys, tmp_path):
    from tests.gateway.test_gateway_unit import consent_policy

    world = World(keys, {"a": query_answer(S.SUCCESS, 1)}, tmp=tmp_path, consent=consent_policy(tmp_path))
    correlate(world, ["a"])
    events, finished = run(_collect("ITI-38", lambda p: world.gw.query(LOCAL.cx, CTX, progress=p)))
    assert events == [] and finished.result.refused and world.messages == []


def test_an_exception_of_the_operation_arrives_as_finished_error():
    async def boom(progress):
        raise ValueError("a patient id is required for this query")

    events, finished = run(_collect("ITI-38", boom))
    assert events == [] and isinstance(finished.error, ValueError)


def test_a_follower_that_leaves_does_not_cancel_the_partners_calls(keys, tmp_path):
    answered: list[str] = []
    good = query_answer(S.SUCCESS, 1, home=hcid("a"))

    async def main():
        world = World(keys, {"a": lambda m: good(m), "b": lambda m: good(m)}, tmp=tmp_path)
        correlate(world, ["a", "b"])

        async def start(progress):
            def spy(outcome):
                progress(outcome)
                if outcome.state == "answered":
                    answered.append(outcome.partner)
            return await world.gw.query(LOCAL.cx, CTX, progress=spy)

        agen = follow("ITI-38", start)
        first = await agen.__anext__()  # one event, then the follower goes away
        await agen.aclose()
        assert isinstance(first, PartnerEvent)
        for _ in range(200):  # the operation goes on by itself
            if len(answered) == 2:
                break
            await asyncio.sleep(0.01)
        return world

    world = run(main())
    assert sorted(answered) == ["a", "b"] and len(world.messages) == 2
