"""The ``xds-node`` command line: serve, demo, config.

Subcommands stay thin: they build a :class:`~xds_node.node.Node` from settings and call into it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from pathlib import Path

from xds_node.config import load_settings, mask_url

SAMPLE_DIR = Path(__file__).resolve().parents[1] / "sample_documents"


def _settings(args: argparse.Namespace, **overrides):
    return load_settings(getattr(args, "config", None), **{k: val for k, val in overrides.items() if val is not None})


def _serve(settings, *, workers: int | None = None, tls: dict | None = None, announce=None) -> None:
    # uvicorn with our protocol: header/connection limits and the TLS floor (see httpserver.py)
    from xds_node import httpserver
    from xds_node.config import EFFECTIVE_ENV, effective_json

    # uvicorn worker processes rebuild the app from the environment: hand them every setting as
    # resolved here (config file, XDS_* and command-line options), not a subset
    os.environ[EFFECTIVE_ENV] = effective_json(settings)
    workers = workers or settings.workers
    if settings.console_enabled:  # its own process and port, bound before anything is announced
        from xds_node.console import process as console_process

        _upgrade_schema(settings)  # the console's tables exist before either process reads them
        console_sock = console_process.bind(settings)
        console_process.start(settings, console_sock, tls)
        console_sock.close()  # the child holds its own copy
        announce_node = announce

        def announce() -> None:
            if announce_node is not None:
                announce_node()
            print(f"console on {console_process.url(settings, tls)} (users: `xds-node users add NAME --role ROLE`)",
                  flush=True)
    if workers > 1:
        _upgrade_schema(settings)  # once, here: the workers then find the schema current
        from xds_node.metrics import prepare_multiprocess

        prepare_multiprocess(settings.data_dir)  # /metrics in any worker sums every worker's values
        httpserver.run("xds_node.node:create_app", settings, workers=workers, tls=tls, factory=True,
                       announce=announce)
    else:
        from xds_node.node import Node, tune_gc

        node = Node(settings)
        app = node.app()
        tune_gc()
        httpserver.run(app, settings, tls=tls, announce=announce)


def writable_data_dir(settings) -> None:
    """Refuse to start on a data directory the node cannot write (content store, keys, SQLite),
    instead of failing on the first ITI-41 or audit row."""
    import tempfile

    from xds_node.config import ConfigError

    data = Path(settings.data_dir)
    try:
        data.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=data, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"data directory {data.resolve()} is not writable: {exc.strerror or exc}") from None


def check_tls_material(cert: Path, key: Path) -> None:
    """Load the server certificate and key once before binding: a missing or mismatched file is one
    line naming it, not a traceback after "serving on"."""
    import ssl

    from xds_node.config import ConfigError

    for label, path in (("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).is_file():
            raise ConfigError(f"{label} {path}: no such file")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(str(cert), str(key))
    except (ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"--tls-cert {cert} / --tls-key {key} cannot be used together: "
                          f"{getattr(exc, 'reason', None) or exc}") from None


def database_answers(settings) -> None:
    """Connect once before announcing anything: a wrong URL, role or port is one line, not a
    traceback from every worker."""
    from xds_node.db import make_engine

    engine = make_engine(settings.db_url)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


def _upgrade_schema(settings) -> None:
    from xds_node import migrations
    from xds_node.db import make_engine

    for url in dict.fromkeys((settings.db_url, settings.audit_db_url)):  # the audit trail's own file on SQLite
        engine = make_engine(url)
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
            if settings.audit_db_url != settings.db_url:  # the audit trail's own file (SQLite)
                side = make_engine(settings.audit_db_url)
                try:
                    migrations.upgrade(side)
                finally:
                    side.dispose()
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
    writable_data_dir(settings)
    database_answers(settings)
    tls = None
    if args.tls_cert or args.tls_key or args.mtls:
        if not (args.tls_cert and args.tls_key):
            print("--tls-cert and --tls-key go together (and --mtls needs both)", file=sys.stderr)
            return 2
        from xds_node.tlsserver import uvicorn_tls_options

        check_tls_material(args.tls_cert, args.tls_key)
        settings.base_url = settings.base_url or f"https://{settings.host}:{settings.port}"
        tls = uvicorn_tls_options(settings, args.tls_cert, args.tls_key, mtls=args.mtls)
    from xds_node.repository.fsck import clean_at_start

    clean_at_start(settings.document_folder_path, settings.store_grace_seconds)  # temp files of requests that died
    mode = " with mutual TLS (pinned partner or client certificates required)" if args.mtls else ""

    def announce() -> None:  # called once the socket is bound: never for someone else's port
        print(f"xds-node serving on {settings.public_url}{mode} (database {mask_url(settings.db_url)})",
              flush=True)
        _print_access(settings)

    _serve(settings, workers=args.workers, tls=tls, announce=announce)
    return 0


#: Written into a directory ``demo`` created, so ``--reset`` can prove a directory is demo data.
DEMO_MARKER = ".xds-node-demo"
DEMO_DIR = Path("./xds-demo")


def _demo_dir(args: argparse.Namespace) -> tuple[Path | None, str]:
    """The demo's own data directory, or (None, why not): never a node's directory.

    The demo ignores ``data_dir`` from the environment and the config file on purpose: pointing
    XDS_DATA_DIR at a real node and running the demo must not touch that node's data.
    """
    data = Path(args.data_dir) if args.data_dir else DEMO_DIR
    marked = (data / DEMO_MARKER).exists()
    if data.exists() and not data.is_dir():
        return None, f"{data} exists and is not a directory"
    if data.exists() and any(data.iterdir()) and not marked:
        return None, (f"{data} is not empty and was not created by `xds-node demo`; it is left alone. "
                      f"Choose another --data-dir (the demo's default is {DEMO_DIR})")
    if args.reset and marked:
        shutil.rmtree(data)
    data.mkdir(parents=True, exist_ok=True)
    (data / DEMO_MARKER).write_text("created by `xds-node demo`; `xds-node demo --reset` may delete this directory\n")
    return data, ""


def _print_access(settings) -> None:
    """Who may call each endpoint, printed at every start."""
    from xds_node.node import access_lines

    print("Who may call each endpoint:", *access_lines(settings), sep="\n", flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from xds_node.demo import load_samples, print_banner

    data, why = _demo_dir(args)
    if data is None:
        print(f"xds-node demo: {why}", file=sys.stderr)
        return 2
    # its own SQLite database and partners file too, whatever XDS_DATABASE_URL / the config say
    settings = _settings(args, host=args.host, port=args.port, data_dir=data, database_url="",
                         partners_file=data / "partners.toml")
    from xds_node.admin import init_keys
    from xds_node.node import Node

    keys = init_keys(settings)  # demo keys + partners.toml, so the gateway endpoints work with security on
    node = Node(settings)
    summary = load_samples(node, SAMPLE_DIR)
    for patient in summary.patients:  # demo data only: every fictional veteran has opted in
        if node.consent_store.status(patient).state != "granted":
            node.consent_store.grant(patient, source="demo", note="xds-node demo: fictional patient")
    console_login = _demo_console_user(node) if settings.console_enabled else None
    node.close()

    def banner() -> None:  # the banner (with its curl line) only once the port is ours
        print_banner(node, summary, keys)
        if console_login:
            print(f"Console user {console_login[0]} (administrator), password: {console_login[1]}", flush=True)

    _serve(settings, workers=1, announce=banner)
    return 0


def _demo_console_user(node) -> tuple[str, str] | None:
    """The demo's console administrator, made once with a random password (kept in the demo
    directory so the banner can show it again); None when other users exist already."""
    import secrets

    from xds_node.console.auth import UserStore

    users = UserStore(node.engine)
    saved = Path(node.settings.data_dir) / "console-admin.txt"
    if saved.exists() and users.get("admin") is not None:
        return "admin", saved.read_text().strip()
    if users.list():
        return None
    password = secrets.token_urlsafe(12)
    users.add("admin", "administrator", password, created_by="xds-node demo")
    saved.write_text(password + "\n")
    saved.chmod(0o600)
    return "admin", password


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
        value = getattr(settings, f.name)
        if f.name == "database_url" and value:
            value = mask_url(value)
        print(f"{f.name} = {value!r}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xds-node")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xds-node", description="IHE XDS.b / XCA / XCPD document-exchange node")
    parser.add_argument("--config", help="TOML settings file (default: $XDS_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
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
                   help="require a client certificate pinned in partners.toml or clients.toml")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="embedded registry with the sample documents in ./xds-demo, then serve")
    net(p)
    p.add_argument("--reset", action="store_true",
                   help="start from scratch: delete the demo directory first (only one the demo created)")
    p.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)  # the old default, kept for scripts
    p.set_defaults(func=cmd_demo)

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
    from xds_node.gateway import send as send_command  # `xds-node send`: XDR pushes to a partner

    send_command.add_parser(sub)
    conformance_commands.add_parsers(sub)
    from xds_node.console import commands as console_commands  # `xds-node users`: console users

    console_commands.add_parsers(sub)
    return parser


def _accept_config_everywhere(parser: argparse.ArgumentParser) -> None:
    """``--config`` before or after the subcommand (``xds-node serve --config f.toml`` works too)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if not any("--config" in a.option_strings for a in sub._actions):
                    sub.add_argument("--config", default=argparse.SUPPRESS, help="TOML settings file")
                _accept_config_everywhere(sub)


