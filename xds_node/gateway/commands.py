"""Command line for people using the initiating gateway: ``discover``, ``query``, ``retrieve-remote``.

Each shows one live line per partner (waiting / answered / timed out / failed) while the fan-out
runs, then a readable table; ``--json`` prints one JSON document for scripts instead. Exit codes:
0 Success, 1 PartialSuccess, 2 Failure (or bad input).

The calls go out as the initiating gateway's system user (see :mod:`xds_node.transactions.ig`)
unless ``--subject-id`` / ``--role`` / ``--purpose`` / ``--npi`` name the person asking.

Naming one of our patients to partners needs that patient's consent (the same decision the
responding gateway makes, for the requester's purpose of use): without it nothing is sent, the
command says why on stderr and exits 2. Patient ids must be CX (``ID^^^&OID&ISO``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from xds_node import term
from xds_node.config import load_settings, require_data_dir
from xds_node.ebxml import vocabulary as v

STATE_STYLE = {"started": ("waiting", "yellow"), "answered": ("answered", "green"),
               "timeout": ("timed out", "red"), "failed": ("failed", "red")}
EXIT = {v.ResponseStatus.SUCCESS: 0, v.ResponseStatus.PARTIAL_SUCCESS: 1, v.ResponseStatus.FAILURE: 2}


def add_parsers(sub: Any) -> None:
    """Register the subcommands on the main parser's subparsers object."""

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data-dir", type=Path)
        p.add_argument("--json", action="store_true", help="print one JSON document (for scripts)")
        p.add_argument("--subject-id", help="XSPA subject-id of the person asking (default: the system user)")
        p.add_argument("--role", help="role as CODE^CODESYSTEM^DISPLAY (SNOMED CT by default)")
        p.add_argument("--purpose", help="purpose of use as CODE[^CODESYSTEM^DISPLAY] (default TREATMENT)")
        p.add_argument("--npi", help="National Provider Identifier of the person asking")

    p = sub.add_parser("discover", help="XCPD patient discovery at every partner; stores correlations")
    common(p)
    p.add_argument("--family", help="required unless --patient names a patient of our index")
    p.add_argument("--given", action="append", default=[], help="given name (repeat for middle names)")
    p.add_argument("--birth-date", help="YYYYMMDD or YYYY-MM-DD (required unless --patient)")
    p.add_argument("--gender", choices=["M", "F", "UN"], help="required unless --patient")
    p.add_argument("--patient", help="our patient id (CX): sends its stored demographics (name, gender, birth "
                   "date, addresses, phones, identifiers), which the options above override; default: "
                   "matched in our patient index")
    p.add_argument("--postal-code", help="replaces the stored addresses")
    p.add_argument("--phone", help="replaces the stored phone numbers")
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("query", help="ITI-38 FindDocuments at every community correlated with a patient")
    common(p)
    p.add_argument("patient", metavar="PATIENT", help="our patient id (CX: ext^^^&root&ISO)")
    p.set_defaults(func=cmd_query)

    p = sub.add_parser("retrieve-remote", help="ITI-39 retrieve from partner communities into a folder")
    common(p)
    p.add_argument("documents", nargs="*", metavar="DOC",
                   help="HOME/REPOSITORY/DOCUMENT_UNIQUE_ID, or a bare uniqueId with --home and --repository")
    p.add_argument("--home", help="homeCommunityId for bare document ids")
    p.add_argument("--repository", help="repositoryUniqueId for bare document ids")
    p.add_argument("--patient", help="retrieve every document an ITI-38 query for this patient finds")
    p.add_argument("-o", "--output", required=True, type=Path, help="directory to write the documents into")
    p.set_defaults(func=cmd_retrieve_remote)


# --- plumbing ---------------------------------------------------------------------------------
def _settings(args: argparse.Namespace):
    overrides = {"data_dir": args.data_dir} if getattr(args, "data_dir", None) else {}
    settings = load_settings(getattr(args, "config", None), **overrides)
    require_data_dir(settings, init=False)
    return settings


def _ctx(args: argparse.Namespace, ig: Any):
    ctx = ig.requester()
    changes: dict[str, Any] = {}
    if args.subject_id:
        changes["subject_id"] = args.subject_id
    if args.role:
        parts = [*args.role.split("^"), "", ""][:3]
        changes["role"] = (parts[0], parts[1] or "2.16.840.1.113883.6.96", parts[2])
    if args.purpose:
        parts = [*args.purpose.split("^"), "", ""][:3]
        changes["purpose_of_use"] = (parts[0], parts[1] or "2.16.840.1.113883.3.18.7.1", parts[2] or parts[0].title())
    if args.npi:
        changes["npi"] = args.npi
    return replace(ctx, **changes) if changes else ctx


