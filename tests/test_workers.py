"""``serve --workers N``: each worker has its own listening socket (SO_REUSEPORT), so keep-alive
connections spread over the workers instead of piling onto whichever accepted first; a worker that
dies is replaced on its socket; a port held by anyone, even with SO_REUSEPORT, is still refused."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from bench.procnet import connection_split, descendants
from tests.conftest import ROOT, LiveNode

pytestmark = [pytest.mark.server,
              pytest.mark.skipif(not sys.platform.startswith("linux") or not os.path.isdir("/proc/net"),
                                 reason="SO_REUSEPORT and /proc needed")]


def _health(sock: socket.socket, port: int) -> bytes:
    sock.sendall(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\nok" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _open(port: int, n: int) -> list[socket.socket]:
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        assert _health(s, port).startswith(b"HTTP/1.1 200"), "every connection is answered"
        conns.append(s)
    return conns


def _workers(node: LiveNode) -> list[int]:
    return [p for p in descendants(node.proc.pid) if p != node.proc.pid and _is_worker(p)]


def _is_worker(pid: int) -> bool:
    try:
        return "spawn_main" in open(f"/proc/{pid}/cmdline").read()  # not the resource tracker
    except OSError:
        return False


def test_connections_spread_over_the_workers(tmp_path):
    node = LiveNode(tmp_path, args=["--workers", "2"])
    try:
        conns = _open(node.port, 32)
        split = connection_split(node.proc.pid, node.port)
        assert sum(split) == 32 and len(split) == 2, split  # a shared socket gave [32] or [26, 6]
        for s in conns:
            s.close()
    finally:
        node.stop()


def test_a_dead_worker_is_replaced_on_its_socket(tmp_path):
    node = LiveNode(tmp_path, args=["--workers", "2"])
    try:
        _open(node.port, 8)  # both workers up
        workers = _workers(node)
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)
        # connections the kernel hashes to the dead worker's socket wait there for its replacement
        conns = _open(node.port, 24)
        assert sum(connection_split(node.proc.pid, node.port)) >= 24
        deadline = time.monotonic() + 30
        while len(_workers(node)) != 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert workers[0] not in _workers(node) and len(_workers(node)) == 2
        for s in conns:
            s.close()
    finally:
        node.stop()


def test_port_shared_by_another_reuseport_listener_is_refused(tmp_path):
    """SO_REUSEPORT lets sockets of one user share a port; our first bind does not ask for it, so
    another process's listener (another node, say) on the port still stops us with one line."""
    other = socket.socket()
    other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    other.bind(("127.0.0.1", 0))
    other.listen()
    port = other.getsockname()[1]
    try:
        done = subprocess.run([sys.executable, "-m", "xds_node.cli", "serve", "--port", str(port), "--data-dir",
                               str(tmp_path), "--workers", "2"], capture_output=True, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=90)
    finally:
        other.close()
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "serving on" not in done.stdout + done.stderr and "Traceback" not in done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("xds-node:")] == [
        f"xds-node: address already in use: 127.0.0.1:{port} (another process listens there; choose --port)"]
