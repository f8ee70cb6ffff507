"""`chiron dataset`: import and encrypt a data set, inspect its header, verify it with its key."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from chiron.client.importers import FORMATS, SPLITS, open_source
from chiron.client.options import JSON
from chiron.core.container import FORMAT_VERSION
from chiron.core.crypto import random_key
from chiron.core.dataset import (
    DatasetHeader,
    encrypt_dataset,
    read_dataset_header,
    verify_dataset,
)
from chiron.core.errors import InputError, IntegrityError, UsageError
from chiron.core.keys import DataKey, load_data_key


@contextlib.contextmanager
def _record_progress(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar over records on stderr (shown only on a terminal)."""
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda count: progress.advance(task, count)


def _refuse_existing(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise InputError(f"refusing to overwrite existing file {path} (use --force)")
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: directory {path.parent} does not exist")


def _describe_schema(header: DatasetHeader) -> str:
    schema = header.schema
    shape = "x".join(str(d) for d in schema.input_shape)
    return f"{shape} {schema.dtype}, {schema.num_classes} classes"


def encrypt(
    src: Path = typer.Argument(..., help="data to import: a file or a folder"),
    out: Path = typer.Option(..., "--out", help="encrypted dataset to write (.chd)"),
    key: Path = typer.Option(..., "--key", help="data key file to write (0600); keep it secret"),
    format: str = typer.Option("auto", "--format", help=f"one of {', '.join(FORMATS)}"),
    split: str | None = typer.Option(
        None, "--split", help="train or test (idx and cifar10 folders; default train)"
    ),
    label_column: str = typer.Option("label", "--label-column", help="CSV label column"),
    force: bool = typer.Option(False, "--force", help="overwrite existing --out and --key files"),
) -> None:
    """Import SRC and encrypt it under a fresh data key."""
    if out.resolve() == key.resolve():
        raise UsageError("--out and --key must be different files")
    if split is not None and split not in SPLITS:
        raise UsageError(f"unknown split {split!r} (use train or test)")
    _refuse_existing(out, force)
    _refuse_existing(key, force)
    source = open_source(src, format=format, split=split, label_column=label_column)
    data_key = random_key()
    with _record_progress("encrypting", source.record_count) as advance:
        header = encrypt_dataset(
            source.batches,
            out,
            data_key,
            schema=source.schema,
            record_count=source.record_count,
            overwrite=force,
            on_records=advance,
        )
    try:
        DataKey(header.dataset_id, data_key).save(key, overwrite=force)
    except BaseException:
        # A dataset whose key was never written is useless: leave neither behind.
        out.unlink(missing_ok=True)
        raise
    typer.echo(f"encrypted {source.description}")
    typer.echo(
        f"wrote {out}: {header.record_count} records ({_describe_schema(header)}) "
        f"in {header.chunk_count} chunks"
    )
    typer.echo(f"dataset id {header.dataset_id}")
    typer.echo(f"data key written to {key} (0600): keep it secret")


def inspect(
    file: Path = typer.Argument(..., help="encrypted dataset (.chd)"),
    as_json: bool = JSON,
) -> None:
    """Show the public header (no key needed; authenticated only by `verify`)."""
    header = read_dataset_header(file)
    if as_json:
        typer.echo(json.dumps(header.to_dict(), indent=2))
        return
    schema = header.schema
    rows = [
        ("format", f"Chiron dataset v{header.format_version} (container v{FORMAT_VERSION})"),
        ("dataset id", header.dataset_id),
        ("input shape", " x ".join(str(d) for d in schema.input_shape)),
        ("dtype", schema.dtype),
        ("classes", str(schema.num_classes)),
        ("class names", ", ".join(schema.class_names) or "(none)"),
        ("records", str(header.record_count)),
        ("chunks", f"{header.chunk_count} ({header.records_per_chunk} records each)"),
    ]
    for name, value in rows:
        typer.echo(f"{name:<12} {value}")
    typer.echo("(public header, not yet authenticated: `chiron dataset verify` checks it)")


def verify(
    file: Path = typer.Argument(..., help="encrypted dataset (.chd)"),
    key: Path = typer.Option(..., "--key", help="the dataset's data key file"),
) -> None:
    """Authenticate and validate every record of FILE with its data key."""
    data_key = load_data_key(key)
    header = read_dataset_header(file)
    if data_key.dataset_id != header.dataset_id:
        raise IntegrityError(
            f"{key} is the key of dataset {data_key.dataset_id}, but {file} is dataset "
            f"{header.dataset_id}"
        )
    with _record_progress("verifying", header.record_count) as advance:
        verified = verify_dataset(file, data_key.key, on_records=advance)
    typer.echo(f"ok: {verified.record_count} records ({_describe_schema(verified)})")


def register(app: typer.Typer) -> None:
    """Add this room's commands to the `chiron` app."""
    dataset_app = typer.Typer(
        help="Local dataset files: encrypt a data set for training, inspect its public "
        "header, verify it (`chiron service datasets` for those on a service).",
        no_args_is_help=True,
    )
    dataset_app.command("encrypt")(encrypt)
    dataset_app.command("inspect")(inspect)
    dataset_app.command("verify")(verify)
    app.add_typer(dataset_app, name="dataset")
