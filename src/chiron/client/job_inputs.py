"""The owner's inputs to a training job, checked on this machine before anything starts.

The data set and its key, a recipe file and its provider's signed statement, and the
plan: the command line and the SDK both take them through here (`targets.train`).
"""

from __future__ import annotations

from pathlib import Path

from chiron.client.statements import load_statement, statement_path_for
from chiron.core import dataset as container
from chiron.core.data_windows import GROUP_DATA_LIMIT, streams
from chiron.core.errors import InputError, UsageError
from chiron.core.fileio import read_input_file
from chiron.core.keys import DataKey, load_data_key
from chiron.core.limits import DEFAULT_EXCHANGE_EVERY, MAX_RECIPE_BYTES
from chiron.core.manifest import DatasetRef, Plan
from chiron.core.recipe_statement import SignedRecipeStatement


def check_dataset_key(
    dataset: Path, data_key_path: Path, *, group: bool = False
) -> tuple[DatasetRef, DataKey]:
    """The dataset's reference (id, header digest) and its key, which must be its own.

    `group`: the job runs on several workers, which hold their shards in memory; a data
    set that would stream is refused before anything starts.
    """
    header, digest = container.read_dataset_header_and_digest(dataset)
    if group and streams(header.record_count, header.schema.record_bytes):
        raise InputError(f"{dataset}: {GROUP_DATA_LIMIT}")
    data_key = load_data_key(data_key_path)
    if data_key.dataset_id != header.dataset_id:
        raise InputError(
            f"{data_key_path} is the key of dataset {data_key.dataset_id}, "
            f"not of {dataset} ({header.dataset_id})"
        )
    return DatasetRef(header.dataset_id, digest), data_key


def load_local_recipe(
    recipe_path: Path, statement_path: Path | None
) -> tuple[bytes, SignedRecipeStatement]:
    """A recipe file and its provider's signed statement (by default beside the file)."""
    source = read_input_file(recipe_path, what="recipe", limit=MAX_RECIPE_BYTES)
    statement_file = statement_path or statement_path_for(recipe_path)
    if not statement_file.exists():
        raise InputError(
            f"{recipe_path} has no signed statement ({statement_file} is missing): "
            "its provider signs it with `chiron recipe sign`"
        )
    statement = load_statement(statement_file)
    statement.check_recipe(source)
    return source, statement


def make_plan(
    *,
    seed: int,
    epochs: int | None,
    workers: int = 1,
    exchange_every: int = DEFAULT_EXCHANGE_EVERY,
    async_staleness: int | None = None,
    fixed_rate: bool | None = None,
    period_ms: int | None = None,
) -> Plan:
    """The owner's plan; exchange settings only mean something with several workers.

    A job with several workers runs fixed-rate unless the owner says otherwise: its
    exchanges cross the host's network, where their timing is the easiest thing to see.
    One enclave runs fixed-rate when the owner asks (`fixed_rate`) or gives a period.
    """
    distributed = workers > 1
    if fixed_rate is None:
        fixed_rate = distributed or period_ms is not None
    if period_ms is not None and not fixed_rate:
        raise UsageError("--period-ms needs the fixed-rate mode")
    return Plan(
        seed=seed,
        epochs=epochs,
        workers=workers,
        exchange_every=exchange_every if distributed else 0,
        mode="async" if distributed and async_staleness is not None else "sync",
        staleness=(async_staleness or 0) if distributed else 0,
        fixed_rate=fixed_rate,
        period_ms=period_ms,
    )
