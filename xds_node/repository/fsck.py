"""`xds-node fsck`: does every repository entry still have its bytes, and does the store hold only those?

Checks, in this order (the store first, so a repaired interruption is not then reported missing):

- the content store: ``.incoming-*`` names older than the grace period (temp files or leases of a
  request that died: kill -9, power loss), ``.gc-*`` names (a collection that was interrupted;
  repair puts them back), content files no entry names and no request holds (orphans), and
  anything else that has no business there (reported, never touched);
- the database store (``repo_content``): contents no entry names (orphans; a registration writes
  bytes and entry in one transaction, so these come only from outside, e.g. entries deleted by
  hand);
- every index row: the bytes exist at their source (our store, the database or a source system's
  folder) with the registered size and SHA-1. Nothing can repair lost bytes; these are reported only.

``repair`` removes stale temp names and orphans past the grace period (through
``Repository.collect``, so a request or writer running concurrently is never robbed) and restores
interrupted collections. Content files are aged by mtime (when written), temp names by ctime.
Database orphans need no grace period: ``DatabaseStore.remove_orphan`` locks the row before it looks
for entries, and a registration reusing the bytes holds a lock on it until it commits.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sqlalchemy import select

from xds_node.repository import tables as t
from xds_node.repository.dbstore import DatabaseStore
from xds_node.repository.service import Repository
from xds_node.repository.sources import ContentStore, FolderSource

log = logging.getLogger(__name__)

#: finding kinds, in the order the report lists them
KINDS = ("missing", "damaged", "orphan", "stale-temp", "interrupted", "unexpected")


@dataclass
class Finding:
    kind: str
    path: str
    detail: str
    unique_id: str | None = None
    repaired: bool = False


@dataclass
class FsckReport:
    entries: int = 0
    folder_entries: int = 0
    content_files: int = 0
    database_contents: int = 0  # documents' bytes held in the database (repo_content rows)
    in_flight: int = 0  # names held by requests still running (leases, young temp files and orphans)
    findings: list[Finding] = field(default_factory=list)
    repair: bool = False

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict:
        return {"ok": self.ok, "repair": self.repair, "entries": self.entries,
                "folder_entries": self.folder_entries, "content_files": self.content_files,
                "database_contents": self.database_contents,
                "in_flight": self.in_flight, "findings": [asdict(f) for f in self.findings]}

    def format(self) -> str:
        lines = [f"{self.entries} entries checked ({self.folder_entries} in source folders), "
                 f"{self.content_files} content files, {self.database_contents} contents in the database, "
                 f"{self.in_flight} held by requests in flight"]
        for finding in self.findings:
            uid = f" [{finding.unique_id}]" if finding.unique_id else ""
            done = " -> repaired" if finding.repaired else ""
            lines.append(f"{finding.kind.upper():12} {finding.path}{uid}: {finding.detail}{done}")
        repaired = sum(f.repaired for f in self.findings)
        if self.ok:
            lines.append("all well")
        else:
            lines.append(f"{len(self.findings)} problem(s), {repaired} repaired"
                         + ("" if self.repair else "; `xds-node fsck --repair` removes orphans and stale "
                            "temporary files"))
        return "\n".join(lines)


def fsck(repository: Repository, *, grace_seconds: float, repair: bool = False,
         now: float | None = None) -> FsckReport:
    report = FsckReport(repair=repair)
    now = time.time() if now is None else now
    _check_store(repository, report, grace_seconds, repair, now)
    _check_database(repository.database, report, repair)
    _check_entries(repository, report)
    report.findings.sort(key=lambda x: (KINDS.index(x.kind), x.path))
    return report


def _check_store(repository: Repository, report: FsckReport, grace: float, repair: bool, now: float) -> None:
    store = repository.store
    content: list[tuple[str, Path, os.stat_result]] = []
    for kind, path, st in store.scan():
        if kind == "content":
            content.append((path.name, path, st))
        elif kind == "temp":
            age = now - st.st_ctime  # a link change refreshes ctime: never over-states a lease's age
            if age < grace:
                report.in_flight += 1
                continue
            finding = Finding("stale-temp", str(path), f"left by a request that did not finish ({_age(age)} old)")
            if repair:
                path.unlink(missing_ok=True)
                finding.repaired = True
            report.findings.append(finding)
        elif kind == "quarantine":
            finding = Finding("interrupted", str(path), "a collection stopped half-way; the file is out of reach")
            if repair:
                store.restore(path)
                finding.repaired = True
            report.findings.append(finding)
        else:
            report.findings.append(Finding("unexpected", str(path), "not a file the store writes; left alone"))
    report.content_files = len(content)
    for i in range(0, len(content), 500):
        batch = content[i:i + 500]
        named = repository.referenced(sha1 for sha1, _, _ in batch)
        for sha1, path, st in batch:
            if sha1 in named:
                continue
            try:
                st = os.stat(path)  # fresh: repair may just have removed a stale lease
            except FileNotFoundError:
                continue
            age = now - st.st_mtime
            if st.st_nlink > 1 or age < grace:
                report.in_flight += 1  # leased by a request, or written too recently to judge
                continue
            finding = Finding("orphan", str(path), f"no repository entry refers to it ({_age(age)} old)")
            if repair:
                finding.repaired = sha1 in repository.collect([sha1])
                if not finding.repaired:
                    finding.detail += "; kept: a request or a new entry took it meanwhile"
            report.findings.append(finding)


def _check_database(database: DatabaseStore, report: FsckReport, repair: bool) -> None:
    report.database_contents = database.count()
    for orphan in database.orphans():
        finding = Finding("orphan", f"{database.name}:{orphan.sha1}",
                          f"no repository entry refers to these {orphan.size} bytes in the database")
        if repair:
            finding.repaired = database.remove_orphan(orphan.sha1)
            if not finding.repaired:
                finding.detail += "; kept: a new entry took it meanwhile"
        report.findings.append(finding)


def _check_entries(repository: Repository, report: FsckReport) -> None:
    docs = t.documents
    query = select(docs.c.unique_id, docs.c.source, docs.c.locator, docs.c.size, docs.c.sha1, docs.c.state)
    with repository.engine.connect() as conn:
        rows = conn.execution_options(stream_results=True, yield_per=1000).execute(query)
        for row in rows:
            if row.state == "removed" or (row.source != ContentStore.name and row.state != "current"):
                continue  # gone at the source by design (a folder file replaced by a newer version)
            report.entries += 1
            report.folder_entries += row.source != ContentStore.name
            problem = _check_entry(repository, row)
            if problem is not None:
                report.findings.append(problem)


def _check_entry(repository: Repository, row) -> Finding | None:
    source = repository.source_for(row.source)
    if isinstance(source, DatabaseStore):
        where = f"{source.name}:{row.locator}"
        problem = source.check(row.locator, row.size)
        if problem is None and row.sha1 != row.locator:
            problem = f"damaged: SHA-1 {row.locator}, registered as {row.sha1}"
        if problem is None:
            return None
        if problem == "missing":
            return Finding("missing", where, "the document's bytes are not in the database", row.unique_id)
        return Finding("damaged", where, problem.removeprefix("damaged: "), row.unique_id)
    if source is None:
        return Finding("missing", row.locator, f"unknown source {row.source}", row.unique_id)
    located = source.locate(row.locator)
    where = str(located.path) if located is not None else _expected_path(source, row.locator)
    if located is None:
        return Finding("missing", where, "the document's bytes are not there", row.unique_id)
    try:
        sha1, size = source.digest(row.locator)
    except OSError as exc:
        return Finding("missing", where, f"cannot be read: {exc.strerror or exc}", row.unique_id)
    if size != row.size:
        return Finding("damaged", where, f"{size} bytes, registered as {row.size}", row.unique_id)
    if sha1 != row.sha1:
        return Finding("damaged", where, f"SHA-1 {sha1}, registered as {row.sha1}", row.unique_id)
    return None


def _expected_path(source, locator: str) -> str:
    if isinstance(source, ContentStore):
        return str(source.path_for(locator))
    if isinstance(source, FolderSource):
        return str(source.root / locator)
    return f"{source.name}:{locator}"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    return f"{seconds // 3600} h"


def clean_at_start(root: Path, grace_seconds: float) -> list[Path]:
    """What ``serve`` runs before listening: stale temp names removed, interrupted collections put back
    in the folder store at ``root`` (``Settings.document_folder_path``)."""
    if not root.is_dir():
        return []
    done = ContentStore(root).clean_stale(grace_seconds)
    for path in done:
        log.info("content store: %s %s", "restored" if path.name.startswith(".gc-") else "removed stale", path)
    return done
