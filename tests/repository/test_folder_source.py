"""The folder adapter: a source system's files indexed in place through add, change and removal."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tests.repository.test_provide_and_retrieve import documents_of, retrieve, status_of
from xds_node.ebxml import rim
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import StoredQuery

SAMPLES = Path(__file__).resolve().parents[2] / "sample_documents"


def _uid_of(node, locator_suffix: str) -> dict:
    source = next(s for s in node.repository.sources if s.startswith("folder:"))
    rows = [r for r in node.repository.rows_for_source(source) if r["locator"].endswith(locator_suffix)]
    assert len(rows) == 1
    return rows[0]


def _statuses(client, pid) -> dict[str, str]:
    q = StoredQuery(query_id=v.StoredQueryId.FIND_DOCUMENTS, slots={
        "$XDSDocumentEntryPatientId": [[f"'{pid}'"]],
        "$XDSDocumentEntryStatus": [["('Approved','Deprecated')"]]})
    reply = client.call("/xds/registry", v.Action.ITI18, rim.write_adhoc_query_request(q))
    return {e.get("id"): e.get("status").rsplit(":", 1)[1] for e in reply.objects("ExtrinsicObject")}


def test_add_change_remove_cycle(client, node, tmp_path):
    folder = tmp_path / "ehr-export"
    shutil.copytree(sorted(p for p in SAMPLES.iterdir() if p.is_dir())[0], folder)
    indexer = node.folder_indexer(folder)
    first = indexer.sync()
    assert len(first.registered) == len(list(folder.glob("*.xml"))) and not first.rejected
    assert indexer.sync().unchanged == len(first.registered)  # nothing to do the second time

    target = sorted(folder.glob("*.xml"))[0]
    before = _uid_of(node, target.name)
    original = target.read_bytes()
    got = retrieve(client, [(None, before["unique_id"])])
    assert documents_of(got) == {before["unique_id"]: original}

    # the source system rewrites the file: a replacement (RPLC), the old entry deprecated
    changed = original.replace(b"</ClinicalDocument>", b"<!-- amended --></ClinicalDocument>")
    target.write_bytes(changed)
    os.utime(target, ns=(before["mtime_ns"] + 10**9, before["mtime_ns"] + 10**9))
    second = indexer.sync()
    assert second.replaced == [target.name]
    after = _uid_of(node, target.name)
    assert after["unique_id"] != before["unique_id"]
    pid = node.registry_store.fetch("doc", [after["entry_uuid"]])[0].patient_id
    statuses = _statuses(client, pid)
    assert statuses[before["entry_uuid"]] == "Deprecated" and statuses[after["entry_uuid"]] == "Approved"
    got = retrieve(client, [(None, after["unique_id"]), (None, before["unique_id"])])
    assert documents_of(got) == {after["unique_id"]: changed}  # the old version is gone at the source
    assert status_of(got) == v.ResponseStatus.PARTIAL_SUCCESS

    # removed at the source: deprecated, and retrieval says unknown
    target.unlink()
    third = indexer.sync()
    assert third.removed == [target.name]
    assert _statuses(client, pid)[after["entry_uuid"]] == "Deprecated"
    assert status_of(retrieve(client, [(None, after["unique_id"])])) == v.ResponseStatus.FAILURE


def test_file_changed_behind_our_back_is_not_served(client, node, tmp_path):
    folder = tmp_path / "src"
    shutil.copytree(sorted(p for p in SAMPLES.iterdir() if p.is_dir())[1], folder)
    node.folder_indexer(folder).sync()
    target = sorted(folder.glob("*.xml"))[0]
    row = _uid_of(node, target.name)
    data = bytearray(target.read_bytes())
    data[-30] = ord("X") if data[-30] != ord("X") else ord("Y")  # same size, different bytes, new mtime
    target.write_bytes(bytes(data))
    os.utime(target, ns=(row["mtime_ns"] + 5 * 10**9, row["mtime_ns"] + 5 * 10**9))
    reply = retrieve(client, [(None, row["unique_id"])])
    assert status_of(reply) == v.ResponseStatus.FAILURE
    assert reply.error_codes == [v.ErrorCode.DOCUMENT_UNIQUE_ID_ERROR]


def test_non_cda_files_are_rejected_with_the_reason(node, tmp_path):
    (tmp_path / "notes.xml").write_text("<html><body>not a CDA</body></html>")
    (tmp_path / "broken.xml").write_text("<ClinicalDocument xmlns='urn:hl7-org:v3'>")
    report = node.folder_indexer(tmp_path).sync()
    reasons = dict(report.rejected)
    assert set(Path(p).name for p in reasons) == {"notes.xml", "broken.xml"}
    assert all(Path(p).name in r for p, r in reasons.items())  # each reason names its file
    assert node.registry_store.count("doc") == 0


def test_every_hl7_example_registers(node):
    from tests.corpus import CORPUS

    folder = CORPUS / "04-ccda" / "hl7-c-cda-examples"
    if not folder.is_dir():
        import pytest

        pytest.skip("corpus not present")
    indexer = node.folder_indexer(folder)
    report = indexer.sync()
    # HL7's examples mostly name the patient by SSN alone, which is never the XDS patient id by default
    assert report.rejected and all("Social Security Number" in why for _, why in report.rejected)
    from xds_node.cda.metadata import SSN_ROOT

    indexer.defaults.patient_id_root = SSN_ROOT  # an affinity domain that really is keyed by SSN
    report = indexer.sync()
    assert report.rejected == [] and len(report.registered) >= 9
