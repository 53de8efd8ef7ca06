"""operator desk PIN and console credential sends per case

Revision ID: a1d35c0de5c1
Revises: 4faefc373268
Create Date: 2026-12-02 06:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = 'a1d35c0de5c1'
down_revision: Union[str, Sequence[str], None] = '4faefc373268'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    # The desk PIN (§6.11): NULL until `eirc-gateway operators set-pin` sets it.
    with op.batch_alter_table('operators', schema=None) as batch_op:
        batch_op.add_column(sa.Column('desk_pin_hash', sa.String(length=256), nullable=True))
    # Console sends per case (§6.15); cases already open start at 0.
    with op.batch_alter_table('escalations', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('credential_sends', sa.Integer(), server_default='0', nullable=False)
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('escalations', schema=None) as batch_op:
        batch_op.drop_column('credential_sends')
    with op.batch_alter_table('operators', schema=None) as batch_op:
        batch_op.drop_column('desk_pin_hash')
