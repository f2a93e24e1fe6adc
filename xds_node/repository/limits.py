"""Per-field bounds of the repository index (``repo_document``), read off its columns.

A co-located registry checks its own, equal or tighter bounds during ITI-41; with a remote
registry (``registry_url``) the repository checks these before sending the metadata on, so a
submission the remote registry accepts can never fail our own INSERT afterwards.
"""

from __future__ import annotations

from sqlalchemy import Column

from xds_node.ebxml.validation import DOCUMENT_ENTRY, FieldLimits
from xds_node.registry.limits import bound_of
from xds_node.repository import tables as t

COLUMNS: dict[tuple[str, str], tuple[Column, ...]] = {
    (DOCUMENT_ENTRY, "entryUUID"): (t.documents.c.entry_uuid,),
    (DOCUMENT_ENTRY, "uniqueId"): (t.documents.c.unique_id,),
    (DOCUMENT_ENTRY, "mimeType"): (t.documents.c.mime_type,),
}

EXEMPT: dict[Column, str] = {
    t.documents.c.size: "computed by the repository from the document's bytes",
    t.documents.c.sha1: "computed by the repository from the document's bytes",
    t.documents.c.repository_unique_id: "this repository's own id (a different one is refused)",
    t.documents.c.source: "the source system's name, set by the repository",
    t.documents.c.state: "set by the repository (current, replaced, removed)",
    t.documents.c.version: "set by the repository",
    t.documents.c.mtime_ns: "a file timestamp, set by the repository",
}

LIMITS: FieldLimits = {key: bound_of(cols) for key, cols in COLUMNS.items()}
