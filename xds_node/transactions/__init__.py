"""One small module per IHE transaction: parse the payload, call the actor, write the answer.

Each module exposes ``ACTION`` and ``make_handler(...)`` returning the async SOAP handler; the
pure ``respond``-style functions below the handler are what tests and other transactions reuse
(ITI-38 is ITI-18 with the XCA profile rules).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from lxml import etree

from xds_node.soap.fault import SoapFault

P = ParamSpec("P")
T = TypeVar("T")


async def blocking(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run database-bound actor code off the event loop so one slow call never stalls the others."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def expect_body(body: etree._Element, ns: str, local: str) -> None:
    """A payload of the wrong type is the sender's mistake: answer with a Sender fault naming it."""
    if body.tag != f"{{{ns}}}{local}":
        raise SoapFault("Sender", f"Expected {local} in the SOAP Body, got {etree.QName(body).localname}")
