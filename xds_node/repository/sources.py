"""Where document bytes really live: the SourceSystem interface and its two implementations.

The repository never assumes its own copy exists. ``ContentStore`` keeps documents that arrive by
ITI-41 (content-addressed files under the data directory); ``FolderSource`` reads the files a
source system already writes, in place. A third adapter (an EHR API, a database) implements the
same three methods.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

CHUNK = 1 << 20


@dataclass(frozen=True)
class Located:
    """A document's bytes as a file to stream (or, from the database store, the bytes themselves
    or a chunk stream), and what we know of it right now."""

    path: Path | None
    size: int
    mtime_ns: int
    data: bytes | None = None
    #: called once while the answer is written: yields the bytes chunk by chunk
    stream: Callable[[], Iterator[bytes]] | None = None

    def body(self):
        """What a response attaches: the bytes, a :class:`~xds_node.soap.mtom.Streamed`, or the file."""
        if self.data is not None:
            return self.data
        if self.stream is not None:
            from xds_node.soap.mtom import Streamed

            return Streamed(self.size, self.stream)
        return self.path


class SourceSystem(Protocol):
    name: str

    def locate(self, locator: str) -> Located | None:
        """The file holding the document, or None when it is gone."""

    def digest(self, locator: str) -> tuple[str, int]:
        """(SHA-1 hex, size) of the document as it is now (used when it may have changed)."""


def sha1_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha1()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


class Lease(NamedTuple):
    """A hard link (``.incoming-*``) to a content file, held from ``put`` until the registration ended.

    While it exists the file's bytes cannot disappear and the collector leaves the file alone
    (its link count is above one), whoever else writes, fails or collects concurrently.
    """

    sha1: str
    path: Path
    created: bool  # this put wrote the bytes (otherwise they were already stored)


TEMP_PREFIX = ".incoming-"
QUARANTINE_PREFIX = ".gc-"


class ContentStore:
    """Content-addressed files under ``root`` (``ab/abcdef...``, named by SHA-1), written atomically.

    Identical content is stored once, so a file may belong to many entries and to requests still in
    flight; the store must never delete bytes a committed entry refers to. Chosen design: **hard-link
    leases plus a collector that re-checks the database after taking the file out of reach**.

    - ``put`` returns a :class:`Lease`: a second name for the file's inode (a new file's temp name
      becomes the lease; an existing file gets ``os.link``). One atomic syscall each, no database
      round trip, no clock: a request between ``put`` and commit is visible as ``st_nlink > 1``.
    - ``release(lease, data)`` after a successful commit re-links the name from the lease (or
      rewrites it from ``data``) if a collector raced it away, then drops the lease.
    - Removal (a failed request's cleanup, ``fsck --repair``) goes through ``Repository.collect``:
      rename the file to a ``.gc-*`` name (so no new ``put`` can lease it; a ``put`` now writes a
      fresh file), then delete only if the inode has no other link *and* the database has no
      committed entry naming it; otherwise restore. Whatever order concurrent steps run in, a
      committed entry either is seen by that check or re-links its own bytes before letting go.

    Why not the alternatives: reference counts in the registration transaction cannot see a request
    between ``put`` and its commit (it needs a lease anyway) and add a contended row write per
    document; a pure grace period (``put`` refreshing mtime, collector skipping young files) trusts
    clocks across hosts and request durations, and leaves a failed request's bytes on disk until the
    next collection. The grace period still applies to ``.incoming-*`` names (a crashed request's
    lease or temp file), aged by ``st_ctime``, which every link change refreshes, so it never
    over-states a live lease's age.
    """

    name = "store"

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha1: str) -> Path:
        return self.root / sha1[:2] / sha1

    def put(self, data: bytes, sha1: str | None = None) -> tuple[str, Lease]:
        """Store ``data`` (if not there yet) and pin it with a lease; ``release`` the lease when done."""
        sha1 = sha1 or hashlib.sha1(data).hexdigest()
        path = self.path_for(sha1)
        while True:
            lease = self._link_lease(path)
            if lease is not None:
                if os.stat(lease).st_size == len(data):
                    return sha1, Lease(sha1, lease, False)
                # the stored copy is damaged (truncated by a failing disk?): this request heals it
                lease.unlink(missing_ok=True)
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self._write_temp(path.parent, data)
                fresh = self._link_lease(tmp)  # the lease: a second name for the new inode
                try:
                    os.replace(tmp, path)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    if fresh is not None:
                        fresh.unlink(missing_ok=True)
                    raise
                if fresh is not None:
                    return sha1, Lease(sha1, fresh, True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._write_temp(path.parent, data)
            try:
                os.link(tmp, path)  # never replaces: an existing file may be leased by someone else
            except FileExistsError:
                tmp.unlink(missing_ok=True)
                continue  # written meanwhile by another request: lease that one
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            return sha1, Lease(sha1, tmp, True)

    def release(self, lease: Lease, data: bytes | None = None) -> None:
        """The registration committed: make sure the file is in place, then drop the lease."""
        path = self.path_for(lease.sha1)
        try:
            os.link(lease.path, path)  # only does anything when a collector took the name meanwhile
        except FileExistsError:
            pass
        except FileNotFoundError:  # the lease itself was removed (older than the grace period)
            if data is not None and not path.exists():
                self._restore_from(path, data)
        lease.path.unlink(missing_ok=True)

    def drop(self, lease: Lease) -> None:
        """The registration failed: let go of the lease (removal of the bytes is ``collect``'s call)."""
        lease.path.unlink(missing_ok=True)

    def _restore_from(self, path: Path, data: bytes) -> None:
        tmp = self._write_temp(path.parent, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _link_lease(path: Path) -> Path | None:
        """A fresh ``.incoming-*`` hard link to ``path``, or None when ``path`` does not exist."""
        while True:
            lease = path.parent / (TEMP_PREFIX + secrets.token_hex(8))
            try:
                os.link(path, lease)
                return lease
            except FileExistsError:
                continue
            except FileNotFoundError:
                return None

    @staticmethod
    def _write_temp(directory: Path, data: bytes) -> Path:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp)

    # --- removal, in steps that Repository.collect orders around its database checks ---------------
    def quarantine(self, sha1: str) -> Path | None:
        """Take the file out of reach of new leases (rename to ``.gc-*``); None if it is not there."""
        path = self.path_for(sha1)
        q = path.parent / f"{QUARANTINE_PREFIX}{sha1}-{secrets.token_hex(4)}"
        try:
            os.rename(path, q)
        except FileNotFoundError:
            return None
        return q

    @staticmethod
    def has_other_links(q: Path) -> bool:
        try:
            return os.stat(q).st_nlink > 1
        except FileNotFoundError:
            return True  # someone else restored or removed it: not ours to decide

    def restore(self, q: Path) -> None:
        """Put a quarantined file back under its name (unless a fresh copy is already there)."""
        sha1 = q.name.removeprefix(QUARANTINE_PREFIX).rsplit("-", 1)[0]
        with contextlib.suppress(FileExistsError, FileNotFoundError):
            os.link(q, self.path_for(sha1))
        q.unlink(missing_ok=True)

    # --- inventory (fsck) ----------------------------------------------------------------------
    def scan(self) -> Iterator[tuple[str, Path, os.stat_result]]:
        """Every name under the store: ("content" | "temp" | "quarantine" | "unexpected", path, lstat)."""
        for top in sorted(os.scandir(self.root), key=lambda e: e.name):
            if not top.is_dir(follow_symlinks=False):
                yield "unexpected", Path(top.path), top.stat(follow_symlinks=False)
                continue
            for entry in sorted(os.scandir(top.path), key=lambda e: e.name):
                kind = ("temp" if entry.name.startswith(TEMP_PREFIX)
                        else "quarantine" if entry.name.startswith(QUARANTINE_PREFIX)
                        else "content" if _SHA1.fullmatch(entry.name) and entry.name[:2] == top.name
                        and entry.is_file(follow_symlinks=False)
                        else "unexpected")
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed while we looked
                yield kind, Path(entry.path), st

    def clean_stale(self, grace_seconds: float, *, now: float | None = None) -> list[Path]:
        """Remove ``.incoming-*`` names older than the grace period and put back interrupted
        collections (``.gc-*``); what was done, for the log. Run by ``serve`` at start."""
        now = time.time() if now is None else now
        done: list[Path] = []
        for kind, path, st in self.scan():
            if kind == "temp" and now - st.st_ctime >= grace_seconds:
                path.unlink(missing_ok=True)
                done.append(path)
            elif kind == "quarantine":
                self.restore(path)
                done.append(path)
        return done

    def locate(self, locator: str) -> Located | None:
        path = self.path_for(locator)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return Located(path, st.st_size, st.st_mtime_ns)

    def digest(self, locator: str) -> tuple[str, int]:
        return sha1_file(self.path_for(locator))


_SHA1 = re.compile(r"[0-9a-f]{40}")


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. no permission to look: the indexer reports it when it tries to read
        return True


class FolderSource:
    """Documents that stay where the source system writes them; locators are paths under ``root``."""

    def __init__(self, root: Path, name: str | None = None):
        self.root = Path(root).resolve()
        self.name = name or f"folder:{self.root}"

    def locator_for(self, path: Path) -> str:
        return Path(path).resolve().relative_to(self.root).as_posix()

    def _path(self, locator: str) -> Path:
        path = (self.root / locator).resolve()
        if not path.is_relative_to(self.root):  # a locator never escapes its folder
            raise ValueError(f"locator {locator!r} is outside {self.root}")
        return path

    def locate(self, locator: str) -> Located | None:
        try:
            st = self._path(locator).stat()
        except (FileNotFoundError, ValueError):
            return None
        return Located(self._path(locator), st.st_size, st.st_mtime_ns)

    def digest(self, locator: str) -> tuple[str, int]:
        return sha1_file(self._path(locator))

    def files(self, suffixes: tuple[str, ...] = (".xml",)) -> list[Path]:
        """Candidate files, symlinks included (the indexer decides whether their target may be used)."""
        return sorted(p for p in self.root.rglob("*")
                      if p.suffix.lower() in suffixes and not p.name.startswith(".") and _is_file(p))
