"""Partner calls through a real forward proxy: two responding gateways of our own (``xds-node serve``
processes on 127.0.0.1; S over HTTPS, P over plain HTTP, both pinning our signing certificate and
holding Alex, who consented) and a CONNECT-capable proxy process (tests/forward_proxy.py) started
here, which records every tunnel and request it carries.

* a signed ITI-38 fan-out reaches S through a CONNECT tunnel (its per-partner ``proxy``, with
  credentials) and P through the proxy named by ``HTTP_PROXY``;
* ``NO_PROXY`` bypasses it; a partner's ``proxy = "direct"`` bypasses it too;
* a dead proxy, a proxy that never answers and a proxy refusing our credentials each cost only
  that partner's answer (PartialSuccess, XDSUnavailableCommunity), promptly, and no message, log
  line or audit row carries the proxy password.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.conftest import LiveNode
from tests.forward_proxy import ProxyProcess
from xds_node.audit.store import audit_events
from xds_node.config import load_settings
from xds_node.ebxml import vocabulary as v
from xds_node.node import Node
from xds_node.security.keys import generate_demo_keys
from xds_node.transactions import ig

pytestmark = pytest.mark.server

SAMPLES = Path(__file__).resolve().parents[2] / "sample_documents"
ALEX = SAMPLES / "alex-testpatient"
ALEX_ID = "VET0001^^^&1.3.6.1.4.1.21367.2026.1.9&ISO"
OURS = "urn:oid:1.3.6.1.4.1.21367.2026.11.1"
HCID = {"S": "urn:oid:1.3.6.1.4.1.21367.2026.11.10", "P": "urn:oid:1.3.6.1.4.1.21367.2026.11.20"}
PROXY_ENV = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy", "ALL_PROXY",
             "all_proxy")
SECRET = "s3cret-proxy-pw"


def _seed(data_dir: Path, name: str, our_cert: Path) -> None:
    node = Node(load_settings(env={}, data_dir=data_dir, home_community_id=HCID[name],
                              repository_unique_id=HCID[name].removeprefix("urn:oid:") + ".2"))
    try:
        report = node.folder_indexer(ALEX).sync()
        assert not report.rejected, report.rejected
        node.consent_store.grant(ALEX_ID, source="test")
    finally:
        node.close()
    (data_dir / "partners.toml").write_text(
        f'[[partner]]\nname = "va-initiating-gateway"\ncommunities = ["{OURS}"]\ncertificates = ["{our_cert}"]\n',
        encoding="utf-8")


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("proxied")
    ours = root / "ours"
    key, cert = generate_demo_keys(ours / "keys", common_name="VA initiating gateway")
    key.replace(ours / "keys" / "node.key.pem")
    cert.replace(ours / "keys" / "node.cert.pem")
    cert = ours / "keys" / "node.cert.pem"
    dirs = {k: root / k for k in HCID}
    for k in HCID:
        _seed(dirs[k], k, cert)
    s_key, s_cert = generate_demo_keys(root / "s-tls", common_name="community S")  # SAN 127.0.0.1

    def start(name: str) -> LiveNode:
        env = {"XDS_HOME_COMMUNITY_ID": HCID[name]}
        if name == "S":
            return LiveNode(dirs[name], extra_env=env, args=["--tls-cert", str(s_cert), "--tls-key", str(s_key)],
                            scheme="https", health_client={"verify": ssl.create_default_context(cafile=str(s_cert))})
        return LiveNode(dirs[name], extra_env=env)

    with ThreadPoolExecutor(2) as pool:
        nodes = dict(zip(HCID, pool.map(start, HCID), strict=True))
    proxy = ProxyProcess(root, "--auth", f"user:{SECRET}", credentials=f"user:{SECRET}")
    hole = ProxyProcess(root, "--blackhole")
    node = Node(load_settings(env={}, data_dir=ours, home_community_id=OURS, organization_name="VA test"))
    node.patients.add_from_cda((ALEX / "ccd-2024.xml").read_bytes())
    node.consent_store.grant(ALEX_ID, source="test")
    for k in HCID:
        node.patients.save_correlation(ALEX_ID, HCID[k], "VET0001", "1.3.6.1.4.1.21367.2026.1.9")
    try:
        yield {"node": node, "nodes": nodes, "proxy": proxy, "hole": hole, "ours": ours, "ca": s_cert}
    finally:
        node.close()
        proxy.stop()
        hole.stop()
        for n in nodes.values():
            n.stop()


def configure(world, *, proxies: dict[str, str | None], timeouts: dict[str, float] | None = None) -> None:
    """Write our partners.toml: S and P, each with ``proxy`` when given (the running node follows the file)."""
    lines = []
    for k in HCID:
        lines += ["[[partner]]", f'name = "community-{k}"', f'communities = ["{HCID[k]}"]',
                  f"timeout = {(timeouts or {}).get(k, 10.0)}"]
        if proxies.get(k):
            lines.append(f'proxy = "{proxies[k]}"')
        lines += ["[partner.endpoints]", f'xca_query = "{world["nodes"][k].url}/xca/query"', ""]
    (world["ours"] / "partners.toml").write_text("\n".join(lines), encoding="utf-8")
    world["proxy"].clear()


def query(world, monkeypatch, env: dict[str, str]):
    """ITI-38 for Alex to every correlated community, with ``env`` as the process environment's proxies."""
    for name in PROXY_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    node = world["node"]
    settings = ig.IgSettings.from_settings(node.settings, env={"XDS_IG_TLS_CA_FILE": str(world["ca"])})

    async def main():
        gateway = ig.build_gateway(node, settings)  # reads the proxy variables now
        try:
            # a guard against a hang, far above every partner timeout: not a timing assertion
            return await asyncio.wait_for(gateway.query(ALEX_ID, settings.requester()), 120)
        finally:
            await gateway.client.aclose()

    return asyncio.run(main())


