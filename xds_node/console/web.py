"""What page modules use: :class:`Page` (a page's name, title and roles), :func:`route` (one URL of
a page, with the roles allowed on it) and :class:`Console` (the services, rendering and auditing).

Nothing here knows which pages exist: :mod:`xds_node.console.app` finds the page modules and puts
every route behind the same guard (CSRF, session, role, audit).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.templating import Jinja2Templates

from xds_node.audit.events import AuditEvent
from xds_node.console.auth import ALL_ROLES, ROLES, SessionStore, Throttle, User, UserStore

log = logging.getLogger("xds_node.console")

HERE = Path(__file__).resolve().parent
Endpoint = Callable[[Request], Awaitable[Response] | Response]


@dataclass(frozen=True)
class Page:
    """One page of the console: ``/<key>/...`` and its entry in the navigation.

    ``roles`` may open the page (every route of the page unless the route names its own roles).
    """

    key: str
    title: str
    roles: frozenset[str]
    order: int = 100
    nav: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.roles) - ALL_ROLES
        if unknown:
            raise ValueError(f"page {self.key}: unknown roles {sorted(unknown)}")

    @property
    def url(self) -> str:
        return f"/{self.key}"


@dataclass(frozen=True)
class ConsoleRoute:
    path: str
    endpoint: Endpoint
    methods: tuple[str, ...] = ("GET",)
    roles: frozenset[str] | None = None  # None: the page's roles
    name: str | None = None


def route(path: str, endpoint: Endpoint, *, methods: Iterable[str] = ("GET",),
          roles: Iterable[str] | None = None, name: str | None = None) -> ConsoleRoute:
    """A URL of a page. ``roles`` narrows who may use it (e.g. only some may POST a change); it
    can never widen the page's own roles (app.py takes the intersection)."""
    return ConsoleRoute(path, endpoint, tuple(m.upper() for m in methods),
                        frozenset(roles) if roles is not None else None, name)


def roles(*names: str) -> frozenset[str]:
    """A role set, checked: ``roles("administrator", "operator")``."""
    unknown = set(names) - ALL_ROLES
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")
    return frozenset(names)


@dataclass
class Console:
    """What every page gets: the node's services, settings, templates, and helpers."""

    settings: Any
    node: Any  # xds_node.node.Node: registry, repository, patients, consent_store, audit, trust ...
    secret: bytes
    templates: Jinja2Templates
    pages: list[Page] = field(default_factory=list)

    @property
    def engine(self):
        return self.node.engine

    @property
    def audit_engine(self):
        """Where the audit trail lives: on SQLite a file of its own (``Settings.audit_db_url``)."""
        return self.node.audit_engine

    @cached_property
    def users(self) -> UserStore:
        return UserStore(self.engine)

    @cached_property
    def sessions(self) -> SessionStore:
        return SessionStore(self.engine, idle_minutes=self.settings.console_session_idle_minutes,
                            max_hours=self.settings.console_session_max_hours)

    @cached_property
    def throttle(self) -> Throttle:
        return Throttle(self.engine, max_failures=self.settings.console_login_max_failures,
                        window_minutes=self.settings.console_lockout_minutes)

    def visible_pages(self, user: User | None) -> list[Page]:
        if user is None:
            return []
        return [p for p in self.pages if p.nav and user.role in p.roles]

    def render(self, request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        """Render ``template`` (autoescaped) with the user, navigation and CSRF token added."""
        user = getattr(request.state, "user", None)
        base = {"user": user, "nav": self.visible_pages(user), "csrf": getattr(request.state, "csrf", ""),
                "page": getattr(request.state, "page", None), "roles": ROLES, "now": datetime.now(UTC)}
        return self.templates.TemplateResponse(request, template, {**base, **context}, status_code=status_code)

    def audit(self, request: Request, action: str, *, outcome: str = "success", patient_id: str | None = None,
              documents: Iterable[str] = (), reason: str = "", user: User | None = None) -> AuditEvent:
        """Commit one audit row for a console action by the request's user; raises if it cannot be
        written (the caller then does not go on: fail closed)."""
        user = user or getattr(request.state, "user", None)
        event = AuditEvent(
            transaction=f"console:{action}", outcome=outcome, direction="inbound",  # type: ignore[arg-type]
            partner=f"console:{user.name}" if user else "console", caller_kind="internal" if user else "anonymous",
            user_subject_id=user.name if user else "", user_role_code=user.role if user else "",
            user_role_display=user.role_label if user else "", patient_id=patient_id,
            document_ids=list(documents), remote_address=client_address(request), endpoint=request.url.path,
            reason=reason, partner_organization=self.settings.organization_name)
        recorded = self.node.audit.record(event)
        request.state.audited = True
        return recorded


def client_address(request: Request) -> str:
    return request.client.host if request.client else ""


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def local_path(value: str | None, default: str = "/") -> str:
    """``value`` if it is a path on this site (no scheme, no host, no ``//``), else ``default``:
    a ``next`` parameter must not send a user who just logged in to another site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value or len(value) > 2000:
        return default
    if any(ord(c) < 0x21 for c in value):
        return default
    return value
