"""Reports and sign-off; write-backs to any destination (FHIR bundles, webhooks, verified SRs)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 04:00:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | Sequence[str] | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        'reports',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=False),
        sa.Column('app', sa.String(length=64), nullable=False),
        sa.Column('model_name', sa.String(length=128), nullable=False),
        sa.Column('model_version', sa.String(length=64), nullable=False),
        sa.Column('demonstration', sa.Boolean(), nullable=False),
        sa.Column('patient_id', sa.String(length=64), nullable=True),
        sa.Column('study_uid', sa.String(length=64), nullable=True),
        sa.Column('state', sa.String(length=24), nullable=False),
        sa.Column('priority', sa.String(length=8), nullable=False),
        sa.Column('critical', sa.Text(), nullable=False),
        sa.Column('content', sa.Text(), nullable=True),
        sa.Column('sr_sop_uid', sa.String(length=64), nullable=True),
        sa.Column('verdicts', sa.Integer(), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('created_at', TS, nullable=False),
        sa.Column('updated_at', TS, nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('job_id', name='uq_reports_job'),
    )
    with op.batch_alter_table('reports', schema=None) as b:
        b.create_index('ix_reports_state', ['state', 'priority', 'created_at'], unique=False)
        b.create_index('ix_reports_patient', ['patient_id'], unique=False)
        b.create_index('ix_reports_study', ['study_uid'], unique=False)
    op.create_table(
        'signoffs',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('report_id', sa.Integer(), nullable=False),
        sa.Column('sequence', sa.Integer(), nullable=False),
        sa.Column('action', sa.String(length=8), nullable=False),
        sa.Column('reader_id', sa.String(length=256), nullable=False),
        sa.Column('reader_name', sa.String(length=256), nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('conclusion', sa.Text(), nullable=True),
        sa.Column('findings', sa.Text(), nullable=False),
        sa.Column('status_before', sa.String(length=24), nullable=False),
        sa.Column('status_after', sa.String(length=24), nullable=False),
        sa.Column('ai_output', sa.Text(), nullable=False),
        sa.Column('sr_sop_uid', sa.String(length=64), nullable=True),
        sa.Column('created_at', TS, nullable=False),
        sa.ForeignKeyConstraint(['report_id'], ['reports.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('report_id', 'sequence', name='uq_signoffs_report_sequence'),
    )
    with op.batch_alter_table('writebacks', schema=None) as b:
        b.add_column(sa.Column('object_key', sa.String(length=200), nullable=True))
        b.add_column(sa.Column('report_id', sa.Integer(), nullable=True))
        b.add_column(sa.Column('signoff_id', sa.Integer(), nullable=True))
        b.add_column(sa.Column('payload', sa.Text(), nullable=True))
        b.alter_column('sop_instance_uid', existing_type=sa.String(length=64), nullable=True)
        b.alter_column('series_instance_uid', existing_type=sa.String(length=64), nullable=True)
        b.drop_constraint('uq_writebacks_destination_sop', type_='unique')
    op.execute("UPDATE writebacks SET object_key = sop_instance_uid")
    with op.batch_alter_table('writebacks', schema=None) as b:
        b.alter_column('object_key', existing_type=sa.String(length=200), nullable=False)
        b.create_unique_constraint('uq_writebacks_destination_object', ['destination', 'object_key'])
        b.create_foreign_key('fk_writebacks_report', 'reports', ['report_id'], ['id'], ondelete='CASCADE')
        b.create_index('ix_writebacks_report', ['report_id', 'destination', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('writebacks', schema=None) as b:
        b.drop_index('ix_writebacks_report')
        b.drop_constraint('fk_writebacks_report', type_='foreignkey')
        b.drop_constraint('uq_writebacks_destination_object', type_='unique')
        b.drop_column('payload')
        b.drop_column('signoff_id')
        b.drop_column('report_id')
        b.drop_column('object_key')
        b.create_unique_constraint('uq_writebacks_destination_sop', ['destination', 'sop_instance_uid'])
    op.drop_table('signoffs')
    with op.batch_alter_table('reports', schema=None) as b:
        b.drop_index('ix_reports_study')
        b.drop_index('ix_reports_patient')
        b.drop_index('ix_reports_state')
    op.drop_table('reports')
