"""One small module per IHE transaction: parse the payload, call the actor, write the answer.

Each module exposes ``ACTION`` and ``make_handler(...)`` returning the async SOAP handler; the
pure ``respond``-style functions below the handler are what tests and other transactions reuse
(ITI-38 is ITI-18 with the XCA profile rules).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from lxml import etree

from xds_node.soap.fault import SoapFault

P = ParamSpec("P")
T = TypeVar("T")


#: Run database work on the event loop itself. Right for embedded SQLite, where a query takes a
#: fraction of a millisecond and a thread hand-off (GIL switching) costs more than it saves;
#: the node turns it off for network databases so one slow query never stalls the others.
INLINE_DB = False


async def blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run database-bound actor code, in a worker thread unless INLINE_DB says it is cheap."""
    if INLINE_DB:
        return fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


async def notify(audit, req, transaction: str, result) -> None:
    """Hand a transaction's outcome to the audit recorder; an audit failure never fails the answer."""
    if audit is None:
        return
    try:
        res = audit(req, transaction, result)
        if inspect.isawaitable(res):
            await res
    except Exception:
        logging.getLogger("xds_node.audit").exception("audit of %s failed", transaction)


@dataclass
class Audited:
    """What an internal (XDS / initiating-gateway) transaction did, for its audit row: the same
    shape the gateway transactions hand to ``notify`` (status, patients, documents, error codes)."""

    status: str
    query_id: str | None = None
    patient_ids: list[str] = field(default_factory=list)
    document_ids: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def submission_audit(status: str, submission, errors) -> Audited:
    """ITI-41 / ITI-42: the submission's patient and its documents' uniqueIds."""
    patients: list[str] = []
    if submission is not None:
        ss = submission.submission_set
        found = [ss.patient_id] if ss is not None and ss.patient_id else []
        found += [d.patient_id for d in submission.documents if d.patient_id]
        patients = list(dict.fromkeys(found))
    docs = [d.unique_id for d in submission.documents if d.unique_id] if submission is not None else []
    return Audited(status, patient_ids=patients, document_ids=docs, errors=[e.code for e in errors])


def expect_body(body: etree._Element, ns: str, local: str) -> None:
    """A payload of the wrong type is the sender's mistake: answer with a Sender fault naming it."""
    if body.tag != f"{{{ns}}}{local}":
        raise SoapFault("Sender", f"Expected {local} in the SOAP Body, got {etree.QName(body).localname}")
