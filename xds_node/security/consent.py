"""Patient consent to share across communities (VLER Health Exchange style opt-in, revocable).

VA/DoD may disclose a veteran's records to an eHealth Exchange partner only while the veteran's
authorization is in effect, so every XCPD / XCA response asks :class:`ConsentPolicy` first.

Consent is kept as an append-only history of directives: each grant or revocation is a new row
and nothing is ever updated or deleted, because the history itself is evidence (who recorded what,
from which form, when) and an accounting of disclosures must be explainable after the fact.

The directive *in effect* at an instant is the latest one (by ``effective_from``, then
``recorded_at``) that has started and has not lapsed. Times are stored as naive UTC; anything
handed in without a timezone is taken to be UTC.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import Column, DateTime, Engine, Index, Integer, String, Table, Text, insert, select

from xds_node.db import metadata

Kind = Literal["opt-in", "revoke"]
State = Literal["granted", "revoked", "expired", "never"]
Mode = Literal["opt-in", "opt-out"]

#: Usual ways an authorization reaches us; free text is accepted as well.
KNOWN_SOURCES = ("paper form", "online", "in person", "imported")

consent_directives = Table(
    "consent_directive",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("patient_id", String(256), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("effective_from", DateTime, nullable=False),
    Column("effective_until", DateTime),
    Column("source", String(128), nullable=False),
    Column("recorded_by", String(256), nullable=False, default=""),
    Column("recorded_at", DateTime, nullable=False),
    Column("note", Text, nullable=False, default=""),
    #: JSON list of purpose-of-use codes the grant is limited to; NULL means any purpose.
    Column("purposes", Text),
    Index("ix_consent_patient_from", "patient_id", "effective_from"),
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _to_db(value: datetime) -> datetime:
    """Naive UTC for the database (SQLite keeps no zone; one convention for both backends)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None)


def _aware(value: datetime | None) -> datetime:
    """``None`` -> now; naive -> UTC; aware stays as given."""
    if value is None:
        return utcnow()
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _from_db(value: datetime | None) -> datetime | None:
    return None if value is None else value.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Directive:
    """One recorded grant or revocation, exactly as it was written."""

    id: int
    patient_id: str
    kind: Kind
    effective_from: datetime
    effective_until: datetime | None
    source: str
    recorded_by: str
    recorded_at: datetime
    note: str
    purposes: tuple[str, ...] | None = None

    def in_effect(self, at: datetime) -> bool:
        return self.effective_from <= at and (self.effective_until is None or at < self.effective_until)


@dataclass(frozen=True, slots=True)
class ConsentStatus:
    """The outcome of a consent lookup.

    ``expired``: directives exist and at least one has started, but none is in effect any more (a
    time-limited grant lapsed); ``directive`` is then the lapsed one. ``never``: nothing has started
    yet (a future-dated grant alone is still ``never``).
    """

    state: State
    directive: Directive | None

    @property
    def granted(self) -> bool:
        return self.state == "granted"


def _row_to_directive(row) -> Directive:
    purposes = tuple(json.loads(row.purposes)) if row.purposes else None
    return Directive(
        id=row.id,
        patient_id=row.patient_id,
        kind=row.kind,
        effective_from=_from_db(row.effective_from),
        effective_until=_from_db(row.effective_until),
        source=row.source,
        recorded_by=row.recorded_by or "",
        recorded_at=_from_db(row.recorded_at),
        note=row.note or "",
        purposes=purposes,
    )


def _order_key(d: Directive) -> tuple:
    return (d.effective_from, d.recorded_at, d.id)


