"""Operator safety (issue 11), run the way a person would: the CLI in a subprocess.

* ``demo`` never deletes or writes into a directory it did not create as demo data, and never
  uses the node's data directory or database from the environment.
* ``serve --workers N --config FILE`` runs every worker with the file's settings.
* Database passwords are never printed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 60):
    return subprocess.run([sys.executable, "-m", "xds_node.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout)


def test_demo_refuses_a_directory_it_did_not_create(tmp_path):
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    (node_dir / "registry.db").write_bytes(b"precious")
    done = _cli("demo", "--data-dir", str(node_dir), "--reset", "--port", str(free_port()))
    assert done.returncode == 2
    assert "was not created by `xds-node demo`" in done.stderr
    assert "Traceback" not in done.stderr
    assert (node_dir / "registry.db").read_bytes() == b"precious"


def test_demo_ignores_the_nodes_data_dir_and_database_from_the_environment(tmp_path):
    """XDS_DATA_DIR / XDS_DATABASE_URL name a real node: the demo uses ./xds-demo instead."""
    node_dir = tmp_path / "node"
    node_dir.mkdir()
    (node_dir / "registry.db").write_bytes(b"precious")
    work = tmp_path / "cwd"
    work.mkdir()
    port = free_port()
    env = {"XDS_DATA_DIR": str(node_dir), "XDS_DATABASE_URL": f"sqlite:///{node_dir / 'registry.db'}",
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "xds_node.cli", "demo", "--port", str(port)], cwd=work,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
    finally:
        proc.terminate()
        proc.wait(10)
    assert (node_dir / "registry.db").read_bytes() == b"precious"
    assert sorted(p.name for p in node_dir.iterdir()) == ["registry.db"]
    assert (work / "xds-demo" / "registry.db").exists()
    assert (work / "xds-demo" / ".xds-node-demo").exists()


def test_demo_reset_deletes_only_a_marked_demo_directory(tmp_path):
    import argparse

    from xds_node.cli import DEMO_MARKER, _demo_dir

    demo = tmp_path / "demo"
    made, why = _demo_dir(argparse.Namespace(data_dir=demo, reset=False))
    assert made == demo and not why and (demo / DEMO_MARKER).exists()
    (demo / "stale.txt").write_text("old demo data")
    made, _ = _demo_dir(argparse.Namespace(data_dir=demo, reset=True))
    assert made == demo and not (demo / "stale.txt").exists()

    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("not demo data")
    made, why = _demo_dir(argparse.Namespace(data_dir=other, reset=True))
    assert made is None and "left alone" in why
    assert (other / "keep.txt").exists()


@pytest.mark.server
def test_every_worker_runs_with_the_config_files_settings(tmp_path):
    """``--config FILE serve --workers 2``: a body cap from the file holds on every connection."""
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "data"}"\nmax_body_bytes = 2000\n')
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "xds_node.cli", "--config", str(config), "serve",
                             "--workers", "2", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        up = False
        while time.monotonic() < deadline and not up:
            try:
                up = httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.2)
        assert up, "node did not start"
        statuses = []
        for _ in range(16):  # a fresh connection each time, so both workers take some
            with httpx.Client(timeout=10) as client:
                r = client.post(f"http://127.0.0.1:{port}/xds/registry", content=b"<x/>" * 1000,
                                headers={"content-type": "application/soap+xml"})
                statuses.append(r.status_code)
        assert set(statuses) == {413}, statuses
    finally:
        proc.terminate()
        proc.wait(10)


def test_database_password_is_never_printed(tmp_path):
    env = {"XDS_DATABASE_URL": "postgresql+psycopg://node:s3cret-pw@db.example/xds",
           "XDS_DATA_DIR": str(tmp_path)}
    done = _cli("config", env=env)
    assert done.returncode == 0
    assert "s3cret-pw" not in done.stdout + done.stderr
    assert "node:***@db.example" in done.stdout


@pytest.mark.parametrize(("toml", "words"), [
    ('home_comunity_id = "urn:oid:1.2.3"\n', "unknown setting 'home_comunity_id' (did you mean 'home_community_id'?)"),
    ('port = "eighty"\n', "port = 'eighty' is not valid: expected a whole number"),
    ("port = 99999\n", "expected a TCP port"),
    ('[node]\nconsent_mode = "maybe"\n', "expected 'opt-in' or 'opt-out'"),
    ('home_community_id = "urn:oid:1.2"\n[node]\nhome_community_id = "urn:oid:1.3"\n', "set twice"),
    ("port = \n", "is not valid TOML"),
])
def test_settings_mistakes_are_one_line_naming_key_and_file(tmp_path, toml, words):
    config = tmp_path / "node.toml"
    config.write_text(toml)
    done = _cli("--config", str(config), "config", env={"XDS_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2, done.stdout
    assert words in done.stderr and str(config) in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_top_level_keys_beside_a_node_table_count(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text('home_community_id = "urn:oid:1.2.840.99"\n[node]\nport = 9090\n')
    done = _cli("config", "--config", str(config), env={"XDS_DATA_DIR": str(tmp_path)})  # --config after too
    assert done.returncode == 0, done.stderr
    assert "home_community_id = 'urn:oid:1.2.840.99'" in done.stdout and "port = 9090" in done.stdout


def test_environment_mistakes_name_the_variable(tmp_path):
    done = _cli("config", env={"XDS_DATA_DIR": str(tmp_path), "XDS_WORKERS": "two"})
    assert done.returncode == 2 and "XDS_WORKERS: workers = 'two'" in done.stderr


@pytest.mark.parametrize(("args", "env", "words"), [
    (["--config", "/nonexistent/node.toml", "config"], {}, "settings file /nonexistent/node.toml not found"),
    (["consent", "show", "A^^^&1.2&ISO"], {"XDS_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x"},
     "cannot use the database"),
])
def test_ordinary_failures_are_one_line_without_traceback(tmp_path, args, env, words):
    done = _cli(*args, env={"XDS_DATA_DIR": str(tmp_path), **env})
    assert done.returncode in (1, 2)
    assert words in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_version_and_debug():
    done = _cli("--version")
    assert done.returncode == 0 and done.stdout.startswith("xds-node ")
    done = _cli("--debug", "--config", "/nonexistent/node.toml", "config")
    assert "Traceback" in done.stderr


def test_admin_commands_never_create_a_stray_database(tmp_path):
    """Run from the wrong folder: an error naming the directory, and nothing created."""
    done = _cli("consent", "grant", "VET0002^^^&1.3.6.1.4.1.21367.2026.1.9&ISO", cwd=tmp_path,
                env={"PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    assert f"data directory {tmp_path / 'data'} does not exist" in done.stderr
    assert not (tmp_path / "data").exists()
    done = _cli("consent", "show", "VET0002^^^&1.3.6.1.4.1.21367.2026.1.9&ISO", "--init", cwd=tmp_path,
                env={"PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "data" / "registry.db").exists()


def test_patient_id_root_setting_decides_the_xds_patient_id(tmp_path):
    """`load` with patient_id_root naming a root the documents lack: each is refused, naming the root."""
    done = _cli("load", str(ROOT / "sample_documents" / "alex-testpatient"), "--data-dir", str(tmp_path / "d"),
                env={"XDS_PATIENT_ID_ROOT": "1.2.840.99999.1"})
    assert done.returncode == 1
    assert "no id with root 1.2.840.99999.1" in done.stdout + done.stderr
    done = _cli("config", env={"XDS_PATIENT_ID_ROOT": "not-an-oid", "XDS_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2 and "XDS_PATIENT_ID_ROOT" in done.stderr


@pytest.mark.server
def test_json_logs_and_access_log_on_demand(tmp_path):
    import json

    port = free_port()
    env = {**os.environ, "XDS_LOG_FORMAT": "json", "XDS_ACCESS_LOG": "true", "XDS_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "xds_node.cli", "serve", "--port", str(port)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    assert lines and all({"time", "level", "logger", "message"} <= set(r) for r in lines)
    assert any(r["logger"] == "uvicorn.access" and "/health" in r["message"] for r in lines)
    assert not any("color_message" in r for r in lines)


def test_serve_refuses_a_read_only_data_directory(tmp_path):
    if os.geteuid() == 0:
        # root writes through permission bits: make the directory a file's child instead
        blocker = tmp_path / "file"
        blocker.write_text("x")
        data = blocker / "data"
    else:
        data = tmp_path / "ro"
        data.mkdir()
        data.chmod(0o500)
    done = _cli("serve", "--data-dir", str(data), "--port", str(free_port()), timeout=30)
    assert done.returncode in (1, 2)
    assert "data directory" in done.stderr and "not writable" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_serve_refuses_an_unreachable_database(tmp_path):
    done = _cli("serve", "--data-dir", str(tmp_path), "--port", str(free_port()), timeout=30,
                env={"XDS_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"})
    assert done.returncode == 1
    assert "cannot use the database" in done.stderr and "Traceback" not in done.stderr
    assert "serving on" not in done.stdout


@pytest.fixture
def node_dir(tmp_path):
    data = tmp_path / "node"
    data.mkdir()
    return data


@pytest.mark.parametrize("since", ["1 hour ago", "2 days ago", "7d", "30m", "2026-11-01T00:00"])
def test_audit_since_takes_iso_times_and_durations(node_dir, since):
    done = _cli("audit", "--since", since, "--data-dir", str(node_dir))
    assert done.returncode == 0, done.stderr


def test_audit_since_nonsense_is_one_line(node_dir):
    done = _cli("audit", "--since", "last tuesday", "--data-dir", str(node_dir))
    assert done.returncode == 2 and "is not a time" in done.stderr and "Traceback" not in done.stderr


def test_piping_into_head_ends_quietly(node_dir):
    """`xds-node patients list | head -1`: the reader leaves early; no BrokenPipeError traceback."""
    script = (f"{sys.executable} -m xds_node.cli consent grant 'P1^^^&1.2.3&ISO' --force --data-dir {node_dir} "
              f">/dev/null 2>&1; for i in 1 2 3; do {sys.executable} -m xds_node.cli audit --data-dir {node_dir} "
              f"--format csv --limit 5000; done | head -c 1")
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_postgres_scheme_urls_are_accepted():
    from xds_node.config import load_settings

    s = load_settings(env={"XDS_DATABASE_URL": "postgres://u:p@db.example/xds"})
    assert s.db_url == "postgresql+psycopg://u:p@db.example/xds"


def test_missing_driver_and_tls_key_are_explained(tmp_path):
    from xds_node.cli import explain

    message, code = explain(ModuleNotFoundError("No module named 'psycopg'", name="psycopg"))
    assert "pip install 'xds-node[postgres]'" in message and code == 2
    key = tmp_path / "missing.key.pem"
    done = _cli("serve", "--data-dir", str(tmp_path), "--port", str(free_port()), "--tls-cert", str(key),
                "--tls-key", str(key), timeout=30)
    assert done.returncode in (1, 2) and str(key) in done.stderr and "Traceback" not in done.stderr


def test_admin_commands_say_which_data_directory_at_a_terminal(tmp_path, monkeypatch, capsys):
    """A person at a terminal sees which node a command acts on; piped output stays clean."""
    import io

    from xds_node.config import load_settings, require_data_dir

    settings = load_settings(env={}, data_dir=tmp_path)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    require_data_dir(settings)
    assert f"data directory {tmp_path.resolve()}" in sys.stderr.getvalue()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    require_data_dir(settings)
    assert sys.stderr.getvalue() == ""