def _progress_table(events: list, title: str) -> Table:
    """One row per partner, from its latest :class:`~xds_node.gateway.progress.PartnerEvent`."""
    table = Table(title=title, title_justify="left", expand=False)
    for col in ("partner", "community", "state", "calls", "received", "seconds", "detail"):
        table.add_column(col, justify="right" if col in ("calls", "received", "seconds") else "left")
    for e in events:
        label, style = STATE_STYLE.get(e.kind, (e.kind, ""))
        table.add_row(e.partner, e.community, Text(label, style=style), str(e.calls), str(e.count),
                      f"{e.seconds:.2f}" if e.done else "", e.detail)
    return table


class CommandError(Exception):
    """An expected failure found before anything was sent: one line on stderr, exit 2."""


def _run(args: argparse.Namespace, transaction: str, work: Callable[[Any, Any, Callable], Awaitable[Any]],
         prepare: Callable[[Any], Awaitable[None]] | None = None) -> tuple[Any, Any]:
    """Build the node and gateway, run ``prepare(gateway)`` (which may raise :class:`CommandError`)
    and then ``work(gateway, ctx, progress)`` with a live partner table (one row per partner, fed
    by the gateway's progress events, :mod:`xds_node.gateway.progress`)."""
    from xds_node.gateway.progress import TRANSACTIONS, PartnerEvent, events_to
    from xds_node.node import Node
    from xds_node.transactions.ig import IgSettings, build_gateway

    settings = _settings(args)
    node = Node(settings)
    ig = IgSettings.from_settings(settings)
    ctx = _ctx(args, ig)
    console = term.console(stderr=True)
    title = TRANSACTIONS[transaction]
    latest: dict[tuple[str, str], PartnerEvent] = {}

    async def main():
        gateway = build_gateway(node, ig)
        try:
            if prepare is not None:
                await prepare(gateway)
            if args.json or not console.is_terminal:
                return await work(gateway, ctx, lambda o: None)
            with Live(_progress_table([], title), console=console, refresh_per_second=8,
                      transient=False) as live:
                def show(event: PartnerEvent) -> None:
                    latest[(event.partner, event.community)] = event
                    live.update(_progress_table(list(latest.values()), title))

                return await work(gateway, ctx, events_to(show, transaction))
        finally:
            await gateway.client.aclose()

    try:
        result = asyncio.run(main())
    finally:
        node.close()
    if not args.json and not console.is_terminal and getattr(result, "partners", None):
        console.print(_progress_table([PartnerEvent.of(o, transaction) for o in result.partners], title))
    return result, term.console()


def _errors(console: Console, errors: list) -> None:
    if not errors:
        return
    table = Table("error", "location", "detail", title="errors", title_justify="left")
    for e in errors:
        table.add_row(Text(e.code, style="red" if e.is_error else "yellow"), e.location or "", e.context)
    console.print(table)


def _cx_or_none(args: argparse.Namespace, value: str | None) -> bool:
    """False (after a one-line error) when ``value`` is given but is not a CX patient id."""
    from xds_node.security.consent import check_patient_id

    if value is None:
        return True
    try:
        check_patient_id(value)
    except ValueError as exc:
        print(f"{args.command}: {exc}", file=sys.stderr)
        return False
    return True


