"""account import digest

The digest of the CSV row an account was last imported from (core/accounts/importer.py), so that
re-importing an unchanged file reads each row's digest instead of parsing its phones again.
Accounts imported before it have none and are compared field by field once, then get one.

Revision ID: c4d1a7e9b3f0
Revises: c3f2a9d4e5b6
Create Date: 2026-12-02 09:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = 'c4d1a7e9b3f0'
down_revision: Union[str, Sequence[str], None] = 'c3f2a9d4e5b6'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('import_digest', sa.String(length=32), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('accounts', schema=None) as batch_op:
        batch_op.drop_column('import_digest')
