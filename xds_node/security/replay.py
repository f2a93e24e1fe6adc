"""Replay protection shared by every worker and every host that share the database.

A message's replay keys (see :meth:`xds_node.security.saml.InboundVerifier._replay_keys`: its
signature value, its Timestamp, optionally its assertion ID) are each recorded once per partner
until they expire. What is stored per key: the partner, a SHA-256 of the key, when it expires, when
it was first seen and the SHA-256 of the *whole* request message as received.

Decisions, made by :meth:`ReplayStore.admit` in one database transaction:

* every key new: admitted (the keys are inserted; the unique primary key decides, no lookup first);
* a key already recorded: if every key of the message is recorded with the same whole-message digest,
  for the same partner, first seen less than ``resend_window`` ago and resent fewer than
  ``max_resends`` times, the message is a *resend* (a peer that lost our answer sends the very same
  bytes again) and is admitted as such; anything else, such as the same Security header with another
  Body, is refused as ``replayed``;
* a partner whose live entries would pass ``quota`` is refused on its own ("replay quota exceeded");
  no partner can push out another partner's entries, because nothing is ever evicted before it expires.

On the request path (:meth:`DatabaseReplayStore.admit_async`) admissions share group-commit
rounds (:mod:`xds_node.rounds`) with each other and with audit rows: the entries of every request
in a round go in with one ``INSERT ... ON CONFLICT DO NOTHING RETURNING``, and each partner's
counter is moved once per round. A request whose keys are not all new (a resend, a replay, or two
requests of one round sharing a key), or whose partner's counter refuses, has its entries of the
round removed again and is decided after the commit by :meth:`DatabaseReplayStore.admit`, in a
transaction of its own, exactly as before. The counter only counts up; it is reconciled with the
table (expired entries deleted, the partner's rows counted) only when it reaches the quota, and a
partner found full is not counted again before its earliest entry expires. Expired entries of every
partner are deleted at most once a minute per process.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import heapq
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Index,
    Integer,
    String,
    Table,
    and_,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from xds_node.db import insert_rows, metadata
from xds_node.rounds import Db, GroupCommit

log = logging.getLogger(__name__)

replay_entries = Table(
    "replay_entry",
    metadata,
    Column("partner", String(200), primary_key=True),
    #: SHA-256 (hex) of the replay key text
    Column("key_digest", String(64), primary_key=True),
    #: Unix time the entry may be forgotten (the Timestamp's or assertion's expiry plus skew)
    Column("expires_at", Float, nullable=False),
    Column("first_seen", Float, nullable=False),
    #: SHA-256 (hex) of the whole request message, to tell a byte-identical resend from a replay
    Column("request_digest", String(64), nullable=False),
    Column("resends", Integer, nullable=False, default=0),
    Index("ix_replay_entry_expires", "expires_at"),
)

replay_quota = Table(
    "replay_partner",
    metadata,
    Column("partner", String(200), primary_key=True),
    #: Entries counted for the partner (never less than its live entries; reconciled at the quota)
    Column("live", Integer, nullable=False),
    #: Unix time before which a partner found full is refused without counting again
    Column("full_until", Float, nullable=False, default=0.0),
)

#: How often (seconds) a process deletes every partner's expired entries.
PRUNE_INTERVAL = 60.0


class ReplayRefused(Exception):
    """The message may not be processed; ``reason`` is short and safe to send back."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class ReplayKey:
    text: str
    expires: datetime


class ReplayStore(Protocol):
    def admit(self, partner: str, keys: Sequence[ReplayKey], request_digest: str | None,
              now: datetime) -> bool:
        """Record the keys; True when the message is an allowed resend; raise :class:`ReplayRefused`."""
        ...


class _OverQuota(Exception):
    """The partner's counter refused the message: roll its entries back, then reconcile."""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _ts(dt: datetime) -> float:
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


