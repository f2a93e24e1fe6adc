"""Registry: a DocumentEntry uniqueId may be registered again with the same content (helper c3).

* ``xds_document.unique_id`` is no longer unique: an identical resubmission (new entryUUID, same
  uniqueId, same hash) is accepted (ITI TF-3 Table 4.2.4.1-2: XDSDuplicateUniqueIdInRegistry is
  never raised for a DocumentEntry; a different hash is XDSNonIdenticalHash).
* ``xds_document_uid`` holds what each uniqueId stands for (hash, or an On-Demand entry's
  entryUUID, and the patient); its primary key keeps racing submissions of different content from
  both committing. Filled here from the registered documents (unique until now, so one row each).

Downgrade restores the unique index, which fails while a uniqueId is registered twice.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('xds_document_uid',
    sa.Column('unique_id', sa.String(length=160), nullable=False),
    sa.Column('fingerprint', sa.String(length=80), nullable=False),
    sa.Column('patient_id', sa.String(length=256), nullable=False),
    sa.PrimaryKeyConstraint('unique_id')
    )
    op.execute("INSERT INTO xds_document_uid (unique_id, fingerprint, patient_id) "
               "SELECT unique_id, COALESCE(LOWER(hash), id), patient_id FROM xds_document")
    with op.batch_alter_table('xds_document', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_xds_document_unique_id'))
        batch_op.create_index('ix_xds_document_unique_id', ['unique_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('xds_document', schema=None) as batch_op:
        batch_op.drop_index('ix_xds_document_unique_id')
        batch_op.create_index(batch_op.f('ix_xds_document_unique_id'), ['unique_id'], unique=True)

    op.drop_table('xds_document_uid')