def _finish(args: argparse.Namespace, console: Console, result: Any) -> int:
    if getattr(result, "refused", ""):
        print(f"{args.command}: refused: {result.refused}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _errors(console, result.errors)
        console.print(f"status: [bold]{result.status.rsplit(':', 1)[-1]}[/]")
    return EXIT.get(result.status, 2)


# --- commands ---------------------------------------------------------------------------------
def _typed_demographics(args: argparse.Namespace) -> dict[str, Any]:
    """The demographics given on the command line, as Demographics fields (only those given)."""
    from xds_node.patients.model import Address, normalize_date

    typed: dict[str, Any] = {}
    if args.family:
        typed["family"] = args.family
    if args.given:
        typed["given"] = list(args.given)
    if args.birth_date:
        typed["birth_date"] = normalize_date(args.birth_date.replace("-", ""))
    if args.gender:
        typed["gender"] = args.gender
    if args.postal_code:
        typed["addresses"] = [Address(postal_code=args.postal_code)]
    if args.phone:
        typed["telecoms"] = [args.phone]
    return typed


def cmd_discover(args: argparse.Namespace) -> int:
    """``--patient`` sends what our index holds for the patient (the typed values win); without
    it the typed demographics are all there is, so name, birth date and gender are required."""
    from xds_node.patients.model import Demographics

    if not _cx_or_none(args, args.patient):
        return 2
    typed = _typed_demographics(args)
    missing = [f"--{k.replace('_', '-')}" for k in ("family", "birth_date", "gender") if k not in typed]
    if missing and not args.patient:
        print(f"discover: {', '.join(missing)} required (or --patient for a patient of our index)", file=sys.stderr)
        return 2
    demo = Demographics(**typed)

    async def prepare(gateway) -> None:
        nonlocal demo
        if not args.patient:
            return
        stored = await asyncio.to_thread(gateway.patients.get, args.patient) if gateway.patients else None
        if stored is not None:
            demo = replace(stored.demographics, **typed)
        elif missing:
            raise CommandError(f"{args.patient} is not in our patient index: give {', '.join(missing)} "
                               "(or add the patient with `xds-node patients add`)")

    async def work(gateway, ctx, progress):
        return await gateway.discover(demo, ctx, local_patient_id=args.patient, progress=progress)

    try:
        result, console = _run(args, "ITI-55", work, prepare)
    except CommandError as exc:
        print(f"discover: {exc}", file=sys.stderr)
        return 2
    if not args.json and not result.refused:
        console.print(f"our patient: [bold]{result.local_patient_id or '(none matched: correlations not stored)'}[/]")
        table = Table("partner", "community", "their patient id", "name", "birth date", "gender", "score",
                      "correlation", title="matches", title_justify="left")
        for m in result.matches:
            d = m.to_dict()
            corr = Text("stored", style="green") if m.stored else Text(m.reason or "not stored", style="yellow")
            table.add_row(m.partner, m.community, m.remote_patient_id, d["name"], d["birth_date"] or "",
                          d["gender"] or "", f"{m.score:.2f}", corr)
        console.print(table)
        for o in result.partners:
            if o.retry:
                console.print(f"{o.partner}: {o.retry}")
    return _finish(args, console, result)


def cmd_query(args: argparse.Namespace) -> int:
    if not _cx_or_none(args, args.patient):
        return 2

    uncorrelated = False

    async def work(gateway, ctx, progress):
        nonlocal uncorrelated
        result = await gateway.query(args.patient, ctx, progress=progress)
        # "0 documents, Success" would read as "the partners have nothing": say why nobody was asked
        uncorrelated = not result.refused and not await asyncio.to_thread(gateway.correlated, args.patient)
        return result

    result, console = _run(args, "ITI-38", work)
    if uncorrelated:
        if args.json:
            print(json.dumps({**result.to_dict(), "correlated": False}, indent=2))
        print(f"query: no partner community is correlated with {args.patient}: "
              "run `xds-node discover` first", file=sys.stderr)
        return 1
    if not args.json and not result.refused:
        _documents_table(console, result.documents())
    return _finish(args, console, result)


def _documents_table(console: Console, docs: list[dict]) -> None:
    table = Table("home", "type / title", "created", "document uniqueId", "repository", "mime",
                  title=f"{len(docs)} document(s)", title_justify="left")
    for d in sorted(docs, key=lambda d: (d["creation_time"] or ""), reverse=True):
        created = d["creation_time"] or ""
        if len(created) >= 8:
            created = f"{created[:4]}-{created[4:6]}-{created[6:8]}"
        table.add_row(d["home"] or "", d["title"] or d["type"] or "", created, d["document_unique_id"] or "",
                      d["repository_unique_id"] or "", d["mime_type"] or "")
    console.print(table)


def parse_document_spec(spec: str, home: str | None, repository: str | None):
    """``HOME/REPOSITORY/DOC`` or a bare ``DOC`` (with ``--home`` and ``--repository``)."""
    from xds_node.ebxml.xdsb import DocumentRequest

    parts = spec.split("/")
    if len(parts) == 3 and all(parts):
        return DocumentRequest(parts[1], parts[2], parts[0])
    if len(parts) == 1 and home and repository:
        return DocumentRequest(repository, spec, home)
    raise ValueError(f"{spec!r}: use HOME/REPOSITORY/DOCUMENT_UNIQUE_ID, or --home and --repository")


def cmd_retrieve_remote(args: argparse.Namespace) -> int:
    from xds_node.ebxml.xdsb import DocumentRequest
    from xds_node.gateway.initiating import RetrieveResult

    try:
        refs = [parse_document_spec(s, args.home, args.repository) for s in args.documents]
    except ValueError as exc:
        print(f"retrieve-remote: {exc}", file=sys.stderr)
        return 2
    if not refs and not args.patient:
        print("retrieve-remote: name documents or --patient", file=sys.stderr)
        return 2
    if not _cx_or_none(args, args.patient):
        return 2

    async def work(gateway, ctx, progress):
        wanted = list(refs)
        if args.patient:
            found = await gateway.query(args.patient, ctx)
            if found.refused:  # our patient may not be named to partners: retrieve nothing either
                return RetrieveResult(v.ResponseStatus.FAILURE, errors=found.errors, refused=found.refused)
            wanted += [DocumentRequest(d["repository_unique_id"], d["document_unique_id"], d["home"])
                       for d in found.documents() if d["document_unique_id"]]
        return await gateway.retrieve(wanted, ctx, dest=args.output, progress=progress)

    result, console = _run(args, "ITI-39", work)
    if not args.json and not result.refused:
        table = Table("home", "document uniqueId", "mime", "bytes", "file",
                      title=f"{len(result.documents)} document(s) in {args.output}", title_justify="left")
        for d in result.documents:
            table.add_row(d.home_community_id, d.document_unique_id, d.mime_type, str(d.size), str(d.path or ""))
        console.print(table)
    return _finish(args, console, result)


__all__ = ["add_parsers", "cmd_discover", "cmd_query", "cmd_retrieve_remote", "parse_document_spec"]
