"""wider caller ids

A case's callback number is the caller ID as Twilio gives it, which may be a `sip:` URI or a
`client:` identity, not only an E.164 number: 64 characters (core.models.CALLER_ID_CHARS).
Downgrading cuts longer values back to the old 20 characters (PostgreSQL refuses to narrow a
column that holds longer strings).

Revision ID: b2e7ca11e1d2
Revises: a1d35c0de5c1
Create Date: 2026-12-02 06:00:00.000000

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = 'b2e7ca11e1d2'
down_revision: Union[str, Sequence[str], None] = 'a1d35c0de5c1'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('escalations', schema=None) as batch_op:
        batch_op.alter_column(
            'phone',
            existing_type=sa.String(length=20),
            type_=sa.String(length=64),
            existing_nullable=False,
        )


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("UPDATE escalations SET phone = substr(phone, 1, 20) WHERE length(phone) > 20")
    with op.batch_alter_table('escalations', schema=None) as batch_op:
        batch_op.alter_column(
            'phone',
            existing_type=sa.String(length=64),
            type_=sa.String(length=20),
            existing_nullable=False,
        )
