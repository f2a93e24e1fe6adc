"""The operator web console: a Starlette app on its own listener (``console_host:console_port``),
never on the partner-facing port. ``xds-node serve`` and ``xds-node demo`` run it in a process of
its own (:mod:`xds_node.console.process`).

How a page plugs in
-------------------
A page is one module in ``xds_node/console/pages/`` (found by name; no list to edit). It defines

``PAGE = Page(key="documents", title="Documents", roles=roles("administrator", ...), order=60)``
    ``key`` is its URL prefix (``/documents``) and nav id; ``roles`` are the only roles that may use
    any of its routes; ``order`` places it in the navigation (dashboard 10, patients 20, accounting
    30, audit 40, partners 50, documents 60, outside 70, conformance 80, users 90).

``def routes(console: Console) -> list[ConsoleRoute]``
    built with :func:`~xds_node.console.web.route`: ``route("", index)``, ``route("/{uid}", show)``,
    ``route("/{uid}/deprecate", deprecate, methods=["POST"], roles=roles("administrator"))``. A path
    is relative to the page's URL. ``roles`` on a route narrows the page's roles (intersection).

An endpoint takes the Starlette ``Request`` and returns a ``Response``; a plain ``def`` runs in the
thread pool (database work), an ``async def`` on the event loop. ``request.state.user`` is the
logged-in :class:`~xds_node.console.auth.User`; for a POST, ``request.state.form`` is the parsed form
(already CSRF-checked). Render with ``console.render(request, "documents/list.html", **values)``:
templates go in ``templates/<page key>/`` and extend ``base.html`` (``{% block content %}``); Jinja2
autoescaping is on. Every form must carry ``<input type="hidden" name="csrf" value="{{ csrf }}">``.
A POST that changes something calls ``console.audit(request, "<page>-<action>", outcome="attempt",
patient_id=...)`` before the change (it raises when the trail cannot be written: nothing happens)
and again with the result. Every GET is audited by the guard before the endpoint runs (the patient
taken from a ``patient`` path or query parameter).

What the guard does for every route, in this order: a POST without a valid CSRF token is 403
before anything else is read (login included); no session: GET redirects to ``/login``, POST 303s
there; a role not allowed: 403 (audited as denied), whatever links were shown; then the endpoint.
Every answer carries a strict Content-Security-Policy (no inline script or style, nothing from
other origins) and ``Cache-Control: no-store``.
"""

from __future__ import annotations

import importlib
import inspect
import ipaddress
import logging
import pkgutil
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from xds_node.console import pages as pages_package
from xds_node.console.auth import User, csrf_token, csrf_valid, load_secret
from xds_node.console.web import HERE, Console, ConsoleRoute, Page, client_address, local_path

log = logging.getLogger("xds_node.console")

SESSION_COOKIE = "xds_console"
PRE_COOKIE = "xds_console_pre"  # before login: the nonce the login form's CSRF token is bound to
#: No inline script or style, no plugins, no framing, forms post only here, nothing from elsewhere.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=(), payment=()",
}
MAX_FORM_FIELDS = 200


class SecurityHeaders:
    """ASGI middleware: every answer (errors and static files too) gets :data:`SECURITY_HEADERS`;
    a route that set its own value (e.g. a stricter CSP) keeps it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def discover_pages() -> list[Any]:
    """Every module in ``console/pages`` defining ``PAGE`` and ``routes``, in navigation order."""
    modules = []
    for info in pkgutil.iter_modules(pages_package.__path__):
        module = importlib.import_module(f"{pages_package.__name__}.{info.name}")
        if isinstance(getattr(module, "PAGE", None), Page) and callable(getattr(module, "routes", None)):
            modules.append(module)
    modules.sort(key=lambda m: (m.PAGE.order, m.PAGE.key))
    keys = [m.PAGE.key for m in modules]
    if len(keys) != len(set(keys)):
        raise RuntimeError(f"two console pages share a key: {keys}")
    return modules


def _trusted_proxy(settings: Any, address: str) -> bool:
    if not settings.console_proxy_user_header or not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in ipaddress.ip_network(n.strip(), strict=False) for n in settings.console_proxy_trusted)


def _secure(request: Request, settings: Any) -> bool:
    """Cookies get Secure under TLS: ours, or a trusted proxy's that says it terminated it."""
    if request.url.scheme == "https":
        return True
    return _trusted_proxy(settings, client_address(request)) and \
        request.headers.get("x-forwarded-proto", "").lower() == "https"


def _set_cookie(response: Response, request: Request, settings: Any, name: str, value: str) -> None:
    response.set_cookie(name, value, httponly=True, samesite="strict", secure=_secure(request, settings), path="/")


def _csrf_cookie(request: Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE) or request.cookies.get(PRE_COOKIE)


