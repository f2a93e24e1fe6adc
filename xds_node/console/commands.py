"""``xds-node users add|list|remove``: console users (see :mod:`xds_node.console.auth`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xds_node.term import to_json


def add_parsers(sub) -> None:
    from xds_node.console.auth import ROLES

    users = sub.add_parser("users", help="operator console users and roles").add_subparsers(
        dest="users_command", required=True)

    def common(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--data-dir", type=Path)
        p.set_defaults(func=cmd_users)
        return p

    p = common(users.add_parser("add", help="add a console user (password prompted, or --password-stdin)"))
    p.add_argument("name")
    p.add_argument("--role", required=True, help="one of: " + ", ".join(ROLES))
    p.add_argument("--password-stdin", action="store_true", help="read the password from the first line of stdin")
    p.add_argument("--proxy-only", action="store_true",
                   help="no password: the user logs in only through the trusted reverse-proxy header")
    p = common(users.add_parser("list", help="console users and their roles"))
    p.add_argument("--json", action="store_true")
    p = common(users.add_parser("remove", help="remove a console user and end their sessions"))
    p.add_argument("name")


def _password(args: argparse.Namespace) -> str | None:
    if args.proxy_only:
        return None
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    if not sys.stdin.isatty():
        raise ValueError("no terminal to ask for a password: use --password-stdin")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise ValueError("the passwords differ")
    return first


def cmd_users(args: argparse.Namespace) -> int:
    from xds_node.admin import _node, _operator
    from xds_node.console.auth import ROLES, UserStore, check_password, check_user_name, normalize_role

    try:
        if args.users_command == "add":  # everything checked before the password is asked for
            check_user_name(args.name)
            normalize_role(args.role)
            password = _password(args)
            if password is not None:
                check_password(password)
    except ValueError as exc:
        print(f"users {args.users_command}: {exc}", file=sys.stderr)
        return 2
    node = _node(args)
    try:
        store = UserStore(node.engine)
        if args.users_command == "add":
            try:
                user = store.add(args.name, args.role, password, created_by=_operator(args))
            except ValueError as exc:
                print(f"users add: {exc}", file=sys.stderr)
                return 2
            print(f"added {user.name} ({ROLES[user.role]})")
        elif args.users_command == "remove":
            if not store.remove(args.name):
                print(f"users remove: no user named {args.name!r}", file=sys.stderr)
                return 2
            print(f"removed {args.name} (their sessions ended)")
        else:
            users = store.list()
            if args.json:
                print(to_json([{**u, "created_at": u["created_at"].isoformat() + "Z"} for u in users]))
                return 0
            if not users:
                print("no console users (add one with `xds-node users add NAME --role administrator`)",
                      file=sys.stderr)
            for u in users:
                login = "password" if u["has_password"] else "proxy header only"
                print(f"{u['name']:24} {ROLES.get(u['role'], u['role']):18} {login:18} "
                      f"added {u['created_at']:%Y-%m-%d} by {u['created_by'] or '-'}")
    finally:
        node.close()
    return 0
