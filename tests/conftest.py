"""Shared fixtures: a node per test (SQLite, and PostgreSQL when XDS_TEST_POSTGRES_URL is set),
an in-process SOAP client, and a real node process listening on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.soapkit import SoapTestClient
from xds_node.config import load_settings
from xds_node.db import make_test_engine

POSTGRES_URL = os.environ.get("XDS_TEST_POSTGRES_URL", "")
#: Nodes started by tests run without the operator console unless a test asks for it (tests/console):
#: its default port is fixed (8081), and tests run side by side.
os.environ.setdefault("XDS_CONSOLE_ENABLED", "false")
ROOT = Path(__file__).resolve().parents[1]

BACKENDS = ["sqlite", pytest.param("postgres", marks=[
    pytest.mark.postgres,
    pytest.mark.skipif(not POSTGRES_URL, reason="set XDS_TEST_POSTGRES_URL to run against PostgreSQL"),
])]


def _database_url(backend: str, tmp_path: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    from xds_node.migrations import target_metadata  # every module's tables (console ones too), so all are dropped

    engine = make_test_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    target_metadata().drop_all(engine)
    with engine.begin() as conn:  # the schema version goes with the tables it describes
        conn.exec_driver_sql("DROP TABLE IF EXISTS alembic_version")
    engine.dispose()
    return POSTGRES_URL


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def settings(tmp_path, backend):
    return load_settings(env={}, data_dir=tmp_path, database_url=_database_url(backend, tmp_path))


@pytest.fixture
def node(settings):
    from xds_node.node import Node

    n = Node(settings)
    yield n
    n.close()


@pytest.fixture
def client(node):
    c = SoapTestClient(app=node.app())
    yield c
    c.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveNode:
    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None, args: list[str] | None = None,
                 *, scheme: str = "http", health_client: dict | None = None, port: int | None = None):
        self.port = port or free_port()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        env = {**os.environ, "XDS_DATA_DIR": str(data_dir), **(extra_env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xds_node.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port),
             *(args or [])],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("node exited: " + (self.proc.stdout.read() or b"").decode(errors="replace"))
            try:
                if httpx.get(self.url + "/health", timeout=1, **(health_client or {})).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("node did not start within 30 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def live_node(tmp_path_factory):
    n = LiveNode(tmp_path_factory.mktemp("live"))
    yield n
    n.stop()


@pytest.fixture
def live_client(live_node):
    c = SoapTestClient(base_url=live_node.url)
    yield c
    c.close()
