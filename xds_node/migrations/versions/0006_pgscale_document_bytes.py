"""Repository: pushed documents' bytes in the database (helper pgscale).

* ``repo_content`` (one row per SHA-1: size, number of chunks, SHA-256) and ``repo_content_chunk`` (the
  bytes, at most 1 MiB per row) hold what ITI-41 and XDR pushes store when ``document_store`` is
  "database" (the default on PostgreSQL), written in the registration's transaction. Entries name
  them with ``repo_document.source = 'db'``; entries whose bytes are in the folder store
  (``source = 'store'``) are left as they are and stay readable.

Downgrade refuses while an entry's bytes live in these tables (dropping them would lose documents).

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('repo_content',
    sa.Column('sha1', sa.String(length=40), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('chunks', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('sha1')
    )
    op.create_table('repo_content_chunk',
    sa.Column('sha1', sa.String(length=40), nullable=False),
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('data', sa.LargeBinary(), nullable=False),
    sa.ForeignKeyConstraint(['sha1'], ['repo_content.sha1'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('sha1', 'seq')
    )


def downgrade() -> None:
    held = op.get_bind().exec_driver_sql("SELECT COUNT(*) FROM repo_document WHERE source = 'db'").scalar()
    if held:
        raise RuntimeError(f"{held} repository entries keep their bytes in the database (repo_content): "
                           "downgrading would lose them")
    op.drop_table('repo_content_chunk')
    op.drop_table('repo_content')
