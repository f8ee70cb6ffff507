"""The shipped migrations build exactly the schema the models describe, and upgrade in place."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from chiron.host.db import Base, make_engine, migrate


def _config(connection) -> Config:
    config = Config()
    config.set_main_option("script_location", "chiron.host:migrations")
    config.attributes["connection"] = connection
    return config


def test_migrations_match_the_models(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == []
        assert MigrationContext.configure(connection).get_current_revision() is not None
    engine.dispose()


def test_migrating_twice_is_harmless_and_downgrade_reverses(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    migrate(engine)
    assert {"accounts", "jobs", "datasets", "models", "recipes", "uploads"} <= set(
        inspect(engine).get_table_names()
    )
    with engine.begin() as connection:
        command.downgrade(_config(connection), "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate(engine)
    assert "jobs" in inspect(engine).get_table_names()
    engine.dispose()


def test_migrations_ship_inside_the_package():
    from pathlib import Path

    import chiron.host.migrations as migrations

    folder = Path(migrations.__file__).parent
    assert (folder / "env.py").is_file()
    assert (folder / "script.py.mako").is_file()
    assert list((folder / "versions").glob("0001_*.py"))


def test_upgrading_from_0001_keeps_rows_and_leaves_the_new_columns_empty(tmp_path):
    from sqlalchemy import text

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with engine.begin() as connection:
        command.upgrade(_config(connection), "0001")
        connection.execute(
            text(
                "INSERT INTO accounts (id, name, role, token_hash, created) "
                "VALUES ('a', 'operator', 'provider', 'h', 0)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO recipes (name, account_id, description, task, provider_public, "
                "source_sha256, created) VALUES ('mlp', 'a', '', 'classification', 'p', 's', 0)"
            )
        )
    migrate(engine)
    with engine.connect() as connection:
        row = connection.execute(text("SELECT name, statement_sha256 FROM recipes")).one()
        pinned = connection.execute(text("SELECT provider_public FROM accounts")).scalar_one()
    assert tuple(row) == ("mlp", None) and pinned is None
    engine.dispose()
