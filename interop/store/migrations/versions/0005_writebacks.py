"""Write-back outbox

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 02:40:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | Sequence[str] | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'writebacks',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=False),
        sa.Column('destination', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('item', sa.Integer(), nullable=False),
        sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', TS, nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('created_at', TS, nullable=False),
        sa.Column('sent_at', TS, nullable=True),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('destination', 'sop_instance_uid', name='uq_writebacks_destination_sop'),
    )
    with op.batch_alter_table('writebacks', schema=None) as batch_op:
        batch_op.create_index('ix_writebacks_due', ['state', 'next_attempt_at', 'id'], unique=False)
        batch_op.create_index('ix_writebacks_job_id', ['job_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('writebacks', schema=None) as batch_op:
        batch_op.drop_index('ix_writebacks_job_id')
        batch_op.drop_index('ix_writebacks_due')
    op.drop_table('writebacks')