class DatabaseReplayStore:
    """:class:`ReplayStore` on the node's database (SQLite or PostgreSQL); see the module docstring.

    On PostgreSQL the admitting transaction commits with ``synchronous_commit = off``: it does not
    wait for its WAL flush (about 6 ms of the 8 ms an admission took on a loaded test machine; 1.4 ms
    with it off). The price: if the *database server* crashes, the entries of its last fraction of a
    second (at most three WAL-writer delays, 600 ms by default) can be lost, so a message captured
    in that instant could be replayed once before its Timestamp expires. Every other guarantee
    (visibility to every worker at commit, uniqueness) is unchanged. And no answered message is
    exposed: an answer leaves only after its audit row committed *synchronously*, and that commit
    flushes the WAL up to itself, this admission included (WAL is one sequential log), so the
    entries that can be lost are those of requests that were never answered.
    """

    def __init__(self, engine: Engine, *, quota: int = 200_000, resend_window: float = 120.0,
                 max_resends: int = 3, group: GroupCommit | None = None) -> None:
        """``group``: the group commit :meth:`admit_async` joins (the node passes the audit trail's
        on SQLite, one of the admissions' own on PostgreSQL: see ``Node._replay_rounds``); without
        one, ``admit_async`` admits on a thread."""
        self.engine = engine
        self.group = group
        self._rounds = _Admissions(self)
        self.quota = quota
        self.resend_window = resend_window
        self.max_resends = max_resends
        self._next_prune = 0.0
        self._prune_lock = threading.Lock()
        # The hot path is driver-level SQL (no statement objects built per request).
        self._pg = engine.dialect.name == "postgresql"
        self._count_sql = _count_sql("?" if engine.dialect.paramstyle == "qmark" else "%s")

    def create_schema(self) -> None:
        metadata.create_all(self.engine, tables=[replay_entries, replay_quota])

    @staticmethod
    def _rows(partner: str, keys: Sequence[ReplayKey], request_digest: str | None, t: float) -> list[dict]:
        return [{"partner": partner, "key_digest": _digest(k.text), "expires_at": _ts(k.expires),
                 "first_seen": t, "request_digest": request_digest or "", "resends": 0}
                for k in keys if _ts(k.expires) >= t]  # still valid at its last instant: recorded

    async def admit_async(self, partner: str, keys: Sequence[ReplayKey], request_digest: str | None,
                          now: datetime) -> bool:
        """:meth:`admit`, in this event loop's next group-commit round (see the module docstring);
        what the round cannot decide alone is decided by :meth:`admit` on a thread afterwards."""
        t = now.timestamp()
        if t >= self._next_prune:  # housekeeping on a thread: never a lock wait on the loop
            self._next_prune = t + PRUNE_INTERVAL  # scheduled once, not by every request until it runs
            asyncio.get_running_loop().run_in_executor(None, self._prune, t)
        rows = self._rows(partner, keys, request_digest, t)
        if not rows:
            return False
        if self.group is not None and await self.group.submit(self._rounds, rows):
            return False
        return await asyncio.to_thread(self.admit, partner, keys, request_digest, now)

    def admit(self, partner: str, keys: Sequence[ReplayKey], request_digest: str | None,
              now: datetime) -> bool:
        t = now.timestamp()
        rows = self._rows(partner, keys, request_digest, t)
        self._maybe_prune(t)
        if not rows:
            return False
        try:
            for attempt in range(2):
                try:
                    with self.engine.begin() as conn:
                        if self._pg:  # see the class docstring
                            conn.exec_driver_sql("SET LOCAL synchronous_commit TO OFF")
                        # The entries first, the partner's counter last: the counter row is what
                        # every worker and host admitting for this partner waits on, so it is held
                        # only from its UPDATE to the commit (counter first serialised each
                        # partner's admissions on the INSERT too).
                        # keys in the order rounds take them (see _Admissions.apply); ``rows``
                        # itself keeps the signature key first for _conflict
                        insert_rows(conn, replay_entries, sorted(rows, key=lambda r: r["key_digest"]))
                        n, limit = len(rows), self.quota - len(rows)
                        counted = conn.exec_driver_sql(self._count_sql, (n, partner, limit)).rowcount
                        if counted == 1:
                            return False
                        raise _OverQuota
                except _OverQuota:
                    pass  # rolled back: nothing of this message stays
                except IntegrityError:
                    return self._conflict(partner, rows, request_digest, t)
                if attempt == 0:
                    self._reconcile(partner, len(rows), t)
            raise ReplayRefused("replay quota exceeded")
        except ReplayRefused as refused:
            # A full partner's resend (or replay) of a message it already sent is decided as such:
            # it adds no entry. One lookup, on the refusal path only.
            if refused.reason != "replayed" and self._known(partner, rows):
                return self._conflict(partner, rows, request_digest, t)
            raise

    def _reconcile(self, partner: str, n: int, t: float) -> None:
        """The partner's counter is at the quota (or missing): drop its expired entries and count the
        rest. Raises ReplayRefused when it is really full (remembering until when)."""
        with self.engine.begin() as conn:
            row = conn.execute(select(replay_quota.c.full_until).where(replay_quota.c.partner == partner)).first()
            if row is None:
                conn.execute(self._insert_quota_row().values(partner=partner, live=0, full_until=0.0))
                row = (0.0,)
            if row[0] > t:
                raise ReplayRefused("replay quota exceeded")
            conn.execute(delete(replay_entries).where(replay_entries.c.partner == partner,
                                                      replay_entries.c.expires_at <= t))
            live = conn.execute(select(func.count()).select_from(replay_entries)
                                .where(replay_entries.c.partner == partner)).scalar_one()
            full_until = 0.0
            if live + n > self.quota:
                full_until = conn.execute(select(func.min(replay_entries.c.expires_at))
                                          .where(replay_entries.c.partner == partner)).scalar_one() or 0.0
                log.warning("partner %r is over its replay quota (%d entries): refusing its messages", partner,
                            live)
            conn.execute(update(replay_quota).where(replay_quota.c.partner == partner)
                         .values(live=live, full_until=full_until))
        if full_until:
            raise ReplayRefused("replay quota exceeded")

    def _insert_quota_row(self):
        """INSERT ... ON CONFLICT DO NOTHING (another worker may create the row at the same time)."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(replay_quota).on_conflict_do_nothing()
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(replay_quota).on_conflict_do_nothing()

    def _known(self, partner: str, rows: list[dict]) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(replay_entries.c.key_digest).where(
                replay_entries.c.partner == partner,
                replay_entries.c.key_digest.in_([r["key_digest"] for r in rows])).limit(1)).first() is not None

    def _conflict(self, partner: str, rows: list[dict], request_digest: str | None, t: float) -> bool:
        """Some key is taken: a resend of the very same message, or a replay."""
        if not request_digest or self.resend_window <= 0:
            raise ReplayRefused("replayed")
        digests = [r["key_digest"] for r in rows]
        with self.engine.begin() as conn:
            found = conn.execute(
                select(replay_entries.c.key_digest, replay_entries.c.request_digest, replay_entries.c.first_seen,
                       replay_entries.c.expires_at)
                .where(replay_entries.c.partner == partner, replay_entries.c.key_digest.in_(digests))).all()
            same = (len(found) == len(rows)
                    and all(f.request_digest == request_digest and f.expires_at > t
                            and t - f.first_seen <= self.resend_window for f in found))
            if not same:
                raise ReplayRefused("replayed")
            bumped = conn.execute(
                update(replay_entries)
                .where(replay_entries.c.partner == partner, replay_entries.c.key_digest == digests[0],
                       replay_entries.c.resends < self.max_resends)
                .values(resends=replay_entries.c.resends + 1)).rowcount
            if bumped != 1:
                raise ReplayRefused("replayed")
        return True

    def _maybe_prune(self, t: float) -> None:
        if t < self._next_prune:
            return
        self._next_prune = t + PRUNE_INTERVAL
        self._prune(t)

    def _prune(self, t: float) -> None:
        """Delete every partner's expired entries (one pass at a time per process)."""
        if not self._prune_lock.acquire(blocking=False):
            return
        try:
            with self.engine.begin() as conn:
                conn.execute(delete(replay_entries).where(replay_entries.c.expires_at <= t))
        except Exception:  # pruning is housekeeping; admission itself never depends on it
            log.exception("could not prune expired replay entries")
        finally:
            self._prune_lock.release()

    def live_entries(self, partner: str, now: datetime | None = None) -> int:
        """Unexpired entries of one partner (for tools and tests; not used per request)."""
        t = now.timestamp() if now is not None else time.time()
        with self.engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(replay_entries).where(
                and_(replay_entries.c.partner == partner, replay_entries.c.expires_at > t))).scalar_one()


