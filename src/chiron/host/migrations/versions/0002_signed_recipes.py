"""Signed recipes and manifests: recipe statements, pinned provider identities, header digests.

Revision ID: 0002
Revises: 0001

Adds the stored provider statement of each recipe, the provider identity a provider
account first registered under, the SHA-256 of each dataset's exact header (what a job
manifest names), and the enclave's signature over a job's owner report. Every column is
nullable: rows from before this revision keep working where they can (a recipe without
a statement is listed but cannot start a job until its provider registers it again).
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("provider_public", sa.String(length=128), nullable=True))
    with op.batch_alter_table("recipes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("statement_sha256", sa.String(length=64), nullable=True))
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("header_sha256", sa.String(length=64), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("owner_report_signature_sha256", sa.String(length=64), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("owner_report_signature_sha256")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_column("header_sha256")
    with op.batch_alter_table("recipes", schema=None) as batch_op:
        batch_op.drop_column("statement_sha256")
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("provider_public")
