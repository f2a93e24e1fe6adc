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


def _serve(settings, *, workers: int | None = None) -> None:
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
    if workers > 1:
        uvicorn.run("xds_node.node:create_app", factory=True, workers=workers, **kwargs)
    else:
        from xds_node.node import Node

        node = Node(settings)
        uvicorn.run(node.app(), **kwargs)


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args, host=args.host, port=args.port, data_dir=args.data_dir)
    print(f"xds-node serving on {settings.public_url} (database {settings.db_url})", flush=True)
    _serve(settings, workers=args.workers)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from xds_node.demo import load_samples, print_banner

    settings = _settings(args, host=args.host, port=args.port, data_dir=args.data_dir)
    if args.fresh and Path(settings.data_dir).exists():
        shutil.rmtree(settings.data_dir)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    from xds_node.node import Node

    node = Node(settings)
    summary = load_samples(node, SAMPLE_DIR)
    print_banner(node, summary)
    node.close()
    _serve(settings, workers=1)
    return 0


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
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="fresh embedded registry with the sample documents, then serve")
    net(p)
    p.add_argument("--keep", dest="fresh", action="store_false", help="keep an existing demo data directory")
    p.set_defaults(func=cmd_demo, fresh=True)

    p = sub.add_parser("config", help="print the effective settings")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