class Refused(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


async def _checked_form(console: Console, request: Request) -> FormData:
    """The POST's form once its CSRF token is valid; :class:`Refused` (403) before anything else."""
    length = request.headers.get("content-length")
    if length is None or not length.isdigit():
        raise Refused(PlainTextResponse("Content-Length required", status_code=411))
    if int(length) > console.settings.console_upload_max_bytes + (1 << 20):
        raise Refused(PlainTextResponse("request too large", status_code=413))
    try:
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS,
                                  max_part_size=console.settings.console_upload_max_bytes + 1)
    except HTTPException as exc:
        raise Refused(PlainTextResponse(f"form not readable: {exc.detail}", status_code=400)) from None
    except Exception:
        raise Refused(PlainTextResponse("form not readable", status_code=400)) from None
    token = form.get("csrf")
    if not csrf_valid(console.secret, _csrf_cookie(request), token if isinstance(token, str) else None):
        raise Refused(PlainTextResponse("forbidden: missing or invalid CSRF token (reload the page and try again)",
                                        status_code=403))
    return form


def _authenticate(console: Console, request: Request) -> tuple[User | None, str | None]:
    """(user, new session cookie value if one was made here for a proxy login)."""
    token = request.cookies.get(SESSION_COOKIE)
    user = console.sessions.user(token)
    settings = console.settings
    header = settings.console_proxy_user_header
    if header and header.lower() in request.headers:
        address = client_address(request)
        if not _trusted_proxy(settings, address):
            log.warning("console: ignoring %s header from %s (not a trusted proxy)", header, address)
            return user, None
        name = request.headers[header].strip()
        if user is not None and user.name == name:
            return user, None
        proxied = console.users.get(name)
        if proxied is None:
            console.audit(request, "login-proxy", outcome="denied", reason=f"no console user {name[:64]!r}")
            return None, None
        console.sessions.end(token)
        console.audit(request, "login-proxy", user=proxied, reason=f"through the trusted proxy {address}")
        return proxied, console.sessions.create(proxied, address)
    return user, None


def _patient_of(request: Request) -> str | None:
    value = request.path_params.get("patient") or request.query_params.get("patient")
    return value[:1024] if isinstance(value, str) and value else None


def guarded(console: Console, page: Page, croute: ConsoleRoute) -> Callable:
    """The route's endpoint behind CSRF, session, role and audit checks (module docstring)."""
    allowed = page.roles & croute.roles if croute.roles is not None else page.roles
    endpoint = croute.endpoint

    async def guard(request: Request) -> Response:
        if request.method == "POST":
            try:
                request.state.form = await _checked_form(console, request)
            except Refused as refused:
                return refused.response
        user, new_token = await run_in_threadpool(_authenticate, console, request)
        if user is None:
            if request.method == "GET":
                return RedirectResponse("/login?next=" + quote(str(request.url.path)), status_code=303)
            return RedirectResponse("/login", status_code=303)
        request.state.user = user
        request.state.page = page
        request.state.csrf = csrf_token(console.secret, new_token or _csrf_cookie(request) or "")
        if user.role not in allowed:
            await run_in_threadpool(console.audit, request, f"{page.key}:{request.method.lower()}",
                                    outcome="denied", reason=f"role {user.role} may not use {request.url.path}")
            response: Response = console.render(request, "forbidden.html", status_code=403)
        else:
            if request.method == "GET":
                await run_in_threadpool(console.audit, request, f"{page.key}:view", patient_id=_patient_of(request))
            request.state.audited = False
            if inspect.iscoroutinefunction(endpoint):
                response = await endpoint(request)
            else:
                response = await run_in_threadpool(endpoint, request)
            if request.method != "GET" and not request.state.audited:  # a page that forgot: still a row
                await run_in_threadpool(console.audit, request, f"{page.key}:{request.method.lower()}",
                                        outcome="success" if response.status_code < 400 else "failure",
                                        patient_id=_patient_of(request), reason=f"HTTP {response.status_code}")
        if new_token:
            _set_cookie(response, request, console.settings, SESSION_COOKIE, new_token)
        return response

    guard.__name__ = f"{page.key}_{getattr(endpoint, '__name__', 'endpoint')}"
    return guard


