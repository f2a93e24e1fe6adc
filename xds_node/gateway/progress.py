"""Per-partner progress of an initiating-gateway fan-out, for any front end (CLI, console).

The fan-out in :mod:`xds_node.gateway.initiating` reports each partner's
:class:`~xds_node.gateway.initiating.PartnerOutcome` twice through its ``progress`` callback: when
the call starts (state ``pending``) and when it ends (``answered``, ``failed`` or ``timeout``). The
outcome object is mutated in place, so a consumer that looks at it later sees its final state, not
the one it was told about. This module turns each report into an immutable :class:`PartnerEvent`
(a snapshot) and offers two ways to consume them, without touching the fan-out itself:

* a callback: ``gateway.query(pid, ctx, progress=events_to(handler, "ITI-38"))``;
* an async iterator: ``async for item in follow("ITI-38", lambda p: gateway.query(pid, ctx,
  progress=p))`` yields each :class:`PartnerEvent` as it happens and then one :class:`Finished`
  carrying the operation's result (or its exception).

An operation followed by :func:`follow` runs as a task of its own: a consumer that stops reading
(a browser that went away) does not cancel the partners' calls half-way, so their answers are
still stored and audited.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from xds_node.gateway.initiating import PartnerOutcome, Progress

__all__ = ["TRANSACTIONS", "Finished", "PartnerEvent", "events_to", "follow"]

R = TypeVar("R")
Kind = Literal["started", "answered", "failed", "timeout"]

#: The initiating gateway's fan-outs, by transaction.
TRANSACTIONS = {"ITI-55": "patient discovery (XCPD)", "ITI-38": "cross-community query (ITI-38)",
                "ITI-39": "cross-community retrieve (ITI-39)"}

_KIND: dict[str, Kind] = {"pending": "started", "answered": "answered", "failed": "failed", "timeout": "timeout"}


@dataclass(frozen=True)
class PartnerEvent:
    """One partner's state at one moment of a fan-out.

    ``kind``: started, answered (``count`` results: matches, objects or documents), failed
    (``detail`` says why) or timeout. ``retry`` (XCPD only) says why a second query went out."""

    transaction: str
    kind: Kind
    partner: str
    community: str
    count: int = 0
    detail: str = ""
    seconds: float = 0.0
    calls: int = 0
    retry: str = ""

    @property
    def done(self) -> bool:
        return self.kind != "started"

    @classmethod
    def of(cls, outcome: PartnerOutcome, transaction: str) -> PartnerEvent:
        return cls(transaction, _KIND.get(outcome.state, "failed"), outcome.partner, outcome.community,
                   outcome.count, outcome.detail, round(outcome.seconds, 3), outcome.calls, outcome.retry)

    def to_dict(self) -> dict[str, Any]:
        return {"transaction": self.transaction, "kind": self.kind, "partner": self.partner,
                "community": self.community, "count": self.count, "detail": self.detail,
                "seconds": self.seconds, "calls": self.calls, "retry": self.retry}


@dataclass(frozen=True)
class Finished(Generic[R]):
    """The end of a followed operation: its result, or the exception it raised."""

    result: R | None = None
    error: BaseException | None = None


def events_to(handler: Callable[[PartnerEvent], None], transaction: str) -> Progress:
    """A ``progress`` callback for the gateway that hands ``handler`` one snapshot per report."""

    def progress(outcome: PartnerOutcome) -> None:
        handler(PartnerEvent.of(outcome, transaction))

    return progress


_RUNNING: set[asyncio.Task[Any]] = set()  # operations whose follower left: kept alive until they end


async def follow(transaction: str, start: Callable[[Progress], Awaitable[R]]
                 ) -> AsyncIterator[PartnerEvent | Finished[R]]:
    """Run ``start(progress)`` and yield its partner events as they come, then :class:`Finished`.

    ``start`` receives the progress callback to hand to the gateway method. The operation's own
    exception is not raised here: it arrives as ``Finished(error=...)`` after the events so far."""
    queue: asyncio.Queue[PartnerEvent | Finished[R]] = asyncio.Queue()
    progress = events_to(queue.put_nowait, transaction)

    async def run() -> None:
        try:
            result = await start(progress)
        except Exception as exc:  # the follower decides how to show it
            queue.put_nowait(Finished(error=exc))
        else:
            queue.put_nowait(Finished(result=result))

    task = asyncio.create_task(run())
    _RUNNING.add(task)
    task.add_done_callback(_RUNNING.discard)
    while True:
        item = await queue.get()
        yield item
        if isinstance(item, Finished):
            return
