"""Operator web console users, database sessions, failed logins, the CSRF
secret, scanned consent forms and conformance runs; indexes the console's pages need (audit keyset
paging by (time, event_id), each partner's last success/failure per transaction as an index seek,
patient search by identifier extension).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 14:15:21.785707
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('conformance_run',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('target', sa.String(length=512), nullable=False),
    sa.Column('suites', sa.String(length=512), nullable=False),
    sa.Column('started_by', sa.String(length=64), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=False),
    sa.Column('finished_at', sa.DateTime(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.Column('report_html', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('consent_form',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('directive_id', sa.Integer(), nullable=True),
    sa.Column('patient_id', sa.String(length=256), nullable=False),
    sa.Column('file_name', sa.String(length=256), nullable=False),
    sa.Column('content_type', sa.String(length=64), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.Column('uploaded_by', sa.String(length=64), nullable=False),
    sa.Column('uploaded_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('consent_form', schema=None) as batch_op:
        batch_op.create_index('ix_consent_form_directive', ['directive_id'], unique=False)
        batch_op.create_index('ix_consent_form_patient', ['patient_id'], unique=False)

    op.create_table('console_login_failure',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_name', sa.String(length=64), nullable=False),
    sa.Column('remote_address', sa.String(length=64), nullable=False),
    sa.Column('time', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('console_login_failure', schema=None) as batch_op:
        batch_op.create_index('ix_console_login_failure_address_time', ['remote_address', 'time'], unique=False)
        batch_op.create_index('ix_console_login_failure_user_time', ['user_name', 'time'], unique=False)

    op.create_table('console_secret',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('value', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('console_session',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('user_name', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('last_seen', sa.DateTime(), nullable=False),
    sa.Column('expires_at', sa.DateTime(), nullable=False),
    sa.Column('remote_address', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('console_session', schema=None) as batch_op:
        batch_op.create_index('ix_console_session_user', ['user_name'], unique=False)

    op.create_table('console_user',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('password_hash', sa.String(length=256), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('created_by', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.create_index('ix_audit_event_partner_tx_outcome_time',
                              ['partner_community', 'transaction', 'outcome', 'time'], unique=False)
        batch_op.create_index('ix_audit_event_time_id', ['time', 'event_id'], unique=False)
        batch_op.create_index('ix_audit_event_caller_time', ['partner', 'time'], unique=False)
        # the audit page's transaction / direction filter as one ordered range (see audit/store.py)
        batch_op.drop_index('ix_audit_event_transaction_time')
        batch_op.create_index('ix_audit_event_tx_direction_time_id', ['transaction', 'direction', 'time', 'event_id'],
                              unique=False)

    with op.batch_alter_table('patient_identifier', schema=None) as batch_op:
        batch_op.create_index('ix_patient_identifier_extension', ['extension'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('patient_identifier', schema=None) as batch_op:
        batch_op.drop_index('ix_patient_identifier_extension')

    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_event_tx_direction_time_id')
        batch_op.create_index('ix_audit_event_transaction_time', ['transaction', 'time'], unique=False)
        batch_op.drop_index('ix_audit_event_caller_time')
        batch_op.drop_index('ix_audit_event_time_id')
        batch_op.drop_index('ix_audit_event_partner_tx_outcome_time')

    op.drop_table('console_user')
    with op.batch_alter_table('console_session', schema=None) as batch_op:
        batch_op.drop_index('ix_console_session_user')

    op.drop_table('console_session')
    op.drop_table('console_secret')
    with op.batch_alter_table('console_login_failure', schema=None) as batch_op:
        batch_op.drop_index('ix_console_login_failure_user_time')
        batch_op.drop_index('ix_console_login_failure_address_time')

    op.drop_table('console_login_failure')
    with op.batch_alter_table('consent_form', schema=None) as batch_op:
        batch_op.drop_index('ix_consent_form_patient')
        batch_op.drop_index('ix_consent_form_directive')

    op.drop_table('consent_form')
    op.drop_table('conformance_run')
