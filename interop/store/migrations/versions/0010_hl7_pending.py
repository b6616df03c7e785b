"""HL7 v2 enhanced-mode accept acknowledgments: messages kept with CA whose resources are still to be written

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-22 10:30:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0010'
down_revision: str | Sequence[str] | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('hl7_messages', sa.Column('pending', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index('ix_hl7_messages_pending', 'hl7_messages', ['id'], unique=False,
                    sqlite_where=sa.text('pending'), postgresql_where=sa.text('pending'))


def downgrade() -> None:
    op.drop_index('ix_hl7_messages_pending', table_name='hl7_messages')
    with op.batch_alter_table('hl7_messages') as batch:
        batch.drop_column('pending')
