"""Model registry: active/shadow model versions per app and rule, shadow jobs and their comparisons

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-24 09:00:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | Sequence[str] | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('shadow', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column('shadow_of', sa.Integer(), nullable=True))
        batch.create_index('ix_jobs_shadow_of', ['shadow_of'])
    op.create_table(
        'model_assignments',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('app', sa.String(length=64), nullable=False),
        sa.Column('rule', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=8), nullable=False),
        sa.Column('version', sa.String(length=64), nullable=False),
        sa.Column('changed_by', sa.String(length=256), nullable=False),
        sa.Column('changed_at', TS, nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('app', 'rule', 'role', name='uq_model_assignments_app_rule_role'),
    )
    op.create_table(
        'shadow_comparisons',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('shadow_job_id', sa.Integer(), nullable=False),
        sa.Column('active_job_id', sa.Integer(), nullable=False),
        sa.Column('app', sa.String(length=64), nullable=False),
        sa.Column('active_version', sa.String(length=64), nullable=False),
        sa.Column('shadow_version', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('agree', sa.Boolean(), nullable=True),
        sa.Column('score', sa.Float(), nullable=True),
        sa.Column('detail', sa.Text(), nullable=False),
        sa.Column('created_at', TS, nullable=False),
        sa.ForeignKeyConstraint(['shadow_job_id'], ['jobs.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['active_job_id'], ['jobs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('shadow_job_id'),
    )
    op.create_index('ix_shadow_comparisons_versions', 'shadow_comparisons',
                    ['app', 'active_version', 'shadow_version'])


def downgrade() -> None:
    op.drop_index('ix_shadow_comparisons_versions', table_name='shadow_comparisons')
    op.drop_table('shadow_comparisons')
    op.drop_table('model_assignments')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_index('ix_jobs_shadow_of')
        batch.drop_column('shadow_of')
        batch.drop_column('shadow')
