"""Repository index: which document uniqueId lives where (our store or a source system's file)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, LargeBinary, String, Table, Text

from xds_node.db import metadata

documents = Table(
    "repo_document",
    metadata,
    Column("unique_id", String(160), primary_key=True),
    Column("repository_unique_id", String(64), nullable=False),
    Column("entry_uuid", String(80), nullable=False),
    #: which SourceSystem holds the bytes ("store" or "folder:<name>") and its locator there
    Column("source", String(120), nullable=False),
    Column("locator", Text, nullable=False),
    Column("mime_type", String(128), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha1", String(40), nullable=False),
    #: source file's st_mtime_ns when indexed: a cheap "changed behind our back?" check
    Column("mtime_ns", BigInteger),
    #: "current", "replaced" (a newer file version took over) or "removed" (gone at the source)
    Column("state", String(16), nullable=False, default="current"),
    Column("version", Integer, nullable=False, default=1),
    Index("ix_repo_document_locator", "source", "locator"),
)

#: Pushed documents' bytes kept in the database (``document_store = "database"``, the default on
#: PostgreSQL): one row per content (SHA-1), written in the registration's own transaction, so an
#: acknowledged document always has its bytes and a failed one leaves none. Entries name it with
#: ``repo_document.source = "db"`` and ``locator = sha1``.
contents = Table(
    "repo_content",
    metadata,
    Column("sha1", String(40), primary_key=True),
    Column("size", BigInteger, nullable=False),
    Column("chunks", Integer, nullable=False),  # rows in repo_content_chunk, seq 0 .. chunks-1
    #: SHA-256 of the bytes: bytes pushed again under the same SHA-1 must match it (no collisions)
    Column("sha256", String(64), nullable=False),
)

#: The bytes, in chunks of at most ``dbstore.CHUNK`` so that neither writing nor streaming a
#: document up to the body cap (64 MiB) ever holds more than a chunk in one database value.
content_chunks = Table(
    "repo_content_chunk",
    metadata,
    Column("sha1", String(40), ForeignKey("repo_content.sha1", ondelete="CASCADE"), primary_key=True),
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("data", LargeBinary, nullable=False),
)
