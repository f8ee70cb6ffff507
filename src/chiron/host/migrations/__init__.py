"""Alembic migrations of the service database, applied automatically at start."""