# --- login, logout, landing ------------------------------------------------------------------
def _login_routes(console: Console) -> list[Route]:
    def login_page(request: Request, *, error: str = "", status: int = 200, name: str = "") -> Response:
        pre = None
        cookie = _csrf_cookie(request)
        if cookie is None:
            cookie = pre = secrets.token_urlsafe(32)
        request.state.csrf = csrf_token(console.secret, cookie)
        response = console.render(request, "login.html", status_code=status, error=error, name=name,
                                  next=local_path(request.query_params.get("next")))
        if pre is not None:
            _set_cookie(response, request, console.settings, PRE_COOKIE, pre)
        return response

    async def login_get(request: Request) -> Response:
        user, new_token = await run_in_threadpool(_authenticate, console, request)
        if user is not None:
            response = RedirectResponse(local_path(request.query_params.get("next")), status_code=303)
            if new_token:
                _set_cookie(response, request, console.settings, SESSION_COOKIE, new_token)
            return response
        return login_page(request)

    async def login_post(request: Request) -> Response:
        try:
            form = await _checked_form(console, request)  # first: CSRF, before the name is looked at
        except Refused as refused:
            return refused.response
        name = str(form.get("name") or "").strip()[:64]
        password = str(form.get("password") or "")
        target = local_path(str(form.get("next") or ""))
        address = client_address(request)

        def attempt() -> tuple[User | None, str, str]:
            throttle = console.throttle
            if throttle.locked(name, address):
                console.audit(request, "login", outcome="denied", reason=f"locked: too many failed logins ({name!r})",
                              user=User(name, ""))
                return None, "", "Too many failed logins: try again later."
            user = console.users.verify(name, password)
            if user is None:
                throttle.failed(name, address)
                console.audit(request, "login", outcome="denied", reason="wrong user name or password",
                              user=User(name, ""))
                return None, "", "Wrong user name or password."
            console.audit(request, "login", user=user)  # fail closed: no session without its audit row
            throttle.succeeded(name)
            console.sessions.end(request.cookies.get(SESSION_COOKIE))
            return user, console.sessions.create(user, address), ""

        user, token, error = await run_in_threadpool(attempt)
        if user is None:
            return login_page(request, error=error, status=401 if "Wrong" in error else 429, name=name)
        response = RedirectResponse(target, status_code=303)
        _set_cookie(response, request, console.settings, SESSION_COOKIE, token)
        response.delete_cookie(PRE_COOKIE, path="/")
        return response

    async def logout(request: Request) -> Response:
        try:
            await _checked_form(console, request)
        except Refused as refused:
            return refused.response
        token = request.cookies.get(SESSION_COOKIE)

        def end() -> None:
            user = console.sessions.user(token)
            if user is not None:
                request.state.user = user
                console.audit(request, "logout")
            console.sessions.end(token)

        await run_in_threadpool(end)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    async def home(request: Request) -> Response:
        user, new_token = await run_in_threadpool(_authenticate, console, request)
        if user is None:
            return RedirectResponse("/login", status_code=303)
        pages = console.visible_pages(user)
        response = RedirectResponse(pages[0].url if pages else "/login", status_code=303)
        if new_token:
            _set_cookie(response, request, console.settings, SESSION_COOKIE, new_token)
        return response

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    return [Route("/", home, methods=["GET"]),
            Route("/favicon.ico", favicon, methods=["GET"]),
            Route("/login", login_get, methods=["GET"]),
            Route("/login", login_post, methods=["POST"]),
            Route("/logout", logout, methods=["POST"])]


async def _not_found(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("not found", status_code=404)


async def _server_error(request: Request, exc: Exception) -> Response:
    log.error("console: error on %s %s: %r", request.method, request.url.path, exc, exc_info=exc)
    return PlainTextResponse("internal error: the action was not completed (see the node's log)", status_code=500)


def create_console_app(settings: Any, node: Any = None) -> Any:
    """The console ASGI app. ``node`` (an :class:`xds_node.node.Node`) is built from ``settings``
    when not given."""
    if node is None:
        from xds_node.node import Node

        node = Node(settings)
    import jinja2

    # autoescape for every template, whatever its name: no value reaches a page unescaped
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")), autoescape=True,
                             undefined=jinja2.StrictUndefined if settings.log_level == "debug" else jinja2.Undefined)
    templates = Jinja2Templates(env=env)
    console = Console(settings=settings, node=node, secret=load_secret(node.engine), templates=templates)
    routes: list[Any] = _login_routes(console)
    for module in discover_pages():
        page: Page = module.PAGE
        console.pages.append(page)
        for croute in module.routes(console):
            routes.append(Route(page.url + croute.path, guarded(console, page, croute), methods=list(croute.methods),
                                name=croute.name))
    routes.append(Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"))
    # only the names the console is meant to be reached by: a page on another site that points its
    # own name at 127.0.0.1 (DNS rebinding) gets a 400, never the console (Starlette's middleware)
    trusted = Middleware(TrustedHostMiddleware, allowed_hosts=settings.console_hosts, www_redirect=False)
    app = Starlette(routes=routes, middleware=[trusted], exception_handlers={404: _not_found, 500: _server_error})
    app.state.console = console
    return SecurityHeaders(app)


def static_dir() -> Path:
    return HERE / "static"
