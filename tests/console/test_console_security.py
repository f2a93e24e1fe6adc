"""The console's security rules over real sockets: login and logout, CSRF refusal (login
included), the Content-Security-Policy, role restrictions enforced on the server (direct URLs
too), session cookies, the partner-facing port knowing nothing of the console, login lockout."""

from __future__ import annotations

import httpx
import pytest

from tests.console.conftest import PASSWORDS, csrf_of, login_http

pytestmark = pytest.mark.server

#: Which role may open which page (the README's roles table): True = 200, False = 403.
ACCESS = {
    "/dashboard": {"administrator", "privacy-officer", "operator"},
    "/patients": {"administrator", "privacy-officer", "registrar", "clinician-support"},
    "/accounting": {"administrator", "privacy-officer"},
    "/audit": {"administrator", "privacy-officer", "operator"},
    "/partners": {"administrator", "operator"},
    "/conformance": {"administrator", "operator"},
    "/users": {"administrator"},
}


def test_login_page_sets_strict_headers_and_cookie(console_node):
    reply = httpx.get(console_node.console + "/login")
    assert reply.status_code == 200
    csp = reply.headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'" and "unsafe" not in csp
    assert directives["frame-ancestors"] == "'none'" and directives["form-action"] == "'self'"
    assert reply.headers["x-frame-options"] == "DENY"
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["cache-control"] == "no-store"
    cookie = reply.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie  # plain HTTP here
    assert "<script" not in reply.text and " style=" not in reply.text


def test_login_logout(console_node):
    client = login_http(console_node.console, "administrator")
    cookie = next(c for c in client.cookies.jar if c.name == "xds_console")
    assert cookie.has_nonstandard_attr("HttpOnly")
    page = client.get("/dashboard")
    assert page.status_code == 200 and "Dashboard" in page.text
    out = client.post("/logout", data={"csrf": csrf_of(page.text)})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    # the old session cookie is dead on the server, not just deleted in this client
    again = httpx.get(console_node.console + "/dashboard", cookies={"xds_console": cookie.value})
    assert again.status_code == 303 and again.headers["location"].startswith("/login")


def test_wrong_password_is_refused(console_node):
    with httpx.Client(base_url=console_node.console) as client:
        page = client.get("/login")
        reply = client.post("/login", data={"csrf": csrf_of(page.text), "name": "operator", "password": "nope"})
        assert reply.status_code == 401 and "Wrong user name or password" in reply.text
        assert "xds_console=" not in reply.headers.get("set-cookie", "")


@pytest.mark.parametrize("token", [None, "", "0" * 64, "not-hex"], ids=["missing", "empty", "wrong", "garbage"])
def test_login_without_valid_csrf_token_is_403_before_the_password_is_checked(console_node, token):
    with httpx.Client(base_url=console_node.console) as client:
        client.get("/login")  # has the pre-session cookie, but not the token
        data = {"name": "administrator", "password": PASSWORDS["administrator"]}
        if token is not None:
            data["csrf"] = token
        reply = client.post("/login", data=data)
        assert reply.status_code == 403
        assert "xds_console=" not in reply.headers.get("set-cookie", "")


def test_login_token_from_another_browser_is_refused(console_node):
    with httpx.Client(base_url=console_node.console) as attacker, httpx.Client(base_url=console_node.console) as victim:
        token = csrf_of(attacker.get("/login").text)
        victim.get("/login")
        reply = victim.post("/login", data={"csrf": token, "name": "administrator",
                                            "password": PASSWORDS["administrator"]})
        assert reply.status_code == 403


def test_post_without_csrf_is_refused_when_logged_in(console_node, http_as):
    client = http_as("administrator")
    reply = client.post("/logout", data={})
    assert reply.status_code == 403
    assert client.get("/dashboard").status_code == 200  # still logged in: nothing was done
    reply = client.post("/logout", data={"csrf": "f" * 64})
    assert reply.status_code == 403


@pytest.mark.parametrize("role", ["administrator", "privacy-officer", "registrar", "operator", "clinician-support"])
def test_each_role_opens_only_its_pages(console_node, http_as, role):
    client = http_as(role)
    for path, allowed in ACCESS.items():
        reply = client.get(path)
        expected = 200 if role in allowed else 403
        assert reply.status_code == expected, f"{role} {path}: {reply.status_code}"
        if expected == 200:
            assert f'href="{path}"' in reply.text  # shown in the navigation exactly when allowed
    nav = client.get(next(p for p, r in ACCESS.items() if role in r)).text
    for path, allowed in ACCESS.items():
        assert (f'href="{path}"' in nav) == (role in allowed), f"{role} nav {path}"


def test_not_logged_in_redirects_to_login(console_node):
    for path in ACCESS:
        reply = httpx.get(console_node.console + path)
        assert reply.status_code == 303 and reply.headers["location"].startswith("/login?next=")


def test_partner_facing_port_knows_nothing_of_the_console(console_node):
    for path in ("/", "/login", "/dashboard", "/console", "/console/login", "/static/console.css", "/patients"):
        assert httpx.get(console_node.url + path).status_code == 404, path
    assert httpx.post(console_node.url + "/login", data={"name": "x"}).status_code in (404, 405, 415)


def test_next_parameter_cannot_leave_the_site(console_node):
    for target in ("https://evil.example/", "//evil.example/", "/\\evil.example"):
        with httpx.Client(base_url=console_node.console) as client:
            page = client.get("/login")
            reply = client.post("/login", data={"csrf": csrf_of(page.text), "name": "operator",
                                                "password": PASSWORDS["operator"], "next": target})
            assert reply.status_code == 303 and reply.headers["location"] == "/"


def test_session_cookie_changes_at_login(console_node):
    """Session fixation: a cookie planted before login is not the one that is logged in."""
    with httpx.Client(base_url=console_node.console) as client:
        client.cookies.set("xds_console", "planted-by-attacker", domain="127.0.0.1")
        page = client.get("/login")
        reply = client.post("/login", data={"csrf": csrf_of(page.text), "name": "operator",
                                            "password": PASSWORDS["operator"]})
        assert reply.status_code == 303
        values = [c.value for c in client.cookies.jar if c.name == "xds_console"]
        assert values and "planted-by-attacker" not in values


def test_console_runs_beside_several_workers(tmp_path):
    """`serve --workers 2`: one console process on its own port; its sessions are database rows, so a
    logout holds whichever process answers; the SOAP port still knows nothing of it."""
    from tests.conftest import LiveNode, free_port
    from xds_node.config import load_settings
    from xds_node.console.auth import UserStore
    from xds_node.node import Node

    node = Node(load_settings(env={}, data_dir=tmp_path))
    UserStore(node.engine).add("op", "operator", PASSWORDS["operator"])
    node.close()
    port = free_port()
    live = LiveNode(tmp_path, {"XDS_CONSOLE_ENABLED": "true", "XDS_CONSOLE_PORT": str(port)}, ["--workers", "2"])
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(50):
            try:
                if httpx.get(base + "/login", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                import time

                time.sleep(0.1)
        client = login_http(base, "op", PASSWORDS["operator"])
        assert client.get("/dashboard").status_code == 200
        assert httpx.get(live.url + "/dashboard").status_code == 404
        client.close()
    finally:
        live.stop()
