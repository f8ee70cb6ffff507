"""`chiron recipe dry-run`: a provider tries a recipe in the real sandbox on synthetic data.

The run happens in a separate enclave-side process (`chiron.enclave.sandbox.dryrun`), the
way the client reaches any enclave code; this command shows what that process reports:
the recipe's own output and tracebacks (the data is synthetic, so they are safe to
show), a progress bar, and a summary or the failure's reason class.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from chiron.client.statements import statement_path_for
from chiron.core.errors import EnclaveError, InputError, JobFailed
from chiron.core.fileio import atomic_write, read_input_file
from chiron.core.framing import FramingError, read_frame
from chiron.core.keys import load_identity
from chiron.core.limits import MAX_RECIPE_BYTES
from chiron.core.recipe_statement import make_statement, recipe_name_for_file
from chiron.core.schema import SUPPORTED_DTYPES, DatasetSchema
from chiron.enclave.boundary import EVENT, FAILURE, MAX_MESSAGE_BYTES, RESULT, unpack_message

_stderr = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add this room's commands to the `chiron` app."""
    recipe_app = typer.Typer(
        help="A provider's local recipe files: dry-run in the sandbox, sign "
        "(`chiron service recipes` for those registered on a service).",
        no_args_is_help=True,
    )
    recipe_app.command("dry-run")(dry_run)
    recipe_app.command("sign")(sign)
    app.add_typer(recipe_app, name="recipe")


def sign(
    recipe: Path = typer.Argument(..., help="the recipe file (.py)"),
    key: Path = typer.Option(..., "--key", help="the provider's private key file"),
    name: str | None = typer.Option(
        None, "--name", help="the recipe's name (default: the file's stem)"
    ),
    version: str = typer.Option("1", "--version", help="the recipe's version"),
    out: Path | None = typer.Option(
        None, "--out", help="where to write the statement (default: RECIPE.statement.json)"
    ),
    force: bool = typer.Option(False, "--force", help="overwrite an existing statement"),
) -> None:
    """Sign RECIPE as its provider: the statement an enclave needs to name you provider.

    It pins the file's SHA-256, its name and version and the digest of the query policy
    the recipe declares; the model's second key share is escrowed to the signing key.
    """
    source = read_input_file(recipe, what="recipe", limit=MAX_RECIPE_BYTES)
    provider = load_identity(key)
    statement = make_statement(
        source,
        name=name or recipe_name_for_file(recipe.name),
        version=version,
        provider=provider,
    )
    target = out or statement_path_for(recipe)
    atomic_write(target, statement.to_bytes(), overwrite=force)
    typer.echo(f"signed {recipe} as {statement.statement.name} {statement.statement.version}")
    typer.echo(f"  recipe sha256   {statement.statement.recipe_sha256}")
    typer.echo(f"  provider        {provider.public.fingerprint}")
    typer.echo(f"  statement       {target}")


def dry_run(
    recipe: Path = typer.Argument(..., help="the recipe file (.py)"),
    shape: str = typer.Option(..., "--shape", help="input shape of one record, e.g. 1,28,28"),
    classes: int = typer.Option(..., "--classes", help="number of classes"),
    dtype: str = typer.Option(
        "uint8", "--dtype", help=f"record dtype: {', '.join(SUPPORTED_DTYPES)}"
    ),
    records: int = typer.Option(256, "--records", min=2, help="synthetic records to train on"),
    epochs: int = typer.Option(1, "--epochs", min=1, help="epochs (overrides the recipe's)"),
    seed: int = typer.Option(0, "--seed", min=0, help="seed of the synthetic data and the run"),
) -> None:
    """Run RECIPE in the sandbox on synthetic data, showing its output and tracebacks."""
    read_input_file(recipe, what="recipe", limit=MAX_RECIPE_BYTES)
    schema = DatasetSchema(input_shape=_parse_shape(shape), dtype=dtype, num_classes=classes)
    command = [
        sys.executable, "-m", "chiron.enclave.sandbox.dryrun",
        "--recipe", str(recipe.resolve()),
        "--shape", ",".join(map(str, schema.input_shape)),
        "--dtype", schema.dtype, "--classes", str(schema.num_classes),
        "--records", str(records), "--epochs", str(epochs), "--seed", str(seed),
    ]  # fmt: skip
    try:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    except OSError as exc:
        raise EnclaveError(f"could not start the dry run: {exc.strerror}") from None
    try:
        report = _follow(process, recipe.name)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()
    _print_summary(recipe.name, schema, report)


def _parse_shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise InputError(f"--shape must be comma-separated integers, not {text!r}") from None


def _follow(process: subprocess.Popen[bytes], name: str) -> dict[str, Any]:
    """Show the dry run's events until its result; raise its failure."""
    assert process.stdout is not None
    pending = b""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_stderr,
    ) as progress:
        task = progress.add_task(f"starting the sandbox for {name}", total=None)
        while True:
            try:
                frame = read_frame(process.stdout.fileno(), max_payload=MAX_MESSAGE_BYTES)
            except FramingError:
                frame = None
            if frame is None:
                raise EnclaveError("the dry-run process stopped unexpectedly")
            message = unpack_message(frame.payload)
            if frame.kind == EVENT and message.get("event") == "log":
                pending += message["data"]
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    progress.console.out(line.decode("utf-8", "replace"), highlight=False)
            elif frame.kind == EVENT and message.get("event") == "progress":
                progress.update(
                    task,
                    description=f"training {name}",
                    completed=message["step"],
                    total=message["total"],
                )
            elif frame.kind in (RESULT, FAILURE):
                if pending:
                    progress.console.out(pending.decode("utf-8", "replace"), highlight=False)
                if frame.kind == RESULT:
                    return message
                if message.get("reason_class"):
                    raise JobFailed(str(message["reason_class"]), str(message["message"]))
                error = InputError if message.get("error") == "InputError" else EnclaveError
                raise error(str(message.get("message")))
            else:
                raise EnclaveError("the dry-run process sent an unknown message")


def _print_summary(name: str, schema: DatasetSchema, report: dict[str, Any]) -> None:
    shape = "x".join(map(str, schema.input_shape))
    typer.echo(
        f"dry run passed: {name} on synthetic {schema.dtype} records of shape {shape}, "
        f"{schema.num_classes} classes"
    )
    typer.echo(f"  model       {report['model_nbytes']:,} bytes, as declared before the data")
    typer.echo(f"  checkpoint  {report['checkpoint_nbytes']:,} bytes, as declared")
    typer.echo(
        f"  training    {report['steps']} steps ({report['epochs']} epoch(s), batch size "
        f"{report['batch_size']}) on {report['train_records']} records, "
        f"{report['holdout_records']} held out for predictions"
    )
    typer.echo(
        f"  time        {report['startup_seconds']:.1f} s sandbox start-up, "
        f"{report['seconds']:.1f} s in all"
    )