@functools.cache
def _count_sql(mark: str) -> str:
    """Move a partner's counter by n unless that would pass its quota (positional: n, partner, limit)."""
    return f"UPDATE replay_partner SET live = live + {mark} WHERE partner = {mark} AND live <= {mark}"


class ReplayUnavailable(RuntimeError):
    """The round holding a message's replay entries was not committed: it cannot be admitted."""


#: Rows per INSERT statement of a round (5 parameters each: well inside every backend's limit).
_ROWS_PER_INSERT = 200


class _Admissions:
    """Replay admissions of a group-commit round (see the module docstring). A job is the rows
    of one message (all of one partner); its result is True when the round admitted it, False
    when :meth:`DatabaseReplayStore.admit` must decide it after the commit."""

    relaxed = True  # see DatabaseReplayStore: entries of a never-answered request may be lost

    def __init__(self, store: DatabaseReplayStore) -> None:
        self.store = store
        self._sql: dict[tuple[str, int], str] = {}

    def _insert_sql(self, db: Db, n: int) -> str:
        sql = self._sql.get((db.mark, n))
        if sql is None:
            one = "(" + ", ".join([db.mark] * 5) + ", 0)"
            sql = self._sql[(db.mark, n)] = (
                "INSERT INTO replay_entry (partner, key_digest, expires_at, first_seen, request_digest, resends) "
                f"VALUES {', '.join([one] * n)} ON CONFLICT DO NOTHING RETURNING partner, key_digest")
        return sql

    def apply(self, db: Db, jobs: list[list[dict]]) -> list[bool]:
        admitted = [True] * len(jobs)
        claimed: set[tuple[str, str]] = set()
        rows: list[dict] = []
        for i, job in enumerate(jobs):
            keys = [(r["partner"], r["key_digest"]) for r in job]
            if any(k in claimed for k in keys):
                admitted[i] = False  # another message of this round holds the key: decided after it
                continue
            claimed.update(keys)
            rows.extend(job)
        # One lock order for every transaction that writes entries (rounds on every worker and
        # host, and admit()): by (partner, key), then the counters by partner. Rounds taking the
        # same rows in opposite orders deadlocked on PostgreSQL, which aborted one of them with
        # every request in it (tests/security/test_replay_rounds_lock_order.py).
        rows.sort(key=lambda r: (r["partner"], r["key_digest"]))
        inserted: set[tuple[str, str]] = set()
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start:start + _ROWS_PER_INSERT]
            params = [v for r in chunk for v in (r["partner"], r["key_digest"], r["expires_at"], r["first_seen"],
                                                  r["request_digest"])]
            inserted.update((p, k) for p, k in db.rows(self._insert_sql(db, len(chunk)), params))
        counts: dict[str, int] = {}
        for i, job in enumerate(jobs):
            if not admitted[i]:
                continue
            mine = [(r["partner"], r["key_digest"]) for r in job if (r["partner"], r["key_digest"]) in inserted]
            if len(mine) != len(job):  # some key was recorded before: a resend or a replay
                admitted[i] = False
                self._remove(db, mine)
            else:
                counts[job[0]["partner"]] = counts.get(job[0]["partner"], 0) + len(job)
        quota = self.store.quota
        for partner, n in sorted(counts.items()):
            if db.rowcount(_count_sql(db.mark), (n, partner, quota - n)) != 1:
                # over the quota (or no counter row yet): this partner's messages of the round
                # are decided one by one by admit(), which reconciles the counter
                for i, job in enumerate(jobs):
                    if admitted[i] and job[0]["partner"] == partner:
                        admitted[i] = False
                        self._remove(db, [(r["partner"], r["key_digest"]) for r in job])
        return admitted

    @staticmethod
    def _remove(db: Db, keys: list[tuple[str, str]]) -> None:
        for partner, key in keys:
            db.rowcount(f"DELETE FROM replay_entry WHERE partner = {db.mark} AND key_digest = {db.mark}",
                        (partner, key))

    def failed(self, error: BaseException, size: int) -> BaseException:
        return ReplayUnavailable(f"replay entries not committed ({size} in the transaction)")

    def committed(self, payloads: list[list[dict]]) -> None:
        return None


