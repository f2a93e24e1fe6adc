"""The README's first command: `xds-node demo` comes up, and what it prints works."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    data = tmp_path_factory.mktemp("demo")
    port = free_port()
    cmd = [sys.executable, "-m", "xds_node.cli", "demo", "--data-dir", str(data), "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ})
    out = b""
    deadline = time.monotonic() + 60
    while b"Press Ctrl+C" not in out and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line and proc.poll() is not None:
            break
        out += line
    text = out.decode()
    for _ in range(100):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield text, port
    proc.terminate()
    proc.wait(10)


def test_demo_banner_lists_endpoints_and_a_working_query(demo):
    text, port = demo
    assert "20 sample documents for 4 patients" in text
    for path in ("/xds/registry", "/xds/repository", "/xca/query", "/xca/retrieve", "/xcpd"):
        assert f"http://127.0.0.1:{port}{path}" in text
    access = text.split("Who may call each endpoint:", 1)[1]
    assert re.search(r"/xds/registry +internal clients .*anonymous from loopback", access)
    assert re.search(r"/ig/registry +internal clients .*no anonymous callers", access)
    request = Path(re.search(r"--data-binary @(\S+)", text).group(1))
    reply = httpx.post(f"http://127.0.0.1:{port}/xds/registry", content=request.read_bytes(),
                       headers={"Content-Type": "application/soap+xml; charset=UTF-8"})
    assert reply.status_code == 200 and reply.content.count(b"<rim:ExtrinsicObject") >= 4
    # the banner's readable summary lists exactly what that answer holds
    listed = re.search(r"It answers with (\d+) DocumentEntries", text)
    assert listed and int(listed.group(1)) == reply.content.count(b"<rim:ExtrinsicObject")


def test_the_banners_retrieve_line_works(demo, tmp_path):
    text, _ = demo
    line = re.search(r"Fetch one \(ITI-43\): xds-node (retrieve \S+) -o doc.xml --url (\S+)", text)
    out = tmp_path / "banner-doc.xml"
    run = subprocess.run([sys.executable, "-m", "xds_node.cli", "retrieve", line.group(1).split()[1], "-o", str(out),
                          "--url", line.group(2)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert b"ClinicalDocument" in out.read_bytes()


def test_retrieve_command_fetches_a_listed_document(demo, tmp_path):
    text, port = demo
    request = Path(re.search(r"--data-binary @(\S+)", text).group(1))
    reply = httpx.post(f"http://127.0.0.1:{port}/xds/registry", content=request.read_bytes(),
                       headers={"Content-Type": "application/soap+xml; charset=UTF-8"}).text
    uid = re.search(r'identificationScheme="urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab" value="([^"]+)"', reply)
    out = tmp_path / "doc.xml"
    run = subprocess.run([sys.executable, "-m", "xds_node.cli", "retrieve", uid.group(1), "-o", str(out),
                          "--url", f"http://127.0.0.1:{port}/xds/repository"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert out.read_bytes().startswith(b"<?xml") and b"ClinicalDocument" in out.read_bytes()
