"""Console users, roles, passwords, sessions, login throttling and CSRF tokens.

* Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106 low-memory profile); a
  login for an unknown user still verifies against a dummy hash, so timing does not tell which
  names exist.
* A session is a random 256-bit cookie value; the database keeps only its SHA-256, the user, and
  when it was made, last used and must end (idle and absolute limits from settings). Every request
  reads it from the database: a logout or a removed user holds at once on every worker and host.
* Failed logins are rows too: ``console_login_max_failures`` for one user name (or four times as
  many from one address) within ``console_lockout_minutes`` refuse further attempts, correct
  password or not, until the window has passed.
* CSRF: the token of a form is HMAC-SHA256(secret, cookie value) where the cookie is the session
  (or, before login, a pre-session nonce cookie). It can be checked from the request alone, before
  any session, user or form field is looked at; the secret is one database row shared by every
  process.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from xds_node.console.tables import console_login_failures, console_secrets, console_sessions, console_users

#: Role id -> label. The ids are what ``xds-node users add --role`` takes.
ROLES: dict[str, str] = {
    "administrator": "Administrator",
    "privacy-officer": "Privacy officer",
    "registrar": "Registrar",
    "operator": "Operator",
    "clinician-support": "Clinician support",
}
ALL_ROLES = frozenset(ROLES)
MAX_NAME = 64
_hasher = PasswordHasher()
_DUMMY_HASH = _hasher.hash("not a password of anyone " + secrets.token_hex(8))


def normalize_role(value: str) -> str:
    """``privacy officer``, ``Privacy_Officer`` -> ``privacy-officer``; ValueError if no such role."""
    role = "-".join((value or "").strip().lower().replace("_", " ").split())
    if role not in ROLES:
        raise ValueError(f"unknown role {value!r}: one of {', '.join(ROLES)}")
    return role


def check_user_name(value: str) -> str:
    name = (value or "").strip()
    if not name or len(name) > MAX_NAME or not all(c.isalnum() or c in "._-@" for c in name):
        raise ValueError(f"user name {value!r}: 1-{MAX_NAME} letters, digits and . _ - @")
    return name


def check_password(value: str) -> str:
    if len(value) < 12:
        raise ValueError("a console password needs at least 12 characters")
    if len(value) > 1024:
        raise ValueError("a console password may have at most 1024 characters")
    return value


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str

    @property
    def role_label(self) -> str:
        return ROLES.get(self.role, self.role)


class UserStore:
    """Console users (``xds-node users add|list|remove`` and the console's login)."""

    def __init__(self, engine: Engine):
        self.engine = engine

    def add(self, name: str, role: str, password: str | None, *, created_by: str = "") -> User:
        name, role = check_user_name(name), normalize_role(role)
        digest = _hasher.hash(check_password(password)) if password is not None else None
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(console_users).values(name=name, role=role, password_hash=digest,
                                                          created_at=_now(), created_by=created_by[:128]))
        except IntegrityError:
            raise ValueError(f"user {name!r} already exists (remove it first to change it)") from None
        return User(name, role)

    def remove(self, name: str) -> bool:
        """Remove the user and end all of their sessions; False if there was no such user."""
        with self.engine.begin() as conn:
            gone = conn.execute(delete(console_users).where(console_users.c.name == name)).rowcount
            conn.execute(delete(console_sessions).where(console_sessions.c.user_name == name))
        return bool(gone)

    def list(self) -> list[dict]:
        t = console_users
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.c.name, t.c.role, t.c.created_at, t.c.created_by,
                                       t.c.password_hash.is_not(None).label("has_password")).order_by(t.c.name))
            return [dict(r._mapping) for r in rows]

    def get(self, name: str) -> User | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(console_users.c.name, console_users.c.role)
                               .where(console_users.c.name == name)).first()
        return User(row.name, row.role) if row is not None and row.role in ROLES else None

    def verify(self, name: str, password: str) -> User | None:
        """The user if ``password`` is theirs; None otherwise (same work either way)."""
        with self.engine.connect() as conn:
            row = conn.execute(select(console_users).where(console_users.c.name == name[:MAX_NAME])).first()
        digest = row.password_hash if row is not None and row.password_hash else _DUMMY_HASH
        try:
            _hasher.verify(digest, password[:1024])
        except (VerificationError, InvalidHashError):
            return None
        if row is None or not row.password_hash or row.role not in ROLES:
            return None
        if _hasher.check_needs_rehash(digest):
            with self.engine.begin() as conn:
                conn.execute(update(console_users).where(console_users.c.name == row.name)
                             .values(password_hash=_hasher.hash(password[:1024])))
        return User(row.name, row.role)


