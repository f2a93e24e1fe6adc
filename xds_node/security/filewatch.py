"""Files every worker re-reads: ``partners.toml`` and ``clients.toml`` decide who is trusted, and a
change made by ``xds-node partners ...`` (or an editor) must hold for the next request in every
worker process on every host that shares the file, without a restart.

:class:`WatchedFile` keeps the parsed content of one file and, on each :meth:`~WatchedFile.get`,
compares the file's stat signature (device, inode, size, mtime and ctime in nanoseconds) with the
one it parsed: one ``stat`` system call per request (about a microsecond), no thread, no inotify
(which does not see changes made on another host over NFS). A changed file is parsed outside the
lock and swapped in with one assignment, so readers never see half a store. A file that fails to
parse keeps the last good content and logs one error per change of the file (not per request);
a missing file means the ``empty`` content (nothing trusted: fail closed).

Writers use :func:`atomic_write` (temporary file + rename), so a reader sees the old file or the
new one and never a half-written one; the rename also gives the file a new inode, which makes two
writes within one mtime tick still look different.

The same class serves any file of this shape: ``WatchedFile(path, ClientStore.load, empty=...)``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
_Signature = tuple[int, int, int, int, int] | None


def stat_signature(path: Path) -> _Signature:
    """What identifies one version of a file; None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class WatchedFile(Generic[T]):
    """The parsed content of ``path``, re-parsed when the file changes (see the module docstring)."""

    def __init__(self, path: Path, load: Callable[[Path], T], *, empty: Callable[[], T], what: str = "file") -> None:
        self.path = Path(path)
        self._load = load
        self._empty = empty
        self._what = what
        self._lock = threading.Lock()
        self._value: T = empty()
        self._signature: _Signature | bool = False  # False: never read
        self._failed: _Signature | bool = False  # the signature of the last broken version seen
        self.reloads = 0

    def prime(self) -> T:
        """Read the file now, raising when it is broken (at start there is no last good version)."""
        with self._lock:
            sig = stat_signature(self.path)
            value = self._empty() if sig is None else self._load(self.path)
            self._value, self._signature, self._failed = value, sig, False
            return value

    def get(self) -> T:
        """The current content: one ``stat``; a parse only when the file changed."""
        sig = stat_signature(self.path)
        if sig == self._signature or sig == self._failed:
            return self._value
        with self._lock:
            sig = stat_signature(self.path)
            if sig == self._signature or sig == self._failed:
                return self._value
            if sig is None:
                if self._signature is not False:
                    log.warning("%s %s is gone: nothing in it is trusted any more", self._what, self.path)
                value = self._empty()
            else:
                try:
                    value = self._load(self.path)
                except Exception as exc:  # keep serving with the last good content
                    self._failed = sig
                    log.error("%s %s is not valid, keeping the last good version: %s", self._what, self.path,
                              exc)
                    return self._value
                if self._signature is not False:
                    log.info("%s %s changed: reloaded", self._what, self.path)
            self._value, self._signature, self._failed = value, sig, False
            self.reloads += 1
            return value


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` in one rename (readers see the old or the new file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if path.exists():
            os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def edit_lock(path: Path) -> Iterator[None]:
    """Serialize read-modify-write of ``path`` between command-line invocations (``<path>.lock``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
