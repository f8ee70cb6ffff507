"""Recipe statements on disk: where `chiron recipe sign` writes one and `train` finds it."""

from __future__ import annotations

from pathlib import Path

from chiron.core.fileio import read_input_file
from chiron.core.recipe_statement import (
    MAX_STATEMENT_BYTES,
    STATEMENT_SUFFIX,
    SignedRecipeStatement,
)


def statement_path_for(recipe_path: Path) -> Path:
    """`cnn.py` → `cnn.statement.json`, beside the recipe."""
    return recipe_path.with_name(recipe_path.name.removesuffix(".py") + STATEMENT_SUFFIX)


def load_statement(path: Path) -> SignedRecipeStatement:
    """Read and verify a provider's signed statement (the provider's own signature)."""
    return SignedRecipeStatement.from_bytes(
        read_input_file(path, what="recipe statement", limit=MAX_STATEMENT_BYTES)
    )
