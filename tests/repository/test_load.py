"""`xds-node load`: one bad file (a symlink out of the folder, an invalid or failing file) never
stops the rest, removals are still processed, and `--watch` reports a rejection once per change."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.repository.test_folder_source import SAMPLES
from tests.repository.test_provide_and_retrieve import documents_of, retrieve


def _samples(n: int) -> list[Path]:
    files = sorted(p for d in sorted(SAMPLES.iterdir()) if d.is_dir() for p in sorted(d.glob("*.xml")))
    return files[:n]


def _folder(tmp_path: Path, names: list[str]) -> tuple[Path, list[Path]]:
    folder = tmp_path / "ehr"
    folder.mkdir()
    sources = _samples(len(names))
    for name, src in zip(names, sources, strict=True):
        shutil.copy(src, folder / name)
    return folder, sources


def test_symlink_out_of_the_folder_is_skipped_and_the_rest_indexed(client, node, tmp_path):
    folder, _ = _folder(tmp_path, ["1-first.xml", "3-third.xml", "4-fourth.xml"])
    indexer = node.folder_indexer(folder)
    assert len(indexer.sync().registered) == 3

    outside = tmp_path / "elsewhere" / "secret.xml"  # a valid C-CDA, but not the source system's to share
    outside.parent.mkdir()
    shutil.copy(_samples(5)[4], outside)
    (folder / "2-link.xml").symlink_to(outside)
    (folder / "3-third.xml").unlink()
    late = folder / "5-fifth.xml"
    shutil.copy(_samples(6)[5], late)

    report = indexer.sync()
    assert [(Path(p).name, "outside" in reason) for p, reason in report.rejected] == [("2-link.xml", True)]
    assert report.registered == ["5-fifth.xml"]  # files after the symlink are still indexed
    assert report.removed == ["3-third.xml"]  # and removals still processed
    row = next(r for r in node.repository.rows_for_source(indexer.folder.name) if r["locator"] == "5-fifth.xml")
    assert documents_of(retrieve(client, [(None, row["unique_id"])])) == {row["unique_id"]: late.read_bytes()}
    assert not any("secret" in r["locator"] for r in node.repository.rows_for_source(indexer.folder.name))


def test_load_command_reports_the_symlink_and_indexes_the_rest(node, settings, tmp_path):
    folder, _ = _folder(tmp_path, ["a.xml", "c.xml"])
    outside = tmp_path / "outside.xml"
    shutil.copy(_samples(3)[2], outside)
    (folder / "b.xml").symlink_to(outside)
    node.close()
    env = {**os.environ, "XDS_DATABASE_URL": settings.db_url}
    proc = subprocess.run([sys.executable, "-m", "xds_node.cli", "load", "--data-dir", str(settings.data_dir),
                           str(folder)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    out = " ".join((proc.stdout + proc.stderr).split())  # rich wraps long lines
    assert proc.returncode == 1, out  # something was rejected
    assert "2 registered" in out and "1 rejected" in out and "b.xml" in out and "outside" in out, out
    assert "Traceback" not in out


def test_one_failing_file_never_stops_the_batch(node, tmp_path):
    """An unexpected error inside one file's registration (here: the patient index hook) is that
    file's rejection; the batch transaction stays usable for the files after it."""
    folder, _ = _folder(tmp_path, ["a.xml", "b.xml", "c.xml"])
    indexer = node.folder_indexer(folder)
    hook = indexer.on_registered
    poison = (folder / "b.xml").read_bytes()

    def flaky(data, entry, conn):
        if data == poison:
            raise RuntimeError("patient index unavailable")
        hook(data, entry, conn)

    indexer.on_registered = flaky
    report = indexer.sync()
    assert report.registered == ["a.xml", "c.xml"]
    assert [(Path(p).name, "patient index unavailable" in r) for p, r in report.rejected] == [("b.xml", True)]
    assert node.registry_store.count("doc") == 2  # b.xml left nothing half-registered

    indexer.on_registered = hook
    again = indexer.sync()
    assert again.registered == ["b.xml"] and not again.rejected


def test_watch_reports_a_rejection_once_until_the_file_changes(node, tmp_path):
    folder, _ = _folder(tmp_path, ["good.xml"])
    bad = folder / "bad.xml"
    bad.write_text("<ClinicalDocument xmlns='urn:hl7-org:v3'>")
    outside = tmp_path / "out.xml"
    outside.write_text("<x/>")
    (folder / "link.xml").symlink_to(outside)
    indexer = node.folder_indexer(folder)

    reports = []
    polls = iter(range(4))
    indexer.watch(0, on_report=reports.append, stop=lambda: next(polls, None) is None)
    assert len(reports) == 1  # four polls, one report
    assert sorted(Path(p).name for p, _ in reports[0].rejected) == ["bad.xml", "link.xml"]

    quiet = indexer.sync()
    assert quiet.rejected == [] and quiet.still_rejected == 2 and "2 still rejected" in quiet.summary()

    bad.write_text("<ClinicalDocument xmlns='urn:hl7-org:v3'><still broken>")  # changed, still bad
    changed = indexer.sync()
    assert [Path(p).name for p, _ in changed.rejected] == ["bad.xml"] and changed.still_rejected == 1

    shutil.copy(_samples(2)[1], bad)  # fixed
    fixed = indexer.sync()
    assert fixed.registered == ["bad.xml"] and fixed.rejected == [] and fixed.still_rejected == 1

    (folder / "link.xml").unlink()
    (folder / "link.xml").symlink_to(outside)  # a new link: reported again
    assert [Path(p).name for p, _ in indexer.sync().rejected] == ["link.xml"]


def test_missing_folder_removes_nothing(node, tmp_path):
    folder, _ = _folder(tmp_path, ["a.xml", "b.xml"])
    indexer = node.folder_indexer(folder)
    assert len(indexer.sync().registered) == 2
    folder.rename(tmp_path / "unmounted")
    report = indexer.sync()
    assert report.removed == [] and "not found" in report.rejected[0][1]
    assert len(node.repository.rows_for_source(indexer.folder.name)) == 2
