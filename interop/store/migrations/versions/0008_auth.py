"""Built-in authorization server: users, clients, codes, refresh tokens, sessions, launches, assertion ids

Revision ID: 0008
Revises: 0006
Create Date: 2026-11-23 09:00:00

"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | Sequence[str] | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
HASH = sa.String(length=64)


def upgrade() -> None:
    op.create_table(
        'auth_users',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('username', sa.String(length=64), nullable=False),
        sa.Column('display_name', sa.String(length=256), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('password_hash', sa.String(length=256), nullable=False),
        sa.Column('active', sa.Boolean(), nullable=False),
        sa.Column('fhir_user', sa.String(length=256), nullable=True),
        sa.Column('created_at', TS, nullable=False),
        sa.Column('updated_at', TS, nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('username'),
    )
    op.create_table(
        'auth_clients',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('client_id', sa.String(length=128), nullable=False),
        sa.Column('public', sa.Boolean(), nullable=False),
        sa.Column('redirect_uris', sa.Text(), nullable=False),
        sa.Column('scopes', sa.Text(), nullable=False),
        sa.Column('jwks', sa.Text(), nullable=True),
        sa.Column('secret_hash', sa.String(length=256), nullable=True),
        sa.Column('active', sa.Boolean(), nullable=False),
        sa.Column('created_at', TS, nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('client_id'),
    )
    op.create_table(
        'auth_codes',
        sa.Column('code_hash', HASH, nullable=False),
        sa.Column('client_id', sa.String(length=128), nullable=False),
        sa.Column('username', sa.String(length=64), nullable=False),
        sa.Column('redirect_uri', sa.Text(), nullable=False),
        sa.Column('scope', sa.Text(), nullable=False),
        sa.Column('code_challenge', sa.String(length=128), nullable=True),
        sa.Column('audience', sa.Text(), nullable=False),
        sa.Column('patient', sa.String(length=64), nullable=True),
        sa.Column('nonce', sa.String(length=256), nullable=True),
        sa.Column('auth_time', sa.BigInteger(), nullable=False),
        sa.Column('expires_at', sa.BigInteger(), nullable=False),
        sa.Column('used_at', sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint('code_hash'),
    )
    op.create_table(
        'auth_refresh_tokens',
        sa.Column('token_hash', HASH, nullable=False),
        sa.Column('family', HASH, nullable=False),
        sa.Column('client_id', sa.String(length=128), nullable=False),
        sa.Column('username', sa.String(length=64), nullable=False),
        sa.Column('scope', sa.Text(), nullable=False),
        sa.Column('audience', sa.Text(), nullable=False),
        sa.Column('patient', sa.String(length=64), nullable=True),
        sa.Column('auth_time', sa.BigInteger(), nullable=False),
        sa.Column('expires_at', sa.BigInteger(), nullable=False),
        sa.Column('used_at', sa.BigInteger(), nullable=True),
        sa.Column('revoked_at', sa.BigInteger(), nullable=True),
        sa.Column('created_at', TS, nullable=False),
        sa.PrimaryKeyConstraint('token_hash'),
    )
    with op.batch_alter_table('auth_refresh_tokens', schema=None) as b:
        b.create_index('ix_auth_refresh_family', ['family'], unique=False)
        b.create_index('ix_auth_refresh_user', ['username'], unique=False)
    op.create_table(
        'auth_sessions',
        sa.Column('session_hash', HASH, nullable=False),
        sa.Column('username', sa.String(length=64), nullable=False),
        sa.Column('auth_time', sa.BigInteger(), nullable=False),
        sa.Column('expires_at', sa.BigInteger(), nullable=False),
        sa.Column('revoked_at', sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint('session_hash'),
    )
    with op.batch_alter_table('auth_sessions', schema=None) as b:
        b.create_index('ix_auth_sessions_username', ['username'], unique=False)
    op.create_table(
        'auth_launches',
        sa.Column('launch_hash', HASH, nullable=False),
        sa.Column('patient', sa.String(length=64), nullable=False),
        sa.Column('expires_at', sa.BigInteger(), nullable=False),
        sa.Column('created_at', TS, nullable=False),
        sa.PrimaryKeyConstraint('launch_hash'),
    )
    op.create_table(
        'auth_assertion_ids',
        sa.Column('client_id', sa.String(length=128), nullable=False),
        sa.Column('jti', sa.String(length=256), nullable=False),
        sa.Column('expires_at', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('client_id', 'jti'),
    )
    with op.batch_alter_table('auth_assertion_ids', schema=None) as b:
        b.create_index('ix_auth_assertion_ids_expires_at', ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('auth_assertion_ids', schema=None) as b:
        b.drop_index('ix_auth_assertion_ids_expires_at')
    op.drop_table('auth_assertion_ids')
    op.drop_table('auth_launches')
    with op.batch_alter_table('auth_sessions', schema=None) as b:
        b.drop_index('ix_auth_sessions_username')
    op.drop_table('auth_sessions')
    with op.batch_alter_table('auth_refresh_tokens', schema=None) as b:
        b.drop_index('ix_auth_refresh_user')
        b.drop_index('ix_auth_refresh_family')
    op.drop_table('auth_refresh_tokens')
    op.drop_table('auth_codes')
    op.drop_table('auth_clients')
    op.drop_table('auth_users')
