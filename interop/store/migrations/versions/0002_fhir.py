"""FHIR store: resources, versions, search index

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21 23:40:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('fhir_resources',
    sa.Column('pk', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('res_id', sa.String(length=64), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted', sa.Boolean(), nullable=False),
    sa.Column('content', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('pk'),
    sa.UniqueConstraint('res_type', 'res_id', name='uq_fhir_resources_type_id')
    )
    with op.batch_alter_table('fhir_resources', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_resources_type_deleted_pk', ['res_type', 'deleted', 'pk'], unique=False)
        batch_op.create_index('ix_fhir_resources_type_updated', ['res_type', 'last_updated'], unique=False)

    op.create_table('fhir_versions',
    sa.Column('resource_pk', sa.Integer(), nullable=False),
    sa.Column('version_id', sa.Integer(), nullable=False),
    sa.Column('last_updated', sa.DateTime(timezone=True), nullable=False),
    sa.Column('method', sa.String(length=8), nullable=False),
    sa.Column('content', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['resource_pk'], ['fhir_resources.pk'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('resource_pk', 'version_id')
    )
    op.create_table('fhir_search_index',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('resource_pk', sa.Integer(), nullable=False),
    sa.Column('res_type', sa.String(length=64), nullable=False),
    sa.Column('param', sa.String(length=64), nullable=False),
    sa.Column('system', sa.String(length=255), nullable=True),
    sa.Column('value', sa.String(length=255), nullable=True),
    sa.Column('low', sa.Float(precision=53), nullable=True),
    sa.Column('high', sa.Float(precision=53), nullable=True),
    sa.ForeignKeyConstraint(['resource_pk'], ['fhir_resources.pk'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('fhir_search_index', schema=None) as batch_op:
        batch_op.create_index('ix_fhir_idx_value', ['res_type', 'param', 'value', 'system', 'resource_pk'],
                              unique=False)
        batch_op.create_index('ix_fhir_idx_low', ['res_type', 'param', 'low', 'resource_pk'], unique=False)
        batch_op.create_index('ix_fhir_idx_high', ['res_type', 'param', 'high', 'resource_pk'], unique=False)
        batch_op.create_index('ix_fhir_idx_resource', ['resource_pk', 'param', 'value', 'system'], unique=False)
        batch_op.create_index('ix_fhir_idx_target', ['value', 'system', 'param'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('fhir_search_index')
    op.drop_table('fhir_versions')
    op.drop_table('fhir_resources')
