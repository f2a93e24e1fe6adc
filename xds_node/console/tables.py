"""The console's tables: users, sessions, failed logins, its signing secret, scanned consent forms
and conformance runs.

All of it lives in the database, never in a process: the node runs as many workers and hosts,
and a logout, a lockout or a removed user must hold for the very next request everywhere.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Index, Integer, LargeBinary, String, Table, Text

from xds_node.db import metadata

console_users = Table(
    "console_user",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("role", String(32), nullable=False),
    #: argon2id hash (PHC string); NULL: the user can log in only through the trusted proxy header
    Column("password_hash", String(256)),
    Column("created_at", DateTime, nullable=False),
    Column("created_by", String(128), nullable=False, default=""),
)

console_sessions = Table(
    "console_session",
    metadata,
    #: SHA-256 (hex) of the cookie value: a stolen database does not hand out live sessions
    Column("id", String(64), primary_key=True),
    Column("user_name", String(64), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("last_seen", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False),
    Column("remote_address", String(64), nullable=False, default=""),
    Index("ix_console_session_user", "user_name"),
)

console_login_failures = Table(
    "console_login_failure",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("user_name", String(64), nullable=False),
    Column("remote_address", String(64), nullable=False),
    Column("time", DateTime, nullable=False),
    Index("ix_console_login_failure_user_time", "user_name", "time"),
    Index("ix_console_login_failure_address_time", "remote_address", "time"),
)

console_secrets = Table(
    "console_secret",
    metadata,
    Column("name", String(32), primary_key=True),
    Column("value", String(128), nullable=False),
)

#: A scanned authorization form, kept with the consent directive it was recorded with.
consent_forms = Table(
    "consent_form",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("directive_id", Integer),  # NULL while the form awaits the confirmation step
    Column("patient_id", String(256), nullable=False),
    Column("file_name", String(256), nullable=False),
    Column("content_type", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("content", LargeBinary, nullable=False),
    Column("uploaded_by", String(64), nullable=False),
    Column("uploaded_at", DateTime, nullable=False),
    Index("ix_consent_form_patient", "patient_id"),
    Index("ix_consent_form_directive", "directive_id"),
)

#: A conformance run started from the console, and its HTML report once it has finished.
conformance_runs = Table(
    "conformance_run",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("target", String(512), nullable=False),
    Column("suites", String(512), nullable=False),
    Column("started_by", String(64), nullable=False),
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("status", String(16), nullable=False),  # running | passed | failed | error
    Column("summary", Text, nullable=False, default=""),
    Column("report_html", Text),
)
