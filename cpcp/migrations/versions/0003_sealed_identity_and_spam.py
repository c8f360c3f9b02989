"""sealed identity and spam

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

Contact details sealed to custodians, disclosure requests, custodian officers, spam cases and
the per-submission alert flag. Additive only: the previous release keeps running beside it.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('sealed_identities',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('object_name', sa.String(length=200), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_sealed_identities_case_id_cases'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sealed_identities')),
    sa.UniqueConstraint('case_id', name=op.f('uq_sealed_identities_case_id')),
    sa.UniqueConstraint('object_name', name=op.f('uq_sealed_identities_object_name'))
    )
    op.create_table('disclosure_requests',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('case_id', sa.Integer(), nullable=False),
    sa.Column('requester_id', sa.Integer(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('status', sa.Enum('pending', 'refused', 'approved', 'disclosed', name='disclosure_status',
                                native_enum=False, length=20, create_constraint=True), nullable=False),
    sa.Column('requested_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decided_by_id', sa.Integer(), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('object_name', sa.String(length=200), nullable=True),
    sa.Column('size', sa.Integer(), nullable=True),
    sa.Column('disclosed_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_disclosure_requests_case_id_cases'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['decided_by_id'], ['officers.id'], name=op.f('fk_disclosure_requests_decided_by_id_officers')),
    sa.ForeignKeyConstraint(['requester_id'], ['officers.id'], name=op.f('fk_disclosure_requests_requester_id_officers')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_disclosure_requests')),
    sa.UniqueConstraint('object_name', name=op.f('uq_disclosure_requests_object_name'))
    )
    with op.batch_alter_table('disclosure_requests', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_disclosure_requests_case_id'), ['case_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_disclosure_requests_requester_id'), ['requester_id'], unique=False)

    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('spam', sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table('officers', schema=None) as batch_op:
        batch_op.add_column(sa.Column('is_custodian', sa.Boolean(), server_default=sa.false(), nullable=False))
    with op.batch_alter_table('submissions', schema=None) as batch_op:
        batch_op.add_column(sa.Column('raises_alert', sa.Boolean(), server_default=sa.true(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('submissions', schema=None) as batch_op:
        batch_op.drop_column('raises_alert')
    with op.batch_alter_table('officers', schema=None) as batch_op:
        batch_op.drop_column('is_custodian')
    with op.batch_alter_table('cases', schema=None) as batch_op:
        batch_op.drop_column('spam')
    with op.batch_alter_table('disclosure_requests', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_disclosure_requests_requester_id'))
        batch_op.drop_index(batch_op.f('ix_disclosure_requests_case_id'))
    op.drop_table('disclosure_requests')
    op.drop_table('sealed_identities')
