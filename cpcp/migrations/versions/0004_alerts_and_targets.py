"""alerts and response targets

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

A case's first-reply due time and its overdue stages (reminder, escalation), the deployment's
response targets, per-unit alert floors and each submission's alerted flag for cpcp-alerts. Additive only: the previous release keeps running beside it.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('response_targets',
    sa.Column('rule', sa.String(length=64), nullable=False),
    sa.Column('minutes', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('rule', name=op.f('pk_response_targets'))
    )
    op.create_table('alert_cursors',
    sa.Column('unit_id', sa.Integer(), nullable=False),
    sa.Column('last_submission_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['unit_id'], ['units.id'], name=op.f('fk_alert_cursors_unit_id_units'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('unit_id', name=op.f('pk_alert_cursors'))
    )
    with op.batch_alter_table('cases') as batch:
        batch.add_column(sa.Column('reply_due_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('reminded_at', sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('escalated_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('submissions') as batch:
        batch.add_column(sa.Column('alerted', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('submissions') as batch:
        batch.drop_column('alerted')
    with op.batch_alter_table('cases') as batch:
        batch.drop_column('escalated_at')
        batch.drop_column('reminded_at')
        batch.drop_column('reply_due_at')
    op.drop_table('alert_cursors')
    op.drop_table('response_targets')