class Throttle:
    """Failed logins per user name and per address, in the database (module docstring)."""

    def __init__(self, engine: Engine, *, max_failures: int, window_minutes: int):
        self.engine = engine
        self.max_failures = max_failures
        self.window = timedelta(minutes=window_minutes)

    def locked(self, name: str, address: str) -> bool:
        t = console_login_failures
        since = _now() - self.window
        with self.engine.connect() as conn:
            by_name = conn.execute(select(func.count()).where(t.c.user_name == name[:MAX_NAME],
                                                              t.c.time >= since)).scalar_one()
            by_addr = conn.execute(select(func.count()).where(t.c.remote_address == address[:64],
                                                              t.c.time >= since)).scalar_one()
        return by_name >= self.max_failures or by_addr >= 4 * self.max_failures

    def failed(self, name: str, address: str) -> None:
        t = console_login_failures
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(insert(t).values(user_name=name[:MAX_NAME], remote_address=address[:64], time=now))
            conn.execute(delete(t).where(t.c.time < now - 2 * self.window))  # keep the table small

    def succeeded(self, name: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(console_login_failures).where(console_login_failures.c.user_name == name))


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class SessionStore:
    """Database sessions: idle and absolute expiry, checked on every request."""

    #: last_seen is written at most this often (a page view must not always be a write)
    TOUCH_EVERY = timedelta(seconds=60)

    def __init__(self, engine: Engine, *, idle_minutes: int, max_hours: int):
        self.engine = engine
        self.idle = timedelta(minutes=idle_minutes)
        self.max_age = timedelta(hours=max_hours)

    def create(self, user: User, address: str) -> str:
        """A new session for ``user``; returns the cookie value (never stored)."""
        token = secrets.token_urlsafe(32)
        now = _now()
        with self.engine.begin() as conn:
            conn.execute(insert(console_sessions).values(id=_digest(token), user_name=user.name, created_at=now,
                                                         last_seen=now, expires_at=now + self.max_age,
                                                         remote_address=address[:64]))
            # sessions of anyone that have lapsed go too: the table holds live sessions only
            conn.execute(delete(console_sessions).where(console_sessions.c.expires_at < now))
        return token

    def user(self, token: str | None) -> User | None:
        """The user of a live session (touching it), or None."""
        if not token or len(token) > 128:
            return None
        s, u = console_sessions, console_users
        now = _now()
        with self.engine.connect() as conn:
            row = conn.execute(select(s.c.id, s.c.last_seen, s.c.expires_at, u.c.name, u.c.role)
                               .join(u, u.c.name == s.c.user_name).where(s.c.id == _digest(token))).first()
        if row is None or row.role not in ROLES:
            return None
        if now >= row.expires_at or now - row.last_seen >= self.idle:
            self.end(token)
            return None
        if now - row.last_seen >= self.TOUCH_EVERY:
            with self.engine.begin() as conn:
                conn.execute(update(s).where(s.c.id == row.id).values(last_seen=now))
        return User(row.name, row.role)

    def end(self, token: str | None) -> None:
        if token:
            with self.engine.begin() as conn:
                conn.execute(delete(console_sessions).where(console_sessions.c.id == _digest(token)))


def load_secret(engine: Engine, name: str = "csrf") -> bytes:
    """The console's HMAC secret, made once and shared by every process through the database."""
    t = console_secrets
    with engine.connect() as conn:
        row = conn.execute(select(t.c.value).where(t.c.name == name)).first()
    if row is None:
        try:
            with engine.begin() as conn:
                conn.execute(insert(t).values(name=name, value=secrets.token_hex(32)))
        except IntegrityError:
            pass  # another process made it first: use theirs
        with engine.connect() as conn:
            row = conn.execute(select(t.c.value).where(t.c.name == name)).first()
    return bytes.fromhex(row.value)


def csrf_token(secret: bytes, cookie_value: str) -> str:
    return hmac.new(secret, b"csrf:" + cookie_value.encode(), hashlib.sha256).hexdigest()


def csrf_valid(secret: bytes, cookie_value: str | None, token: str | None) -> bool:
    if not cookie_value or not token or len(token) != 64:
        return False
    return hmac.compare_digest(csrf_token(secret, cookie_value), token)
