"""Console users (administrators only): who may log in with which role; add and remove, as
``xds-node users add|remove`` does (removing a user ends their sessions at once)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from xds_node.console.auth import ROLES
from xds_node.console.web import Console, Page, roles, route

PAGE = Page(key="users", title="Users", order=90, roles=roles("administrator"))


def routes(console: Console) -> list:
    users = console.users

    def index(request: Request, *, message: str = "", error: str = "", status: int = 200) -> Response:
        return console.render(request, "users/index.html", status_code=status, users=users.list(), message=message,
                              error=error, role_names=ROLES)

    def add(request: Request) -> Response:
        form = request.state.form
        name, role = str(form.get("name") or ""), str(form.get("role") or "")
        console.audit(request, "users-add", outcome="attempt", reason=f"add {name[:64]!r} as {role[:32]}")
        try:
            user = users.add(name, role, str(form.get("password") or ""),
                             created_by=f"console:{request.state.user.name}")
        except ValueError as exc:
            console.audit(request, "users-add", outcome="failure", reason=str(exc))
            return index(request, error=str(exc), status=400)
        console.audit(request, "users-add", reason=f"added {user.name} as {user.role}")
        return index(request, message=f"added {user.name} ({user.role_label})")

    def remove(request: Request) -> Response:
        name = str(request.state.form.get("name") or "")
        if name == request.state.user.name:
            return index(request, error="you cannot remove yourself", status=400)
        console.audit(request, "users-remove", outcome="attempt", reason=f"remove {name[:64]!r}")
        if not users.remove(name):
            console.audit(request, "users-remove", outcome="failure", reason=f"no user {name[:64]!r}")
            return index(request, error=f"no user named {name!r}", status=404)
        console.audit(request, "users-remove", reason=f"removed {name}")
        return index(request, message=f"removed {name} (their sessions ended)")

    return [route("", index), route("/add", add, methods=["POST"]), route("/remove", remove, methods=["POST"])]