class ConsentStore:
    """Append-only consent history for patients identified by their CX patient id."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._listeners: list[Callable[[str], None]] = []

    def create_schema(self) -> None:
        metadata.create_all(self.engine, tables=[consent_directives])

    def add_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(patient_id)`` after every grant/revoke (cache invalidation)."""
        self._listeners.append(callback)

    # --- writes -----------------------------------------------------------------------------------
    def grant(
        self,
        patient_id: str,
        *,
        source: str,
        effective_from: datetime | None = None,
        effective_until: datetime | None = None,
        recorded_by: str = "",
        note: str = "",
        purposes: Sequence[str] | None = None,
    ) -> Directive:
        """Record an opt-in (the patient's authorization to share), optionally time-limited."""
        return self._add(patient_id, "opt-in", source, effective_from, effective_until, recorded_by, note, purposes)

    def revoke(
        self,
        patient_id: str,
        *,
        source: str,
        effective_from: datetime | None = None,
        recorded_by: str = "",
        note: str = "",
    ) -> Directive:
        """Record a revocation; it wins over every grant that started before it."""
        return self._add(patient_id, "revoke", source, effective_from, None, recorded_by, note, None)

    def _add(self, patient_id, kind, source, effective_from, effective_until, recorded_by, note, purposes) -> Directive:
        patient_id = (patient_id or "").strip()
        source = (source or "").strip()
        if not patient_id:
            raise ValueError("patient_id is required")
        if not source:
            raise ValueError("source is required (e.g. 'paper form', 'online', 'in person', 'imported')")
        now = utcnow()
        start = _to_db(effective_from or now)
        until = _to_db(effective_until) if effective_until is not None else None
        if until is not None and until <= start:
            raise ValueError("effective_until must be after effective_from")
        row = {
            "patient_id": patient_id,
            "kind": kind,
            "effective_from": start,
            "effective_until": until,
            "source": source[:128],
            "recorded_by": recorded_by or "",
            "recorded_at": _to_db(now),
            "note": note or "",
            "purposes": json.dumps(sorted(set(purposes))) if purposes else None,
        }
        with self.engine.begin() as conn:
            new_id = conn.execute(insert(consent_directives).values(**row)).inserted_primary_key[0]
        for listener in self._listeners:
            listener(patient_id)
        return Directive(
            id=new_id,
            patient_id=patient_id,
            kind=kind,
            effective_from=_from_db(start),
            effective_until=_from_db(until),
            source=row["source"],
            recorded_by=row["recorded_by"],
            recorded_at=_from_db(row["recorded_at"]),
            note=row["note"],
            purposes=tuple(json.loads(row["purposes"])) if row["purposes"] else None,
        )

    # --- reads ------------------------------------------------------------------------------------
    def history(self, patient_id: str) -> list[Directive]:
        """Every directive of the patient, oldest first (by effective_from, then recorded_at)."""
        t = consent_directives
        stmt = select(t).where(t.c.patient_id == patient_id).order_by(t.c.effective_from, t.c.recorded_at, t.c.id)
        with self.engine.connect() as conn:
            return [_row_to_directive(r) for r in conn.execute(stmt)]

    def status(self, patient_id: str, at: datetime | None = None) -> ConsentStatus:
        """The consent state at ``at`` (default now): one indexed query over the started directives."""
        at = _aware(at)
        t = consent_directives
        stmt = (
            select(t)
            .where(t.c.patient_id == patient_id, t.c.effective_from <= _to_db(at))
            .order_by(t.c.effective_from.desc(), t.c.recorded_at.desc(), t.c.id.desc())
        )
        with self.engine.connect() as conn:
            started = [_row_to_directive(r) for r in conn.execute(stmt)]
        return status_from(started, at)


def status_from(directives: Iterable[Directive], at: datetime) -> ConsentStatus:
    """Pick the directive in effect at ``at`` from any set of directives (pure; used by tests and tools)."""
    at = _aware(at)
    started = sorted((d for d in directives if d.effective_from <= at), key=_order_key, reverse=True)
    for d in started:
        if d.in_effect(at):
            return ConsentStatus("granted" if d.kind == "opt-in" else "revoked", d)
    if started:
        return ConsentStatus("expired", started[0])
    return ConsentStatus("never", None)


