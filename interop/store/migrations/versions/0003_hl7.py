"""HL7 v2 message log

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 23:50:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('hl7_messages',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('peer', sa.String(length=64), nullable=True),
    sa.Column('sending_application', sa.String(length=227), nullable=False),
    sa.Column('sending_facility', sa.String(length=227), nullable=False),
    sa.Column('control_id', sa.String(length=199), nullable=True),
    sa.Column('message_type', sa.String(length=32), nullable=False),
    sa.Column('version', sa.String(length=16), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.Column('ack_code', sa.String(length=2), nullable=False),
    sa.Column('error_code', sa.String(length=8), nullable=True),
    sa.Column('error_text', sa.Text(), nullable=True),
    sa.Column('error_location', sa.String(length=64), nullable=True),
    sa.Column('resources', sa.Text(), nullable=True),
    sa.Column('processed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('replays', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sending_application', 'sending_facility', 'control_id', name='uq_hl7_messages_sender_id')
    )
    with op.batch_alter_table('hl7_messages', schema=None) as batch_op:
        batch_op.create_index('ix_hl7_messages_received_at', ['received_at'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('hl7_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_hl7_messages_received_at')
    op.drop_table('hl7_messages')
