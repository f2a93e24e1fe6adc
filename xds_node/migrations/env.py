"""Alembic environment: always run on a connection the node hands in (see ``xds_node.migrations``).

The target is ``xds_node.db.metadata`` with every table module imported, so ``xds-node db
revision`` autogenerates against the whole schema.
"""

from __future__ import annotations

from alembic import context

from xds_node.migrations import target_metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=target_metadata(),
                  render_as_batch=True,  # SQLite cannot ALTER most things: batch mode copies the table
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
