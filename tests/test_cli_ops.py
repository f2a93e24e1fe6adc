"""Operator paths of issue 11, the CLI in a subprocess as a person runs it:

* ``serve`` / ``demo`` say "serving on" (and print the demo's curl line) only once the socket is
  theirs; a port in use is one line and exit 1;
* ``query`` for a patient correlated with no community says to run ``discover`` first.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATIENT = "VET0001^^^&2.16.840.1.113883.3.42.10001.100001.12&ISO"


def _cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 90):
    return subprocess.run([sys.executable, "-m", "xds_node.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, timeout=timeout)


def _taken() -> socket.socket:
    sock = socket.create_server(("127.0.0.1", 0))  # someone else's server on the port
    return sock


def test_serve_on_a_port_in_use_is_one_line_and_never_claims_to_serve(tmp_path):
    for workers in ("1", "2"):
        with _taken() as other:
            port = other.getsockname()[1]
            done = _cli("serve", "--port", str(port), "--data-dir", str(tmp_path), "--workers", workers)
        assert done.returncode == 1, (workers, done.stdout, done.stderr)
        assert "serving on" not in done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("xds-node:")]
        assert errors == [f"xds-node: address already in use: 127.0.0.1:{port} "
                          "(another process listens there; choose --port)"]


def test_demo_with_its_port_taken_prints_no_curl_line(tmp_path):
    with _taken() as other:
        port = other.getsockname()[1]
        done = _cli("demo", "--port", str(port), cwd=tmp_path)
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "curl" not in done.stdout and "Press Ctrl+C" not in done.stdout
    assert "address already in use" in done.stderr and "Traceback" not in done.stderr


def test_query_without_correlation_says_to_discover_first(tmp_path):
    data = tmp_path / "node"
    assert _cli("keys", "init", "--data-dir", str(data), "--init").returncode == 0
    granted = _cli("consent", "grant", PATIENT, "--force", "--data-dir", str(data))
    assert granted.returncode == 0, granted.stderr
    for extra in ((), ("--json",)):
        done = _cli("query", PATIENT, "--data-dir", str(data), *extra)
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert (f"no partner community is correlated with {PATIENT}: run `xds-node discover` first"
                in done.stderr)
        assert "Success" not in done.stdout or extra  # no "0 documents, Success" for people
        if extra:
            assert json.loads(done.stdout)["correlated"] is False
