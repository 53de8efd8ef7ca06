"""escalation route column

How a transfer reached the operators (`dial` or `enqueue`) was a key of the case's JSON context,
and the queue was counted with `LIKE '%"route": "enqueue"%'`. It becomes a column: upgrade moves
each case's route out of its context, downgrade puts it back.

Revision ID: c3f2a9d4e5b6
Revises: b2e7ca11e1d2
Create Date: 2026-12-02 09:00:00.000000

"""
import json
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = 'c3f2a9d4e5b6'
down_revision: Union[str, Sequence[str], None] = 'b2e7ca11e1d2'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

ROUTES = ('dial', 'enqueue')
escalations = sa.table(
    'escalations',
    sa.column('id', sa.Integer),
    sa.column('context', sa.Text),
    sa.column('route', sa.String),
)


def _context(text: str | None) -> dict[str, object]:
    try:
        value = json.loads(text or '{}')
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _dump(context: dict[str, object]) -> str:
    return json.dumps(context, ensure_ascii=False, sort_keys=True)


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('escalations', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                'route',
                sa.Enum(*ROUTES, name='escalation_route', native_enum=False, length=16),
                nullable=True,
            )
        )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(escalations.c.id, escalations.c.context).where(
            escalations.c.context.like('%"route"%')
        )
    ).all()
    for row_id, text in rows:
        context = _context(text)
        route = context.pop('route', None)
        connection.execute(
            escalations.update()
            .where(escalations.c.id == row_id)
            .values(route=route if route in ROUTES else None, context=_dump(context))
        )


def downgrade() -> None:
    """Downgrade schema."""
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(escalations.c.id, escalations.c.context, escalations.c.route).where(
            escalations.c.route.is_not(None)
        )
    ).all()
    for row_id, text, route in rows:
        context = {**_context(text), 'route': route}
        connection.execute(
            escalations.update().where(escalations.c.id == row_id).values(context=_dump(context))
        )
    with op.batch_alter_table('escalations', schema=None) as batch_op:
        batch_op.drop_column('route')
