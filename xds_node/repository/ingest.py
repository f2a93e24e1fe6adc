"""Indexing a source system's folder of C-CDA files: add, change (RPLC) and removal (deprecate).

``FolderIndexer.sync()`` compares the folder with what the repository index says it holds:
a new file is registered; a file whose bytes changed is registered as a replacement of its
previous entry (RPLC, the old entry becomes Deprecated); a vanished file's entry is deprecated.
Each file is its own submission under its own savepoint, so one bad file (invalid, unreadable, a
symlink pointing out of the folder, or one that trips an unexpected error) is reported and skipped,
never blocking the files after it or the processing of removals. A rejection is reported once
until the file changes, so ``--watch`` does not repeat it on every poll.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Connection

from xds_node.cda import CdaDefaults, CdaError, extract_metadata
from xds_node.db import insert_rows
from xds_node.ebxml import vocabulary as v
from xds_node.ebxml.model import Association, Author, DocumentEntry, Submission, SubmissionSet
from xds_node.ebxml.rim import new_uuid
from xds_node.registry.service import Registry, now_dtm
from xds_node.repository import tables as t
from xds_node.repository.service import Repository
from xds_node.repository.sources import FolderSource

log = logging.getLogger(__name__)


@dataclass
class SyncReport:
    registered: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    #: rejections new since the last sync (or the file changed since it was last rejected)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    #: files rejected before and unchanged since: not reported again
    still_rejected: int = 0

    def summary(self) -> str:
        text = (f"{len(self.registered)} registered, {len(self.replaced)} replaced, {len(self.removed)} removed, "
                f"{self.unchanged} unchanged, {len(self.rejected)} rejected")
        return text + (f" ({self.still_rejected} still rejected, unchanged)" if self.still_rejected else "")


def submission_for(entry: DocumentEntry, *, source_id: str) -> Submission:
    """Wrap one DocumentEntry in a SubmissionSet the way a Document Source would."""
    ss = SubmissionSet(
        id=new_uuid(),
        unique_id="2.25." + str(int.from_bytes(hashlib.sha1(entry.id.encode()).digest()[:15], "big")),
        source_id=source_id,
        patient_id=entry.patient_id,
        submission_time=now_dtm(),
        content_type_code=entry.class_code or entry.type_code,
        authors=[Author(person=a.person, institutions=list(a.institutions)) for a in entry.authors[:1]],
    )
    link = Association(id=new_uuid(), association_type=v.AssociationType.HAS_MEMBER, source=ss.id,
                       target=entry.id, submission_set_status="Original")
    return Submission(submission_set=ss, documents=[entry], associations=[link])


#: "this uniqueId is taken": found by validation, or by the unique index when the other file is in
#: the same, not yet committed, batch
_ID_TAKEN = {v.ErrorCode.NON_IDENTICAL_HASH, v.ErrorCode.DUPLICATE_UNIQUE_ID}


class FolderIndexer:
    def __init__(self, repository: Repository, registry: Registry, folder: FolderSource, *,
                 source_id: str, defaults: CdaDefaults | None = None,
                 on_registered: Callable[[bytes, DocumentEntry, Connection], None] | None = None):
        self.repository = repository
        self.registry = registry
        self.folder = folder
        self.source_id = source_id
        self.defaults = defaults or CdaDefaults()
        self.on_registered = on_registered  # e.g. feed the patient index from the recordTarget
        #: path -> fingerprint of the file when it was last rejected (reported once until it changes)
        self._rejected: dict[str, tuple] = {}
        repository.add_source(folder)

    #: Files committed together. Each file still succeeds or fails alone (a savepoint each); the
    #: batch saves a commit per file, which is a third of the cost of indexing one.
    BATCH = 100

    def sync(self, progress: Callable[[Path], None] | None = None) -> SyncReport:
        report = SyncReport()
        if not self.folder.root.is_dir():  # unmounted or moved: never read that as "every file removed"
            self._reject(report, self.folder.root, "folder not found: nothing indexed or removed")
            return report
        known = {row["locator"]: row for row in self.repository.rows_for_source(self.folder.name)}
        seen: set[str] = set()
        files = self.folder.files()
        for start in range(0, len(files), self.BATCH):
            with self.repository.engine.begin() as conn:
                for path in files[start:start + self.BATCH]:
                    self._sync_file(path, known, seen, report, conn)
                    if progress:
                        progress(path)
        for locator, row in known.items():
            if locator not in seen:
                try:
                    self._removed(row)
                    report.removed.append(locator)
                except Exception as exc:  # the next sync tries again
                    log.exception("%s: removal not recorded", locator)
                    report.rejected.append((str(self.folder.root / locator), f"removal not recorded: {exc}"))
        listed = {str(p) for p in files}
        for gone in [k for k in self._rejected if k not in listed]:
            del self._rejected[gone]  # reported again should it come back
        return report

    def _sync_file(self, path: Path, known: dict[str, dict], seen: set[str], report: SyncReport,
                   conn: Connection) -> None:
        """One file; whatever goes wrong with it becomes a rejection, never an exception."""
        try:
            locator = self.folder.locator_for(path)
        except ValueError:  # resolves outside the folder: it could never be served from here
            self._reject(report, path, f"symlink to {_target(path)}, outside {self.folder.root}: skipped")
            return
        if locator in seen:
            return  # a second name (symlink inside the folder) for a file already seen in this sync
        seen.add(locator)
        before = len(report.rejected) + report.still_rejected
        try:
            self._index_file(path, locator, known.get(locator), report, conn)
        except OSError as exc:
            self._reject(report, path, f"cannot read: {exc.strerror or exc}")
        except Exception as exc:  # one bad file never stops the rest
            log.exception("%s: could not be indexed", path)
            self._reject(report, path, f"could not be indexed: {type(exc).__name__}: {exc}")
        if len(report.rejected) + report.still_rejected == before:
            self._rejected.pop(str(path), None)

    def _reject(self, report: SyncReport, path: Path, reason: str) -> None:
        """Report a rejection, unless this same file (unchanged) was reported already."""
        fingerprint = _fingerprint(path)
        if self._rejected.get(str(path)) == fingerprint:
            report.still_rejected += 1
            return
        self._rejected[str(path)] = fingerprint
        report.rejected.append((str(path), reason))

    def _index_file(self, path: Path, locator: str, previous: dict | None, report: SyncReport,
                    conn: Connection) -> None:
        st = path.stat()
        if previous is not None and previous["mtime_ns"] == st.st_mtime_ns and previous["size"] == st.st_size:
            report.unchanged += 1
            return
        with conn.begin_nested():  # whatever this file does to the transaction stays with this file
            self._index_changed(path, locator, previous, report, conn, st)

    def _index_changed(self, path: Path, locator: str, previous: dict | None, report: SyncReport,
                       conn: Connection, st) -> None:
        data = path.read_bytes()
        sha1 = hashlib.sha1(data).hexdigest()
        if previous is not None and previous["sha1"] == sha1:
            report.unchanged += 1  # touched but identical; remember the new mtime next time round
            conn.execute(t.documents.update().where(t.documents.c.unique_id == previous["unique_id"])
                         .values(mtime_ns=st.st_mtime_ns))
            return
        try:
            entry = extract_metadata(data, source_name=path.name, defaults=self.defaults)
        except CdaError as exc:
            self._reject(report, path, str(exc))
            return
        entry.size, entry.hash = len(data), sha1
        entry.repository_unique_id = self.repository.unique_id
        response = self._register(entry, data, path, locator, previous, sha1, st.st_mtime_ns, conn)
        if response.errors and {e.code for e in response.errors} <= _ID_TAKEN:
            # the same ClinicalDocument/id with other bytes (a new version written over the file,
            # or two files reusing an id): this content gets a uniqueId of its own
            entry.unique_id = "2.25." + str(int(sha1[:30], 16))
            response = self._register(entry, data, path, locator, previous, sha1, st.st_mtime_ns, conn)
        if response.status != v.ResponseStatus.SUCCESS:
            self._reject(report, path, "; ".join(e.context for e in response.errors))
        else:
            (report.replaced if previous is not None else report.registered).append(locator)

    def _register(self, entry: DocumentEntry, data: bytes, path: Path, locator: str, previous: dict | None,
                  sha1: str, mtime_ns: int, conn: Connection):
        """One file as one submission (RPLC of its previous version), repository row in the same commit."""
        entry.id = new_uuid()
        sub = submission_for(entry, source_id=self.source_id)
        if previous is not None:
            sub.associations.append(Association(id=new_uuid(), association_type=v.AssociationType.RPLC,
                                                source=entry.id, target=previous["entry_uuid"]))
        row = {"unique_id": entry.unique_id, "repository_unique_id": self.repository.unique_id,
               "entry_uuid": entry.id, "source": self.folder.name, "locator": locator,
               "mime_type": entry.mime_type or "text/xml", "size": len(data), "sha1": sha1,
               "mtime_ns": mtime_ns, "state": "current", "version": (previous or {}).get("version", 0) + 1}

        def record(conn) -> None:
            insert_rows(conn, t.documents, [row])
            if previous is not None:
                Repository.set_state(conn, previous["unique_id"], "replaced")
            if self.on_registered is not None:
                # same transaction as the registration; a recordTarget the side index cannot read
                # fails while parsing, before it writes anything, and must not undo the registration
                try:
                    self.on_registered(data, entry, conn)
                except ValueError as exc:
                    log.warning("%s: registered, but post-processing failed: %s", path, exc)

        return self.registry.register(sub, transaction="ITI-41", also=record, conn=conn)

    def _removed(self, row: dict) -> None:
        """A file gone from the source: its entry is deprecated, retrieval answers 'unknown'."""
        self.registry.store.set_document_status(row["entry_uuid"], v.Status.DEPRECATED)
        with self.repository.engine.begin() as conn:
            Repository.set_state(conn, row["unique_id"], "removed")

    def watch(self, interval: float = 5.0, *, on_report: Callable[[SyncReport], None] | None = None,
              stop: Callable[[], bool] = lambda: False) -> None:
        """Poll the folder every ``interval`` seconds (portable, no inotify dependency)."""
        while not stop():
            report = self.sync()
            if on_report and (report.registered or report.replaced or report.removed or report.rejected):
                on_report(report)
            time.sleep(interval)


def _target(path: Path) -> str:
    try:
        return str(path.resolve())
    except OSError:
        return "?"


def _fingerprint(path: Path) -> tuple:
    """What changes when the file (or, for a symlink, the link or its target) changes."""
    out: list = []
    for follow in (False, True):
        try:
            st = os.stat(path, follow_symlinks=follow)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        except OSError:
            out.append(None)
    return tuple(out)
