"""Alembic environment: runs on the connection `chiron.host.db.migrate` hands over."""

from alembic import context

from chiron.host.db import Base

connection = context.config.attributes["connection"]
# Batch mode lets later revisions alter tables on SQLite too.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
