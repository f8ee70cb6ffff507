"""The recipe SDK's entry points for code outside the sandbox.

A provider (or a test, or a benchmark) can load a recipe and train it in an ordinary
process with exactly the loop the enclave's sandbox runs, to check it or to compare.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from chiron.core.recipe_protocol import TrainingPlan
from chiron.core.schema import DatasetSchema
from chiron.recipes.hooks import DEFAULT_HYPERPARAMETERS, Recipe, load_recipe
from chiron.recipes.loop import RecordsInMemory, TrainingRun, check_size, declare
from chiron.recipes.windowed_records import WindowedRecordsInMemory

__all__ = ["DEFAULT_HYPERPARAMETERS", "Recipe", "load_recipe", "train_plain"]


def train_plain(
    source: str | bytes,
    schema: DatasetSchema,
    x: np.ndarray,
    y: np.ndarray,
    plan: TrainingPlan,
    *,
    filename: str = "recipe.py",
    on_step: Callable[[int], None] | None = None,
) -> bytes:
    """Train a recipe in this process, exactly as the sandbox does; return the weights.

    The reference for determinism and overhead: the same loading, declaration and loop
    as `runtime.serve`, without the sandbox or the channel. `x` and `y` are the training
    records, or, for a plan that streams (`plan.stream`), every record of the data set
    in file order (arrays or memory maps), from which the plan's windows are drawn.
    """
    recipe = load_recipe(source, filename=filename, overrides={"epochs": plan.epochs})
    declaration, _ = declare(recipe, schema)
    records = RecordsInMemory(x, y) if plan.stream is None else WindowedRecordsInMemory(x, y, plan)
    run = TrainingRun(recipe, schema, plan, records)
    run.run_until(plan.total_steps, on_step)
    return check_size("model", run.model_weights(), declaration.model_nbytes)
