"""Shared console fixtures: a real node process (`xds-node serve`, real sockets) with its console
listener, demo keys, the sample veterans (one opted in), a console user per role; a headless
Chromium driven by Playwright (the machine's own browser: nothing is downloaded); logged-in pages
and logged-in HTTP clients per role.

Other console tests (documents, outside records) reuse these: ``console_node``, ``browser``,
``page_as(role)``, ``http_as(role)``, :func:`csrf_of`, :data:`PASSWORDS`.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, LiveNode, free_port
from xds_node.config import load_settings

SAMPLES = ROOT / "sample_documents"
ROLES = ("administrator", "privacy-officer", "registrar", "operator", "clinician-support")
PASSWORDS = {role: f"console test password for {role}" for role in ROLES}
#: Launch arguments for the system Chromium: headless, no sandbox (containers, root on CI), and no
#: background traffic (updates, sync, safe browsing lists): the test run reaches only our node.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path() -> str | None:
    """The machine's own Chromium: $XDS_TEST_CHROMIUM, else the Debian package's binary."""
    for candidate in (os.environ.get("XDS_TEST_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser"), shutil.which("google-chrome")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert m, "no CSRF token in the page"
    return m.group(1)


@dataclass
class ConsoleNode:
    """A running node: ``url`` partner-facing, ``console`` the console listener."""

    live: LiveNode
    data_dir: Path
    console: str
    patients: list[str]
    granted: str
    documents: dict[str, list[str]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.live.url

    def settings(self):
        return load_settings(env={}, data_dir=self.data_dir)

    def node(self):
        """A Node on the same data (for setting up state the way another process would)."""
        from xds_node.node import Node

        return Node(self.settings())


def make_console_node(data_dir: Path, extra_env: dict[str, str] | None = None) -> ConsoleNode:
    from xds_node.admin import init_keys
    from xds_node.console.auth import UserStore
    from xds_node.node import Node

    node_port = free_port()
    settings = load_settings(env={}, data_dir=data_dir, port=node_port)
    init_keys(settings)  # partner `this-node` (our own key) points at this node: a real signed loopback
    node = Node(settings)
    try:
        node.folder_indexer(SAMPLES).sync()
        with node.engine.connect() as conn:
            from sqlalchemy import select

            from xds_node.registry.tables import documents as docs_table

            rows = conn.execute(select(docs_table.c.patient_id, docs_table.c.unique_id)).all()
        documents: dict[str, list[str]] = {}
        for pid, uid in rows:
            documents.setdefault(pid, []).append(uid)
        patients = sorted(documents)
        granted = patients[0]
        node.consent_store.grant(granted, source="paper form", recorded_by="fixture")
        users = UserStore(node.engine)
        for role in ROLES:
            users.add(role, role, PASSWORDS[role], created_by="fixture")
    finally:
        node.close()
    port = free_port()
    env = {"XDS_CONSOLE_ENABLED": "true", "XDS_CONSOLE_PORT": str(port), **(extra_env or {})}
    live = LiveNode(data_dir, extra_env=env, port=node_port)
    console = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(console + "/login", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            live.stop()
            raise RuntimeError("console did not start within 30 s")
        time.sleep(0.1)
    return ConsoleNode(live, data_dir, console, patients, granted, documents)


@pytest.fixture(scope="module")
def console_node(tmp_path_factory):
    n = make_console_node(tmp_path_factory.mktemp("console"))
    yield n
    n.live.stop()


def login_http(base: str, role: str, password: str | None = None) -> httpx.Client:
    client = httpx.Client(base_url=base, timeout=30, follow_redirects=False)
    page = client.get("/login")
    reply = client.post("/login", data={"csrf": csrf_of(page.text), "name": role,
                                        "password": password or PASSWORDS[role], "next": "/"})
    assert reply.status_code == 303, reply.text[:300]
    return client


@pytest.fixture
def http_as(console_node):
    """``http_as(role)``: an httpx client logged in to the console as that role's user."""
    clients: list[httpx.Client] = []

    def make(role: str) -> httpx.Client:
        c = login_http(console_node.console, role)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


#: Module scope, not session: while Playwright's sync API is started, the main thread has a running
#: event loop, and later tests calling asyncio.run() would fail. Each browser test module starts it
#: and stops it again.
@pytest.fixture(scope="module")
def playwright_instance():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed (pip install -e '.[test]')")
    if chromium_path() is None:
        pytest.skip("no Chromium on this machine: install the Debian package `chromium` "
                    "(apt-get install chromium; .ci/run does) or set XDS_TEST_CHROMIUM")
    pw = sync_playwright().start()
    yield pw
    pw.stop()


@pytest.fixture(scope="module")
def browser(playwright_instance):
    b = playwright_instance.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
    yield b
    b.close()


def login_page(page, base: str, role: str) -> None:
    page.goto(base + "/login")
    page.fill("input[name=name]", role)
    page.fill("input[name=password]", PASSWORDS[role])
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert "/login" not in page.url, page.content()[:500]


@pytest.fixture
def page_as(browser, console_node):
    """``page_as(role)``: a fresh browser context logged in as that role's user; ``page_as(None)``
    a fresh context not logged in. Console errors in the page are collected in ``page.errors``."""
    contexts = []

    def make(role: str | None):
        context = browser.new_context(base_url=console_node.console)
        contexts.append(context)
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda exc: page.errors.append(str(exc)))
        # script errors and policy violations ("Refused to ..."); a 4xx answer's own log line is not one
        page.on("console", lambda msg: page.errors.append(msg.text)
                if msg.type == "error" and not msg.text.startswith("Failed to load resource") else None)
        if role is not None:
            login_page(page, console_node.console, role)
        return page

    yield make
    for c in contexts:
        c.close()
