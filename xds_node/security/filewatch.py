"""Files every worker re-reads: ``partners.toml`` and ``clients.toml`` decide who is trusted, and a
change made by ``xds-node partners ...`` (or an editor) must hold for the next request in every
worker process on every host that shares the file, without a restart.

:class:`WatchedFile` keeps the parsed content of one file and, on each :meth:`~WatchedFile.get`,
compares the file's stat signature (device, inode, size, mtime and ctime in nanoseconds) with the
one it parsed: one ``stat`` system call per request (about a microsecond), no thread, no inotify
(which does not see changes made on another host over NFS). A changed file is parsed outside the
lock and swapped in with one assignment, so readers never see half a store. A file that fails to
parse keeps the last good content and logs one error per change of the file (not per request);
a missing file means the ``empty`` content (nothing trusted: fail closed). A zero-byte file counts
as broken, not as "trust nobody": editors that save in place truncate the file before writing it,
and a reader between the two must not drop every partner (delete the file to trust nobody).

"The last good version" is the last one *any* process parsed or the command line wrote, kept as
``<file>.last-good`` beside it: a worker that was idle while a partner was removed must not fall
back to its own older copy when the next edit breaks the file.

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
            value = self._empty() if sig is None or sig[2] == 0 else self._read(sig)
            self._value, self._signature, self._failed = value, sig, False
            return value

    def _read(self, sig: _Signature) -> T:
        """Parse the file; remember its bytes as the last good version for every process."""
        data = self.path.read_bytes()
        if not data:  # an editor truncating before it writes; delete the file to trust nobody
            raise ValueError("the file is empty")
        value = self._load(self.path)
        if stat_signature(self.path) == sig:  # the bytes read are the version parsed
            record_last_good(self.path, data)
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
                    value = self._read(sig)
                except Exception as exc:
                    self._failed = sig
                    self._value = self._last_good()
                    log.error("%s %s is not valid, keeping the last good version: %s", self._what, self.path,
                              exc)
                    return self._value
                if self._signature is not False:
                    log.info("%s %s changed: reloaded", self._what, self.path)
            self._value, self._signature, self._failed = value, sig, False
            self.reloads += 1
            return value

    def _last_good(self) -> T:
        """The last version any process parsed (or the command line wrote): not just this worker's,
        which may predate a change it never read (a partner removed while it was idle)."""
        snapshot = last_good_path(self.path)
        try:
            if snapshot.exists():
                return self._load(snapshot)
        except Exception as exc:
            log.error("%s %s is not valid either: %s", self._what, snapshot, exc)
        return self._value


def last_good_path(path: Path) -> Path:
    return path.with_name(path.name + ".last-good")


def record_last_good(path: Path, data: bytes) -> None:
    """Keep ``data`` (a version of ``path`` known to parse) beside it, for a later broken version to
    fall back to in every process. Best effort: a read-only directory only loses the fallback."""
    snapshot = last_good_path(path)
    try:
        if snapshot.exists() and snapshot.read_bytes() == data:
            return
        atomic_write(snapshot, data)
    except OSError as exc:
        log.warning("could not keep the last good version of %s: %s", path, exc)


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