def homes(result) -> set[str]:
    return {o.get("home") for o in result.objects}


def test_signed_fan_out_goes_through_the_proxy(world, monkeypatch, caplog):
    proxy = world["proxy"]
    configure(world, proxies={"S": proxy.url})  # S: its own proxy (https: CONNECT); P: HTTP_PROXY below
    caplog.set_level(logging.DEBUG)
    result = query(world, monkeypatch, {"HTTP_PROXY": proxy.url})
    assert result.status == v.ResponseStatus.SUCCESS, result.errors
    assert homes(result) == set(HCID.values())  # both answered: each verified our signed assertion
    records = proxy.records()
    s_port, p_port = world["nodes"]["S"].port, world["nodes"]["P"].port
    tunnels = [r for r in records if r["method"] == "CONNECT"]
    assert [t["target"] for t in tunnels] == [f"127.0.0.1:{s_port}"]
    assert all(t["credentials"] and t["authorized"] for t in tunnels)
    forwarded = [r for r in records if r["method"] == "POST"]
    assert [(r["target"], r["action"]) for r in forwarded] == [(f"http://127.0.0.1:{p_port}/xca/query",
                                                               v.Action.ITI38)]
    assert forwarded[0]["credentials"] and forwarded[0]["authorized"]
    assert SECRET not in caplog.text
    assert SECRET not in _audit_text(world)


def test_no_proxy_and_direct_bypass_the_proxy(world, monkeypatch):
    proxy = world["proxy"]
    configure(world, proxies={})
    result = query(world, monkeypatch, {"HTTPS_PROXY": proxy.url, "HTTP_PROXY": proxy.url, "NO_PROXY": "127.0.0.1"})
    assert result.status == v.ResponseStatus.SUCCESS, result.errors
    assert homes(result) == set(HCID.values())
    assert proxy.records() == []
    # without NO_PROXY, a partner marked "direct" still bypasses it; the other goes through it
    configure(world, proxies={"P": "direct"})
    result = query(world, monkeypatch, {"HTTPS_PROXY": proxy.url, "HTTP_PROXY": proxy.url})
    assert result.status == v.ResponseStatus.SUCCESS, result.errors
    assert [r["method"] for r in proxy.records()] == ["CONNECT"]


@pytest.mark.parametrize("failure", ["dead", "hangs", "wrong-password"])
def test_a_failing_proxy_costs_only_that_partners_answer(world, monkeypatch, caplog, failure):
    bad = {"dead": f"http://user:{SECRET}@127.0.0.1:{_dead_port()}",
           "hangs": world["hole"].url.replace("http://", f"http://user:{SECRET}@"),
           "wrong-password": world["proxy"].url.replace(SECRET, SECRET + "-wrong")}[failure]
    configure(world, proxies={"S": bad}, timeouts={"S": 1.0})
    caplog.set_level(logging.DEBUG)
    result = query(world, monkeypatch, {})
    assert result.status == v.ResponseStatus.PARTIAL_SUCCESS
    assert homes(result) == {HCID["P"]}
    (error,) = result.errors
    assert error.code == v.ErrorCode.UNAVAILABLE_COMMUNITY and error.location == HCID["S"]
    outcome = next(o for o in result.partners if o.partner == "community-S")
    assert outcome.state == ("timeout" if failure == "hangs" else "failed")
    for text in (caplog.text, error.context, outcome.detail, _audit_text(world)):
        assert SECRET not in text
    if failure == "wrong-password":
        assert [(r["method"], r["authorized"]) for r in world["proxy"].records()] == [("CONNECT", False)]


def _audit_text(world) -> str:
    with world["node"].engine.connect() as conn:
        rows = conn.execute(select(audit_events)).fetchall()
    return "\n".join(repr(tuple(r)) for r in rows)
