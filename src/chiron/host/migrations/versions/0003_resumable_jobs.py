"""Resumable jobs: a job's binding digest and its latest signed manifest.

Revision ID: 0003
Revises: 0002

A job stopped by a service restart or a lost enclave is now `interrupted`, and its
owner may resume it in a fresh enclave under a new manifest for the same job. The
first start records the SHA-256 of the manifest's job binding (everything but the
enclave instances and the signing time); every later start must name the same
binding. The latest signed manifest is kept in the artifact store so the owner's
client can resume without restating the plan (it checks its own signature on it).
Both columns are nullable: jobs from before this revision were never started
under a recorded binding and are not resumable.
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("binding_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("manifest_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("manifest_sha256")
        batch_op.drop_column("binding_sha256")
