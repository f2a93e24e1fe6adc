"""Baseline: the schema of xds-node 0.1.0 (frozen in ``xds_node/migrations/baseline.py``).

Creates only the tables that are missing, so a 0.1.0 database (made by ``metadata.create_all``,
possibly in parts) is completed and then carried forward like any other.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

from alembic import op

from xds_node.migrations import baseline

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    baseline.metadata.create_all(op.get_bind(), checkfirst=True)


def downgrade() -> None:
    baseline.metadata.drop_all(op.get_bind())