class ConsentPolicy:
    """The per-request consent decision, cached briefly because it runs on every XCPD/XCA request.

    ``opt-in``: only a patient whose authorization is in effect may be disclosed (VLER default).
    ``opt-out``: everyone may be disclosed unless a revocation is in effect.
    A grant limited to certain purposes of use allows only those purposes when one is given.
    The cache holds decisions for "now" only, for ``ttl`` seconds, and is dropped for a patient the
    moment this process records a grant or revocation for them.
    """

    def __init__(self, store: ConsentStore, mode: Mode = "opt-in", *, ttl: float = 5.0, max_entries: int = 4096):
        if mode not in ("opt-in", "opt-out"):
            raise ValueError(f"consent mode must be 'opt-in' or 'opt-out', not {mode!r}")
        self.store = store
        self.mode = mode
        self.ttl = ttl
        self.max_entries = max_entries
        self._cache: OrderedDict[str, tuple[float, ConsentStatus]] = OrderedDict()
        self._lock = threading.Lock()
        store.add_listener(self.invalidate)

    def invalidate(self, patient_id: str | None = None) -> None:
        with self._lock:
            if patient_id is None:
                self._cache.clear()
            else:
                self._cache.pop(patient_id, None)

    def status(self, patient_id: str, at: datetime | None = None) -> ConsentStatus:
        if at is not None:
            return self.store.status(patient_id, at)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(patient_id)
            if hit is not None and hit[0] > now:
                self._cache.move_to_end(patient_id)
                return hit[1]
        result = self.store.status(patient_id)
        with self._lock:
            self._cache[patient_id] = (now + self.ttl, result)
            self._cache.move_to_end(patient_id)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return result

    def allows(self, patient_id: str, at: datetime | None = None, *, purpose: str | None = None) -> bool:
        """May this patient's information be disclosed (for ``purpose``, when given)?"""
        if not patient_id:
            return False
        st = self.status(patient_id, at)
        if self.mode == "opt-in":
            if st.state != "granted":
                return False
        elif st.state == "revoked":
            return False
        d = st.directive
        if purpose and d is not None and st.state == "granted" and d.purposes is not None:
            return purpose in d.purposes
        return True

    def allows_any(self, patient_ids: Iterable[str], at: datetime | None = None, *, purpose: str | None = None) -> bool:
        """True if any of the ids (one person known under several CX ids) may be disclosed."""
        return any(self.allows(p, at, purpose=purpose) for p in patient_ids)

    def filter_allowed(
        self, patient_ids: Iterable[str], at: datetime | None = None, *, purpose: str | None = None
    ) -> list[str]:
        """The ids that may be disclosed, in order (XCPD drops matches without consent)."""
        return [p for p in patient_ids if self.allows(p, at, purpose=purpose)]


def _fmt_time(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else "-"


def _text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    return "\n".join(out)


def format_history(rows: Sequence[Directive], *, at: datetime | None = None) -> str:
    """A text table of a patient's directives (oldest first) and the resulting current state."""
    if not rows:
        return "no consent directives recorded"
    table = _text_table(
        ["#", "kind", "effective from", "until", "source", "recorded by", "recorded at", "purposes", "note"],
        [
            [
                str(d.id),
                d.kind,
                _fmt_time(d.effective_from),
                _fmt_time(d.effective_until),
                d.source,
                d.recorded_by or "-",
                _fmt_time(d.recorded_at),
                ",".join(d.purposes) if d.purposes else "any",
                d.note.replace("\n", " "),
            ]
            for d in rows
        ],
    )
    now = at or utcnow()
    st = status_from(rows, now)
    summary = f"patient {rows[0].patient_id}: {st.state} as of {_fmt_time(now)}"
    if st.directive is not None:
        summary += f" (directive #{st.directive.id})"
    return table + "\n" + summary
