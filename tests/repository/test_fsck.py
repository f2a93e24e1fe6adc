"""`xds-node fsck [--repair]` run as a command, and the stale-file cleanup `serve` does at start."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import factories as f
from tests.conftest import ROOT, LiveNode
from tests.repository.test_folder_source import SAMPLES
from tests.repository.test_provide_and_retrieve import documents_of, no_hash_size, provide, retrieve, status_of
from tests.soapkit import SoapTestClient
from xds_node.ebxml import vocabulary as v


@pytest.fixture
def settings(settings):
    """These tests are about the folder store (leases, collection); on PostgreSQL pushed documents
    would otherwise go to the database store (tests/repository/test_dbstore.py)."""
    settings.document_store = "folder"
    return settings


def fsck(settings, *args: str) -> tuple[int, str]:
    """Run the command; (exit status, stdout), stderr (logging) appended after a marker line."""
    env = {**os.environ, "XDS_DATABASE_URL": settings.db_url, "XDS_DOCUMENT_STORE": settings.document_store}
    proc = subprocess.run([sys.executable, "-m", "xds_node.cli", "fsck", "--data-dir", str(settings.data_dir), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + "\n--- stderr ---\n" + proc.stderr


def _store_docs(client, n: int, pid: int) -> dict[str, bytes]:
    sub = no_hash_size(f.submission(f.patient(pid), n))
    contents = {de.id: f"<doc>{de.unique_id} {os.urandom(8).hex()}</doc>".encode() for de in sub.documents}
    assert provide(client, sub, contents).status == v.ResponseStatus.SUCCESS
    return {de.unique_id: contents[de.id] for de in sub.documents}


def _path(node, data: bytes) -> Path:
    return node.content_store.path_for(hashlib.sha1(data).hexdigest())


def _age(path: Path, seconds: int) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_healthy_store_is_all_well(client, node, settings):
    _store_docs(client, 2, 600)
    code, out = fsck(settings)
    assert code == 0 and "all well" in out, out
    code, out = fsck(settings, "--json")
    report = json.loads(out.split("--- stderr ---")[0])
    assert code == 0 and report["ok"] and report["entries"] == 2 and report["findings"] == []


def test_finds_every_kind_of_problem_and_repairs_only_orphans_and_temp_files(client, node, settings, tmp_path):
    docs = _store_docs(client, 5, 610)
    (missing_uid, missing), (short_uid, short), (flipped_uid, flipped), *good = docs.items()
    _path(node, missing).unlink()
    _path(node, short).write_bytes(short[:-3])  # wrong size
    damaged = bytearray(flipped)
    damaged[-8] ^= 1
    _path(node, flipped).write_bytes(bytes(damaged))  # same size, wrong hash

    orphan_data = b"bytes no entry refers to"
    orphan, lease = node.content_store.put(orphan_data)
    node.content_store.drop(lease)
    _age(node.content_store.path_for(orphan), 7200)
    young, lease = node.content_store.put(b"an orphan written a moment ago")
    node.content_store.drop(lease)
    temp = node.content_store.path_for(orphan).parent / ".incoming-deadbeef"
    temp.write_bytes(b"half a document")

    # a source system's folder: one file deleted, one changed in place since `load`
    folder = tmp_path / "ehr"
    shutil.copytree(sorted(p for p in SAMPLES.iterdir() if p.is_dir())[0], folder)
    assert not node.folder_indexer(folder).sync().rejected
    gone, changed = sorted(folder.glob("*.xml"))[:2]
    gone.unlink()
    changed.write_bytes(changed.read_bytes().replace(b"</ClinicalDocument>", b"<!-- x --></ClinicalDocument>"))

    code, out = fsck(settings, "--json")
    assert code == 1, out
    report = json.loads(out.split("--- stderr ---")[0])
    found = {(x["kind"], x["unique_id"] or Path(x["path"]).name) for x in report["findings"]}
    folder_rows = {r["locator"]: r["unique_id"] for r in node.repository.rows_for_source(f"folder:{folder.resolve()}")}
    assert found == {("missing", missing_uid), ("damaged", short_uid), ("damaged", flipped_uid),
                     ("missing", folder_rows[gone.name]), ("damaged", folder_rows[changed.name]),
                     ("orphan", orphan)}  # the young orphan and young temp file may belong to a running request
    assert not any(x["repaired"] for x in report["findings"])

    code, out = fsck(settings, "--repair")  # default grace: only the old orphan goes
    assert code == 1 and "ORPHAN" in out and "repaired" in out, out
    assert not node.content_store.path_for(orphan).exists()
    assert node.content_store.path_for(young).exists() and temp.exists()

    code, out = fsck(settings, "--repair", "--grace", "0", "--json")
    report = json.loads(out.split("--- stderr ---")[0])
    repaired = {(x["kind"], Path(x["path"]).name) for x in report["findings"] if x["repaired"]}
    assert repaired == {("stale-temp", temp.name), ("orphan", young)}
    assert not temp.exists() and not node.content_store.path_for(young).exists()

    code, out = fsck(settings, "--grace", "0")  # what cannot be repaired is still reported, untouched
    assert code == 1 and out.count("MISSING") == 2 and out.count("DAMAGED") == 3 and "ORPHAN" not in out, out
    assert _path(node, short).read_bytes() == short[:-3] and _path(node, flipped).read_bytes() == bytes(damaged)
    got = retrieve(client, [(None, uid) for uid, _ in good])
    assert status_of(got) == v.ResponseStatus.SUCCESS and documents_of(got) == dict(good)


def test_usage_error_is_exit_status_2(settings):
    code, out = fsck(settings, "--grace", "-5")
    assert code == 2 and "grace" in out


def test_serve_cleans_stale_temp_files_and_interrupted_collections_at_start(client, node, settings):
    docs = _store_docs(client, 1, 620)
    (uid, data), = docs.items()
    store = node.content_store
    stale = _path(node, data).parent / ".incoming-0123abcd"
    stale.write_bytes(b"from a request killed mid-write")
    interrupted = store.quarantine(hashlib.sha1(data).hexdigest())  # a collector killed after its rename
    node.close()
    live = LiveNode(settings.data_dir, {"XDS_DATABASE_URL": settings.db_url, "XDS_STORE_GRACE_SECONDS": "0",
                                        "XDS_DOCUMENT_STORE": settings.document_store})
    try:
        remote = SoapTestClient(base_url=live.url)
        got = retrieve(remote, [(None, uid)])
        remote.close()
        assert documents_of(got) == {uid: data}
    finally:
        live.stop()
    log = live.proc.stdout.read().decode()
    assert not stale.exists() and not interrupted.exists()
    assert f"removed stale {stale}" in log and f"restored {interrupted}" in log, log
