"""the source app and the gateway as two users

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

Sources keep their reply key's public half (the gateway no longer opens the source app's
keyring); officers' TOTP secrets get room for their sealed form (the gateway seals the existing
plaintext ones when it makes its keys: cpcp-admin init, as the gateway's user); bearer tokens
were plain SHA-256 hashes and are now keyed ones, so the old ones can never match again and go
(desks log in again). Additive for the previous release otherwise.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('sources', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reply_public_key', sa.Text(), nullable=True))
    with op.batch_alter_table('officers', schema=None) as batch_op:
        batch_op.alter_column('totp_secret', existing_type=sa.String(length=64),
                              type_=sa.String(length=200), existing_nullable=True)
    op.execute(sa.text("DELETE FROM api_tokens"))


def downgrade() -> None:
    # A sealed TOTP secret does not fit the old column, and the old release could not open it:
    # downgrading means enrolling the officers again.
    op.execute(sa.text("UPDATE officers SET totp_secret = NULL"))
    op.execute(sa.text("DELETE FROM api_tokens"))
    with op.batch_alter_table('officers', schema=None) as batch_op:
        batch_op.alter_column('totp_secret', existing_type=sa.String(length=200),
                              type_=sa.String(length=64), existing_nullable=True)
    with op.batch_alter_table('sources', schema=None) as batch_op:
        batch_op.drop_column('reply_public_key')
