"""FHIR search index: the low/high indexes hold only the rows that have a low/high (dates and quantities)

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-22 11:15:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | Sequence[str] | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for col in ('low', 'high'):
        op.drop_index(f'ix_fhir_idx_{col}', table_name='fhir_search_index')
        op.create_index(f'ix_fhir_idx_{col}', 'fhir_search_index', ['res_type', 'param', col, 'resource_pk'],
                        unique=False, sqlite_where=sa.text(f'{col} IS NOT NULL'),
                        postgresql_where=sa.text(f'{col} IS NOT NULL'))


def downgrade() -> None:
    for col in ('low', 'high'):
        op.drop_index(f'ix_fhir_idx_{col}', table_name='fhir_search_index')
        op.create_index(f'ix_fhir_idx_{col}', 'fhir_search_index', ['res_type', 'param', col, 'resource_pk'],
                        unique=False)
