"""Repository index: which document uniqueId lives where (our store or a source system's file)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, String, Table, Text

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