class MemoryReplayStore:
    """:class:`ReplayStore` in one process's memory, with the same rules as the database one.

    Only for a single process (tools, unit tests): a node always uses :class:`DatabaseReplayStore`,
    because replay state kept per process lets a message through once per worker.
    """

    def __init__(self, *, quota: int = 200_000, resend_window: float = 120.0, max_resends: int = 3) -> None:
        self.quota = quota
        self.resend_window = resend_window
        self.max_resends = max_resends
        self._lock = threading.Lock()
        # partner -> key digest -> [expires, first_seen, request_digest, resends]
        self._entries: dict[str, dict[str, list]] = {}
        self._heaps: dict[str, list[tuple[float, str]]] = {}

    def admit(self, partner: str, keys: Sequence[ReplayKey], request_digest: str | None,
              now: datetime) -> bool:
        t = now.timestamp()
        rows = [(_digest(k.text), _ts(k.expires)) for k in keys if _ts(k.expires) >= t]
        with self._lock:
            entries = self._entries.setdefault(partner, {})
            heap = self._heaps.setdefault(partner, [])
            while heap and heap[0][0] <= t:
                exp, key = heapq.heappop(heap)
                if key in entries and entries[key][0] == exp:
                    del entries[key]
            taken = [entries.get(d) for d, _ in rows]
            if any(x is not None for x in taken):
                if (request_digest and self.resend_window > 0 and all(x is not None for x in taken)
                        and all(x[2] == request_digest and t - x[1] <= self.resend_window for x in taken)  # type: ignore[index]
                        and taken[0][3] < self.max_resends):  # type: ignore[index]
                    taken[0][3] += 1  # type: ignore[index]
                    return True
                raise ReplayRefused("replayed")
            if len(entries) + len(rows) > self.quota:
                raise ReplayRefused("replay quota exceeded")
            for d, exp in rows:
                entries[d] = [exp, t, request_digest or "", 0]
                heapq.heappush(heap, (exp, d))
            return False