def explain(exc: BaseException) -> tuple[str, int] | None:
    """One line naming what is wrong and how to fix it, and the exit code; None if unexpected."""
    import ssl
    import tomllib

    from sqlalchemy.exc import ArgumentError, OperationalError

    from xds_node.migrations import SchemaError

    if isinstance(exc, SchemaError):
        return str(exc), 1
    if isinstance(exc, tomllib.TOMLDecodeError):
        return f"the settings file is not valid TOML: {exc}", 2
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").startswith("psycopg"):
        return ("PostgreSQL needs the psycopg driver: pip install 'xds-node[postgres]' "
                "(or pip install 'psycopg[binary]')"), 2
    if isinstance(exc, OperationalError):
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc).splitlines()[0]
        return f"cannot use the database: {reason} (check database_url / XDS_DATABASE_URL)", 1
    if isinstance(exc, ArgumentError):
        return f"database_url is not a database URL SQLAlchemy understands: {exc}", 2
    if isinstance(exc, ssl.SSLError):
        return f"TLS setup failed: {exc.reason or exc} (check the certificate and key files)", 2
    if isinstance(exc, FileNotFoundError):
        return f"file not found: {exc.filename or exc}", 2
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename or exc}", 1
    if isinstance(exc, IsADirectoryError | NotADirectoryError):
        return f"not the expected kind of file: {exc.filename or exc}", 2
    from xds_node.httpserver import ListenError

    if isinstance(exc, ListenError):
        return exc.strerror, 1
    if isinstance(exc, OSError) and exc.errno == 98:  # EADDRINUSE
        return "the address is already in use: another process listens on that port (choose --port)", 1
    if isinstance(exc, ValueError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 2
    return None


def _logging_from(args: argparse.Namespace) -> None:
    """Log level and format from the settings, ``-v`` meaning debug; defaults if settings are broken
    (the command then reports that error itself)."""
    from xds_node.logs import setup_logging

    try:
        settings = load_settings(getattr(args, "config", None))
        level, fmt, access = settings.log_level, settings.log_format, settings.access_log
    except Exception:
        level, fmt, access = "info", "text", False
    setup_logging("debug" if args.verbose else level, fmt, access_log=access)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _accept_config_everywhere(parser)
    args = parser.parse_args(argv)
    _logging_from(args)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `xds-node audit | head`: the reader left; say nothing more and keep Python from
        # complaining about the flush at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:
        if args.debug:
            raise
        known = explain(exc)
        if known is None:
            print(f"xds-node: unexpected error: {type(exc).__name__}: {exc} (run with --debug for details)",
                  file=sys.stderr)
            return 1
        message, code = known
        print(f"xds-node: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
