"""The console's own process and listener, started by ``xds-node serve`` and ``xds-node demo``.

Why a process of its own: the partner-facing port never routes to the console (its app does not
contain it), ``serve --workers N`` runs N identical SOAP workers while the console needs one, and a
slow console page or a hostile document rendered for an operator cannot hold up partner traffic.
The socket is bound by the parent first, so a port in use is one line before anything is announced;
the child exits when the parent goes away (even if the parent is killed).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import threading
import time
from typing import Any

log = logging.getLogger("xds_node.console")


def bind(settings: Any) -> socket.socket:
    """The console's listening socket; :class:`~xds_node.httpserver.ListenError` if taken."""
    from xds_node.httpserver import ListenError
    from xds_node.httpserver import bind as bind_socket

    try:
        sock = bind_socket(settings.console_host, settings.console_port)
    except ListenError as exc:
        raise ListenError(exc.errno, exc.strerror.replace("choose --port", "choose console_port")
                          .replace("choose --host", "choose console_host")) from None
    sock.listen(128)
    return sock


def url(settings: Any, tls: dict | None = None) -> str:
    host = settings.console_host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{settings.console_port}"


def start(settings: Any, sock: socket.socket, tls: dict | None = None) -> multiprocessing.process.BaseProcess:
    """Run the console in a child process serving on ``sock`` (TLS: the node's certificate, no
    client certificate asked for: console users log in)."""
    from xds_node.config import effective_json

    options = {k: tls[k] for k in ("ssl_certfile", "ssl_keyfile") if tls and tls.get(k)}
    if settings.console_host in ("0.0.0.0", "::") and not settings.console_server_names:
        log.warning("the console listens on every address (console_host = %s) but answers only to loopback "
                    "names: list the names browsers use to reach it in console_server_names (others get 400)",
                    settings.console_host)
    proc = multiprocessing.get_context("spawn").Process(
        target=_main, args=(effective_json(settings), sock, options, os.getpid()), name="xds-node-console",
        daemon=True)
    proc.start()
    return proc


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(0)
        time.sleep(1.0)


def _main(settings_json: str, sock: socket.socket, tls: dict, parent: int) -> None:
    import uvicorn

    from xds_node.config import from_effective_json
    from xds_node.console.app import create_console_app
    from xds_node.httpserver import LimitedHttpToolsProtocol, NodeConfig, tls_context_factory
    from xds_node.logs import setup_logging
    from xds_node.soap.limits import server_limits

    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watch").start()
    settings = from_effective_json(settings_json)
    setup_logging(settings.log_level, settings.log_format, access_log=settings.access_log)
    app = create_console_app(settings)
    options: dict[str, Any] = dict(log_config=None, access_log=settings.access_log, http=LimitedHttpToolsProtocol,
                                   loop="uvloop", ws="none", proxy_headers=False, lifespan="off")
    if tls:
        options |= tls | {"ssl_ciphers": settings.tls_ciphers, "ssl_context_factory": tls_context_factory}
    config = NodeConfig(app, limits=server_limits(settings), **options)
    uvicorn.Server(config).run(sockets=[sock])