# --- the older process-wide cache (kept for callers of its API) ------------------------------------
class ReplayCache:
    """Remembers keys until they expire. ``seen`` records and answers in one atomic step.

    Memory is bounded by ``max_entries``. When the cache is full of entries that have not yet
    expired, ``seen`` answers True (treat as a replay) instead of forgetting a live entry. It is
    shared by every partner of one process: prefer :class:`DatabaseReplayStore`, which bounds each
    partner on its own and holds on every worker.
    """

    def __init__(self, max_entries: int = 100_000, *, clock: Callable[[], datetime] | None = None) -> None:
        self.max_entries = max_entries
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._expiry: dict[str, datetime] = {}
        self._heap: list[tuple[datetime, str]] = []

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)

    def _evict(self, now: datetime) -> None:
        heap, expiry = self._heap, self._expiry
        while heap and heap[0][0] <= now:
            exp, key = heapq.heappop(heap)
            if expiry.get(key) == exp:
                del expiry[key]

    def seen(self, key: str, expires: datetime, *, now: datetime | None = None) -> bool:
        """True if ``key`` is already recorded and unexpired; otherwise record it until ``expires``."""
        now = now or self._clock()
        with self._lock:
            self._evict(now)
            if key in self._expiry:
                return True
            if len(self._expiry) >= self.max_entries:
                return True
            if expires <= now:
                return False
            self._expiry[key] = expires
            heapq.heappush(self._heap, (expires, key))
            return False

    def admit(self, partner: str, keys: Sequence[ReplayKey], request_digest: str | None,
              now: datetime) -> bool:
        """The :class:`ReplayStore` interface over this cache (no resends, no per-partner bound)."""
        replayed = False
        for k in keys:
            replayed = self.seen(f"{partner}|{k.text}", k.expires, now=now) or replayed
        if replayed:
            raise ReplayRefused("replayed")
        return False
