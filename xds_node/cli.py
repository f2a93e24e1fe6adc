"""The ``xds-node`` command line: serve, demo, config.

Subcommands stay thin: they build a :class:`~xds_node.node.Node` from settings and call into it.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
from pathlib import Path

from xds_node.config import load_settings

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_documents"


def _settings(args: argparse.Namespace, **overrides):
    return load_settings(getattr(args, "config", None), **{k: val for k, val in overrides.items() if val is not None})


def _serve(settings, *, workers: int | None = None, tls: dict | None = None) -> None:
    import uvicorn

    # uvicorn worker processes rebuild the app from the environment, so export the settings
    os.environ["XDS_DATA_DIR"] = str(settings.data_dir)
    os.environ["XDS_HOST"] = settings.host
    os.environ["XDS_PORT"] = str(settings.port)
    if settings.database_url:
        os.environ["XDS_DATABASE_URL"] = settings.database_url
    workers = workers or settings.workers
    kwargs = dict(host=settings.host, port=settings.port, log_level="warning", access_log=False,
                  http="httptools", loop="uvloop", timeout_keep_alive=30)
    kwargs.update(tls or {})
    if workers > 1:
        _upgrade_schema(settings)  # once, here: the workers then find the schema current
        uvicorn.run("xds_node.node:create_app", factory=True, workers=workers, **kwargs)
    else:
        from xds_node.node import Node, tune_gc

        node = Node(settings)
        app = node.app()
        tune_gc()
        uvicorn.run(app, **kwargs)


def _upgrade_schema(settings) -> None:
    from xds_node import migrations
    from xds_node.db import make_engine

    engine = make_engine(settings.db_url)
    try:
        migrations.upgrade(engine, auto=settings.db_auto_upgrade)
    finally:
        engine.dispose()


def cmd_db(args: argparse.Namespace) -> int:
    """Schema migrations: upgrade (idempotent), current revision, check against this code, new revision."""
    from xds_node import migrations
    from xds_node.db import make_engine

    settings = _settings(args, data_dir=args.data_dir)
    engine = make_engine(settings.db_url)
    try:
        if args.action == "upgrade":
            before, after = migrations.upgrade(engine)
            print(f"schema at {after}" + ("" if before == after else f" (was {before or 'empty'})"))
        elif args.action == "current":
            print(f"{migrations.current(engine) or 'none'} (this xds-node: {migrations.head()})")
        elif args.action == "check":
            problems = migrations.check(engine)
            for line in problems:
                print(line)
            print("schema is current" if not problems else f"{len(problems)} difference(s)")
            return 1 if problems else 0
        else:  # revision: autogenerate from the difference between the database at head and the tables
            from alembic import command

            migrations.upgrade(engine)
            with engine.connect() as conn:
                command.revision(migrations.config(conn), message=args.message, autogenerate=True,
                                 rev_id=args.rev_id or f"{int(migrations.head()) + 1:04d}")
                conn.commit()
    finally:
        engine.dispose()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args, host=args.host, port=args.port, data_dir=args.data_dir)
    tls = None
    if args.tls_cert or args.tls_key or args.mtls:
        if not (args.tls_cert and args.tls_key):
            print("--tls-cert and --tls-key go together (and --mtls needs both)", file=sys.stderr)
            return 2
        from xds_node.tlsserver import uvicorn_tls_options

        settings.base_url = settings.base_url or f"https://{settings.host}:{settings.port}"
        tls = uvicorn_tls_options(settings, args.tls_cert, args.tls_key, mtls=args.mtls)
    mode = " with mutual TLS (partner certificates required)" if args.mtls else ""
    print(f"xds-node serving on {settings.public_url}{mode} (database {settings.db_url})", flush=True)
    _serve(settings, workers=args.workers, tls=tls)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from xds_node.demo import load_samples, print_banner

    settings = _settings(args, host=args.host, port=args.port, data_dir=args.data_dir)
    if args.fresh and Path(settings.data_dir).exists():
        shutil.rmtree(settings.data_dir)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    from xds_node.admin import init_keys
    from xds_node.node import Node

    keys = init_keys(settings)  # demo keys + partners.toml, so the gateway endpoints work with security on
    node = Node(settings)
    summary = load_samples(node, SAMPLE_DIR)
    for patient in summary.patients:  # demo data only: every fictional veteran has opted in
        if node.consent_store.status(patient).state != "granted":
            node.consent_store.grant(patient, source="demo", note="xds-node demo: fictional patient")
    print_banner(node, summary, keys)
    node.close()
    _serve(settings, workers=1)
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    """Index source-system folders (documents stay in place); ``--watch`` keeps polling them."""
    from rich.console import Console
    from rich.progress import Progress

    from xds_node.node import Node

    console = Console(stderr=True)
    settings = _settings(args, data_dir=args.data_dir)
    node = Node(settings)
    indexers = [node.folder_indexer(Path(p)) for p in args.paths]
    failed = False
    for indexer in indexers:
        total = len(indexer.folder.files())
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"indexing {indexer.folder.root}", total=total)
            report = indexer.sync(progress=lambda _p, task=task: progress.advance(task))
        console.print(f"[bold]{indexer.folder.root}[/]: {report.summary()}")
        for path, reason in report.rejected:
            console.print(f"  [red]rejected[/] {path}: {reason}")
        failed = failed or bool(report.rejected)
    if args.watch:
        import threading

        console.print(f"watching {len(indexers)} folder(s) every {args.interval:g} s; Ctrl+C to stop")
        stop = threading.Event()

        def show(report) -> None:
            console.print(report.summary())
            for path, reason in report.rejected:
                console.print(f"  [red]rejected[/] {path}: {reason}")

        try:
            while not stop.is_set():
                for indexer in indexers:
                    report = indexer.sync()
                    if report.registered or report.replaced or report.removed or report.rejected:
                        show(report)
                stop.wait(args.interval)
        except KeyboardInterrupt:
            pass
    node.close()
    return 1 if failed and not args.watch else 0


def cmd_retrieve(args: argparse.Namespace) -> int:
    """ITI-43 against a running node: fetch documents by uniqueId and write them to files."""
    import asyncio

    from xds_node.ebxml import vocabulary as v
    from xds_node.ebxml import xdsb
    from xds_node.soap.client import SoapClient, SoapTransportError
    from xds_node.soap.fault import SoapFault

    settings = _settings(args)
    url = args.url or settings.public_url + "/xds/repository"
    repo = args.repository or settings.repository_unique_id
    requests = [xdsb.DocumentRequest(repo, uid, args.home) for uid in args.document_ids]

    async def run():
        async with SoapClient(timeout=args.timeout) as client:
            return await client.call(url, v.Action.ITI43, xdsb.write_retrieve_request(requests), mtom=True)

    try:
        reply = asyncio.run(run())
    except (SoapFault, SoapTransportError) as exc:
        print(f"retrieve failed: {exc}", file=sys.stderr)
        return 2
    rr = reply.body.find(f"{{{v.RS}}}RegistryResponse")
    status = rr.get("status", "").rsplit(":", 1)[-1] if rr is not None else "?"
    for err in reply.body.iter(f"{{{v.RS}}}RegistryError"):
        print(f"{err.get('errorCode')}: {err.get('codeContext')}", file=sys.stderr)
    out = Path(args.output)
    written = 0
    for dr in reply.body.iter(f"{{{v.XDSB}}}DocumentResponse"):
        uid = dr.findtext(f"{{{v.XDSB}}}DocumentUniqueId")
        data = reply.binary(dr.find(f"{{{v.XDSB}}}Document"))
        target = out / _safe_name(uid) if (len(requests) > 1 or out.is_dir()) else out
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        print(f"{uid} -> {target} ({len(data)} bytes, {dr.findtext(f'{{{v.XDSB}}}mimeType')})")
        written += 1
    print(f"status {status}: {written} of {len(requests)} document(s) retrieved")
    return 0 if written == len(requests) else 1


def _safe_name(uid: str) -> str:
    return "".join(ch if ch.isalnum() or ch in ".-_" else "_" for ch in uid) + ".xml"


def cmd_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    for f in dataclasses.fields(settings):
        print(f"{f.name} = {getattr(settings, f.name)!r}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xds-node", description="IHE XDS.b / XCA / XCPD document-exchange node")
    parser.add_argument("--config", help="TOML settings file (default: $XDS_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    def net(p: argparse.ArgumentParser) -> None:
        p.add_argument("--host")
        p.add_argument("--port", type=int)
        p.add_argument("--data-dir", type=Path)

    p = sub.add_parser("serve", help="run the node")
    net(p)
    p.add_argument("--workers", type=int, help="worker processes (default: settings.workers)")
    p.add_argument("--tls-cert", type=Path, help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", type=Path, help="private key of --tls-cert (PEM)")
    p.add_argument("--mtls", action="store_true",
                   help="require a client certificate pinned in partners.toml, matched to the SAML issuer")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="fresh embedded registry with the sample documents, then serve")
    net(p)
    p.add_argument("--keep", dest="fresh", action="store_false", help="keep an existing demo data directory")
    p.set_defaults(func=cmd_demo, fresh=True)

    p = sub.add_parser("load", help="index folders of C-CDA files in place (add, change -> RPLC, remove)")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--data-dir", type=Path)
    p.add_argument("--watch", action="store_true", help="keep polling the folders for changes")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between polls with --watch")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("retrieve", help="ITI-43 retrieve from a running node")
    p.add_argument("document_ids", nargs="+", metavar="DOC_UNIQUE_ID")
    p.add_argument("-o", "--output", required=True, help="file (one document) or directory")
    p.add_argument("--url", help="repository endpoint (default: this node's /xds/repository)")
    p.add_argument("--repository", help="repositoryUniqueId (default: this node's)")
    p.add_argument("--home", help="homeCommunityId to put in each DocumentRequest")
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=cmd_retrieve)

    p = sub.add_parser("db", help="database schema: upgrade, current, check, revision (migrations)")
    p.add_argument("action", choices=["upgrade", "current", "check", "revision"])
    p.add_argument("--data-dir", type=Path)
    p.add_argument("-m", "--message", default="schema change", help="revision: what the change is")
    p.add_argument("--rev-id", help="revision: its id (default: the next number, e.g. 0003)")
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("config", help="print the effective settings")
    p.set_defaults(func=cmd_config)

    from conformance import commands as conformance_commands
    from xds_node import admin
    from xds_node.gateway import commands as gateway_commands

    admin.add_parsers(sub)
    gateway_commands.add_parsers(sub)
    conformance_commands.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
        logging.getLogger("alembic").setLevel(logging.WARNING)  # xds_node.migrations says what changed
    from xds_node.migrations import SchemaError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except SchemaError as exc:  # one clear line, not a traceback
        print(f"xds-node: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
