"""Where document bytes really live: the SourceSystem interface and its two implementations.

The repository never assumes its own copy exists. ``ContentStore`` keeps documents that arrive by
ITI-41 (content-addressed files under the data directory); ``FolderSource`` reads the files a
source system already writes, in place. A third adapter (an EHR API, a database) implements the
same three methods.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

CHUNK = 1 << 20


@dataclass(frozen=True)
class Located:
    """A document's bytes as a file to stream, and what we know of it right now."""

    path: Path
    size: int
    mtime_ns: int


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


class ContentStore:
    """Content-addressed files under ``root`` (``ab/abcdef...``, named by SHA-1), written atomically.

    Identical content is stored once; ``put`` returns the locator (the SHA-1) and whether this
    call created the file, so a failed registration removes only what it added.
    """

    name = "store"

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, sha1: str) -> Path:
        return self.root / sha1[:2] / sha1

    def put(self, data: bytes, sha1: str | None = None) -> tuple[str, bool]:
        sha1 = sha1 or hashlib.sha1(data).hexdigest()
        path = self._path(sha1)
        if path.exists():
            return sha1, False
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha1, True

    def discard(self, sha1: str) -> None:
        self._path(sha1).unlink(missing_ok=True)

    def locate(self, locator: str) -> Located | None:
        path = self._path(locator)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return Located(path, st.st_size, st.st_mtime_ns)

    def digest(self, locator: str) -> tuple[str, int]:
        return sha1_file(self._path(locator))


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
        return sorted(p for p in self.root.rglob("*")
                      if p.suffix.lower() in suffixes and p.is_file() and not p.name.startswith("."))
