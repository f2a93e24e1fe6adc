"""xds_document.size becomes BIGINT: documents past 2 GiB are real (imaging, scans).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("xds_document") as batch:
        batch.alter_column("size", existing_type=sa.Integer(), type_=sa.BigInteger())


def downgrade() -> None:
    with op.batch_alter_table("xds_document") as batch:
        batch.alter_column("size", existing_type=sa.BigInteger(), type_=sa.Integer())
