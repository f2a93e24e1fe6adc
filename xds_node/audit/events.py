"""One audit record per transaction: who asked for what about whom, and what we answered.

The event is transport-neutral: the same record is stored in the ``audit_event`` table, listed and
exported by the CLI, turned into an accounting of disclosures, and rendered as a DICOM / IHE ATNA
AuditMessage for a syslog Audit Record Repository. It carries the verified SAML claims (never the
raw header values) so an audit line can be trusted as much as the authorization decision was.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Outcome = Literal["success", "partial", "denied", "failure", "error", "attempt"]
Direction = Literal["inbound", "outbound"]
#: Who the caller was: a pinned partner community, one of our own internal clients, or nobody we
#: could authenticate ("" when unknown, e.g. an outbound row built from a local requester context).
CallerKind = Literal["partner", "internal", "anonymous", ""]
CALLER_KINDS = frozenset({"partner", "internal", "anonymous", ""})

#: Every stored text field holds at most this many characters (issue 9: a stranger's 9 MB
#: wsa:MessageID must neither fill the disk nor overflow a column and lose the row) ...
MAX_FIELD_CHARS = 1024
#: ... and at most this many UTF-8 bytes, so an indexed value always fits a PostgreSQL btree
#: entry (about 2,700 bytes) even when it is 1,024 four-byte characters.
MAX_FIELD_BYTES = 2048
#: ``document_ids`` keeps at most this many ids (above the default ``max_query_results``) and this
#: many characters in all; the rest is summarised by one marker entry carrying their SHA-256.
MAX_DOCUMENT_IDS = 10_000
MAX_DOCUMENT_IDS_CHARS = 1_000_000

#: The free-text fields bounded by :func:`bound_text` when an event is built.
BOUNDED_FIELDS = (
    "transaction", "partner_community", "partner_organization", "partner_organization_id", "partner",
    "user_subject_id", "user_role_code", "user_role_display", "user_role_system", "purpose_of_use",
    "purpose_of_use_display", "purpose_of_use_system", "patient_id", "repository_unique_id", "query_id",
    "message_id", "remote_address", "endpoint", "reason", "reply_to",
)  # fmt: skip


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()


def bound_text(value: str, limit: int = MAX_FIELD_CHARS) -> str:
    """``value`` if it fits, else its head plus ``…[truncated N chars sha256=HEX]`` (N and the
    digest describe the full value), never more than ``limit`` characters or MAX_FIELD_BYTES bytes.

    NUL becomes the text ``\\x00`` (PostgreSQL text cannot hold it). Idempotent, so a row read back
    and built into an event again is unchanged.
    """
    if len(value) <= limit // 4 and "\x00" not in value:  # fast path: cannot exceed either bound
        return value
    full = value
    if "\x00" in value:
        value = value.replace("\x00", "\\x00")
    if len(value) <= limit and len(value.encode("utf-8", "surrogatepass")) <= MAX_FIELD_BYTES:
        return value
    marker = f"\u2026[truncated {len(full)} chars sha256={_sha256(full)}]"
    head = value[: max(0, limit - len(marker))]
    room = MAX_FIELD_BYTES - len(marker.encode("utf-8"))
    encoded = head.encode("utf-8", "surrogatepass")
    if len(encoded) > room:
        head = encoded[:room].decode("utf-8", "ignore")  # drops a character cut in half
    return head + marker


def bound_ids(ids: list[str]) -> list[str]:
    """Bounded ids, at most MAX_DOCUMENT_IDS entries and MAX_DOCUMENT_IDS_CHARS characters; what
    does not fit is replaced by one last ``…[N more document ids sha256=HEX]`` entry (digest of the
    omitted ids joined by newlines). Idempotent, like :func:`bound_text`."""
    if len(ids) <= MAX_DOCUMENT_IDS:  # fast path: every id fits as it is (one pass in C)
        joined = "".join(ids)
        if len(joined) <= MAX_DOCUMENT_IDS_CHARS and "\x00" not in joined \
                and max(map(len, ids), default=0) <= MAX_FIELD_CHARS // 4:
            return list(ids)
    out: list[str] = []
    used = 0
    for raw in ids:
        item = bound_text(raw)
        used += len(item)
        out.append(item)
        if len(out) > MAX_DOCUMENT_IDS or used > MAX_DOCUMENT_IDS_CHARS:
            break
    else:
        return out
    kept: list[str] = []
    used = 0
    for item in out:  # leave room for the marker entry
        if len(kept) >= MAX_DOCUMENT_IDS - 1 or used + len(item) > MAX_DOCUMENT_IDS_CHARS - 256:
            break
        kept.append(item)
        used += len(item)
    rest = ids[len(kept):]
    return [*kept, f"\u2026[{len(rest)} more document ids sha256={_sha256(chr(10).join(rest))}]"]


#: DICOM PS3.15 A.5 EventOutcomeIndicator: 0 success, 4 minor failure, 8 serious failure,
#: 12 major failure. A partial answer (XCA PartialSuccess) is a minor failure; a policy denial or a
#: rejected request ends the action (serious); an internal error makes the service unavailable.
#: ``attempt``: an outbound disclosure about to be sent, committed first (fail closed); the call's
#: own row (success / failure) follows it.
OUTCOME_INDICATOR: dict[str, int] = {"success": 0, "partial": 4, "denied": 8, "failure": 8, "error": 12,
                                     "attempt": 0}

#: Outcomes in which information left the node (what an accounting of disclosures lists).
DISCLOSED = ("success", "partial")

#: IHE transaction code -> name, as ``EventTypeCode`` (code system "IHE Transactions") spells it.
TRANSACTION_NAMES: dict[str, str] = {
    "ITI-18": "Registry Stored Query",
    "ITI-38": "Cross Gateway Query",
    "ITI-39": "Cross Gateway Retrieve",
    "ITI-41": "Provide and Register Document Set-b",
    "ITI-42": "Register Document Set-b",
    "ITI-43": "Retrieve Document Set",
    "ITI-51": "Multi-Patient Stored Query",
    "ITI-55": "Cross Gateway Patient Discovery",
}

#: Transactions that are queries (DICOM EventID 110112 "Query", action E).
QUERY_TRANSACTIONS = frozenset({"ITI-18", "ITI-38", "ITI-51", "ITI-55"})
#: Transactions that move documents: who sends exports (R), who receives imports (C).
RETRIEVE_TRANSACTIONS = frozenset({"ITI-39", "ITI-43"})
SUBMIT_TRANSACTIONS = frozenset({"ITI-41", "ITI-42"})


def default_action_code(transaction: str, direction: str) -> str:
    """The DICOM EventActionCode ITI TF-2 gives each side of a transaction."""
    if transaction in RETRIEVE_TRANSACTIONS:
        # a responder (inbound request) exports the documents; an initiator imports them
        return "R" if direction == "inbound" else "C"
    if transaction in SUBMIT_TRANSACTIONS:
        # a recipient (inbound) imports (creates); a source (outbound) exports (reads)
        return "C" if direction == "inbound" else "R"
    return "E"


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(kw_only=True, slots=True)
class AuditEvent:
    """One audited transaction (inbound: a partner asked us; outbound: we asked a partner).

    ``partner_*`` fields describe the other community; ``user_*`` and ``purpose_of_use`` are the
    XSPA claims of the human requestor. ``reply_to`` and ``query_message`` are only carried to the
    ATNA message and are not stored (the request body can be large; the stored row is the record).
    """

    transaction: str
    outcome: Outcome = "success"
    direction: Direction = "inbound"
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    time: datetime = field(default_factory=utcnow)
    action_code: str = ""  # "" -> default_action_code(transaction, direction)
    partner_community: str = ""
    partner: str = ""  # trust-store partner name or internal client name of the caller
    caller_kind: CallerKind = ""
    partner_organization: str = ""
    partner_organization_id: str = ""
    user_subject_id: str = ""
    user_role_code: str = ""
    user_role_display: str = ""
    user_role_system: str = "2.16.840.1.113883.6.96"  # SNOMED CT, as eHealth Exchange uses
    purpose_of_use: str = ""
    purpose_of_use_display: str = ""
    purpose_of_use_system: str = "2.16.840.1.113883.3.18.7.1"  # nhin-purpose
    patient_id: str | None = None
    document_ids: list[str] = field(default_factory=list)
    repository_unique_id: str | None = None
    query_id: str | None = None
    message_id: str = ""
    remote_address: str = ""
    endpoint: str = ""
    reason: str = ""
    reply_to: str = ""
    query_message: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOME_INDICATOR:
            raise ValueError(f"unknown audit outcome {self.outcome!r}")
        if self.direction not in ("inbound", "outbound"):
            raise ValueError(f"unknown audit direction {self.direction!r}")
        if self.caller_kind not in CALLER_KINDS:
            raise ValueError(f"unknown caller kind {self.caller_kind!r}")
        # bounded here, once, so allowed and denied rows, the syslog copy and the table agree
        values = [getattr(self, name) or "" for name in BOUNDED_FIELDS]
        joined = "".join(values)
        if "\x00" in joined or max(map(len, values)) > MAX_FIELD_CHARS // 4:  # else each fits as it is
            for name, value in zip(BOUNDED_FIELDS, values, strict=True):
                if value:
                    setattr(self, name, bound_text(value))
        if self.document_ids:
            self.document_ids = bound_ids(self.document_ids)
        if self.time.tzinfo is None:
            self.time = self.time.replace(tzinfo=UTC)
        if not self.action_code:
            self.action_code = default_action_code(self.transaction, self.direction)

    @property
    def outcome_indicator(self) -> int:
        """The DICOM EventOutcomeIndicator (0, 4, 8 or 12)."""
        return OUTCOME_INDICATOR[self.outcome]

    @property
    def transaction_name(self) -> str:
        return TRANSACTION_NAMES.get(self.transaction, self.transaction)

    @classmethod
    def from_principal(cls, principal: Any, *, transaction: str, **kwargs: Any) -> AuditEvent:
        """Build an event from a verified :class:`xds_node.security.principal.Principal`.

        Duck-typed (reads ``subject_id``, ``organization``, ``organization_id``,
        ``home_community_id``, ``role`` and ``purpose_of_use`` coded values, ``partner`` and
        ``kind``) so audit does not depend on the SAML code; ``principal`` may be ``None`` (request
        rejected before SAML, or an anonymous caller): the row then says ``anonymous``. An object
        without ``partner`` (a local requester context on an outbound row) leaves the kind unknown.
        """
        if principal is None:
            kwargs = {"caller_kind": "anonymous"} | kwargs
        else:
            role = getattr(principal, "role", None)
            pou = getattr(principal, "purpose_of_use", None)
            base: dict[str, Any] = {
                "partner_community": getattr(principal, "home_community_id", "") or "",
                "partner_organization": getattr(principal, "organization", "") or "",
                "partner_organization_id": getattr(principal, "organization_id", "") or "",
                "user_subject_id": getattr(principal, "subject_id", "") or "",
            }
            if hasattr(principal, "partner"):
                base |= {"partner": principal.partner or "", "caller_kind": getattr(principal, "kind", "partner")}
            if role is not None:
                base |= {"user_role_code": role[0] or "", "user_role_display": _display(role)}
                if len(role) > 1 and role[1]:
                    base["user_role_system"] = role[1]
            if pou is not None:
                base |= {"purpose_of_use": pou[0] or "", "purpose_of_use_display": _display(pou)}
                if len(pou) > 1 and pou[1]:
                    base["purpose_of_use_system"] = pou[1]
            kwargs = base | kwargs
        return cls(transaction=transaction, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view of the stored fields (ISO 8601 UTC time; no request body)."""
        return {
            "event_id": self.event_id,
            "time": self.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "transaction": self.transaction,
            "action_code": self.action_code,
            "outcome": self.outcome,
            "outcome_indicator": self.outcome_indicator,
            "direction": self.direction,
            "partner_community": self.partner_community,
            "partner": self.partner,
            "caller_kind": self.caller_kind,
            "partner_organization": self.partner_organization,
            "partner_organization_id": self.partner_organization_id,
            "user_subject_id": self.user_subject_id,
            "user_role_code": self.user_role_code,
            "user_role_display": self.user_role_display,
            "purpose_of_use": self.purpose_of_use,
            "patient_id": self.patient_id,
            "document_ids": list(self.document_ids),
            "repository_unique_id": self.repository_unique_id,
            "query_id": self.query_id,
            "message_id": self.message_id,
            "remote_address": self.remote_address,
            "endpoint": self.endpoint,
            "reason": self.reason,
        }


def _display(coded: Any) -> str:
    return (coded[2] if len(coded) > 2 else "") or ""
