"""`chiron train`, `chiron evaluate`, `chiron query` and `chiron receipt verify`."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from chiron.client import plots
from chiron.client.attestation import load_policy
from chiron.client.distributed import DEFAULT_EXCHANGE_EVERY
from chiron.client.inputs import load_query_inputs
from chiron.client.job_inputs import check_dataset_key, make_plan
from chiron.client.options import (
    ALLOW_SIMULATION,
    JSON,
    LOCAL,
    POLICY,
    STATE_DIR,
    TOKEN,
    URL,
    default_state_dir,
)
from chiron.client.outputs import check_destination, output_paths, save_trained, summary_lines
from chiron.client.querying import UnlockedModel, evaluate, query
from chiron.client.receipts import verify_receipt_offline
from chiron.client.targets import open_target, require_one_target, unlock
from chiron.client.targets import train as train_model
from chiron.core.errors import UsageError
from chiron.core.fileio import atomic_write, read_input_file
from chiron.core.keys import load_public_identity
from chiron.core.limits import MAX_PERIOD_MS, MAX_WORKERS

_stderr = Console(stderr=True)


def train(
    recipe: str | None = typer.Option(
        None,
        "--recipe",
        help="the recipe file (.py); with --url, a recipe registered there "
        "(with --rendezvous, the node agents hold it)",
    ),
    dataset: Path = typer.Option(..., "--dataset", help="encrypted dataset (.chd)"),
    data_key_path: Path = typer.Option(..., "--data-key", help="the dataset's key file"),
    owner_key: Path = typer.Option(..., "--owner", help="the owner's private key file"),
    provider_key: Path | None = typer.Option(
        None,
        "--provider",
        help="the provider you expect (its .pub): the recipe's signed statement must name it",
    ),
    statement_file: Path | None = typer.Option(
        None,
        "--statement",
        help="the provider's signed recipe statement (default: beside the recipe file; "
        "with --url, the one registered there)",
    ),
    out: Path = typer.Option(..., "--out", help="where to write the escrowed model (.chm)"),
    epochs: int | None = typer.Option(None, "--epochs", min=1, help="override the recipe's epochs"),
    seed: int = typer.Option(0, "--seed", min=0, help="seed for initialisation and shuffling"),
    local: bool = LOCAL,
    url: str | None = URL,
    token: str | None = TOKEN,
    allow_simulation: bool = ALLOW_SIMULATION,
    policy_file: Path | None = POLICY,
    state_dir: Path | None = STATE_DIR,
    as_json: bool = JSON,
    force: bool = typer.Option(False, "--force", help="overwrite an existing model file"),
    workers: int = typer.Option(
        1,
        "--workers",
        min=1,
        max=MAX_WORKERS,
        help="training enclaves, each on its shard; more than 1 adds a parameter-server enclave",
    ),
    exchange_every: int = typer.Option(
        DEFAULT_EXCHANGE_EVERY,
        "--exchange-every",
        min=1,
        help="with several workers: optimizer steps between parameter exchanges",
    ),
    async_staleness: int | None = typer.Option(
        None,
        "--async-staleness",
        min=0,
        help="with several workers: asynchronous updates, no worker more than N rounds "
        "ahead of the slowest (default: synchronous averaging)",
    ),
    fixed_rate: bool | None = typer.Option(
        None,
        "--fixed-rate/--no-fixed-rate",
        help="run on a fixed clock: progress, checkpoints, exchanges and the end happen "
        "only every period, whatever the data (default: on with several workers or "
        "--period-ms, off otherwise)",
    ),
    period_ms: int | None = typer.Option(
        None,
        "--period-ms",
        min=1,
        max=MAX_PERIOD_MS,
        help="the fixed-rate period in milliseconds (default: calibrated by the enclave "
        "on synthetic records before it sees the data)",
    ),
    rendezvous: str | None = typer.Option(
        None,
        "--rendezvous",
        help="HOST:PORT of the torchrun store where node agents run the job's enclaves "
        "(see docs/distributed.md)",
    ),
    wire_trace: Path | None = typer.Option(
        None,
        "--wire-trace",
        help="with several workers: write what each enclave sent and "
        "received (time, size, type) as JSON",
    ),
) -> None:
    """Train a provider's recipe on an encrypted dataset inside an attested enclave."""
    distributed = workers > 1 or rendezvous is not None
    require_one_target(local, url, rendezvous)
    if recipe is None and rendezvous is None:
        raise UsageError("--recipe is required (with --rendezvous, the node agents hold it)")
    if distributed and url is not None:
        raise UsageError("several workers run with --local or --rendezvous, not --url")
    if not distributed and (wire_trace is not None or async_staleness is not None):
        raise UsageError("--wire-trace and --async-staleness need --workers 2 or more")
    check_destination(out, force=force)
    if rendezvous is not None and workers < 2:
        raise UsageError("with --rendezvous, --workers N names the training enclaves (2 or more)")
    if rendezvous is not None and statement_file is None:
        raise UsageError("with --rendezvous, --statement names the recipe's signed statement")
    plan = make_plan(
        seed=seed,
        epochs=epochs,
        workers=workers,
        exchange_every=exchange_every,
        async_staleness=async_staleness,
        fixed_rate=fixed_rate,
        period_ms=period_ms,
    )
    with (
        open_target(
            local=local,
            url=url,
            token=token,
            allow_simulation=allow_simulation,
            policy_file=policy_file,
            state_dir=state_dir,
            rendezvous=rendezvous,
            train_ahead=not distributed,
        ) as target,
        _progress_bar(as_json) as progress,
    ):
        task = progress.add_task("training", total=None)
        trained = train_model(
            target,
            recipe=recipe,
            statement_path=statement_file,
            dataset=dataset,
            data_key_path=data_key_path,
            owner_key=owner_key,
            provider=load_public_identity(provider_key) if provider_key else None,
            plan=plan,
            on_progress=lambda step, total: progress.update(task, completed=step, total=total),
            upload_progress=not as_json,
        )
    summary = save_trained(out, trained.outcome)
    if trained.wire_traces is not None and wire_trace is not None:
        atomic_write(wire_trace, (json.dumps(trained.wire_traces, indent=1) + "\n").encode())
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        for line in summary_lines(summary):
            typer.echo(line)


def _progress_bar(quiet: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps"),
        TimeRemainingColumn(),
        console=_stderr,
        # Only on a terminal, and gone once done: scripts and logs get exactly one
        # line on failure, nothing else.
        disable=quiet or not _stderr.is_terminal,
        transient=True,
    )


PROVIDER_AGENT = typer.Option(
    None,
    "--provider",
    help="URL of the provider's key-release agent (`chiron keys serve`), "
    "e.g. http://127.0.0.1:8471: it releases the provider's share to the attested enclave",
)


def _unlocked_session(
    stack: ExitStack,
    *,
    model_path: Path,
    owner_key: Path,
    provider_url: str | None,
    local: bool,
    url: str | None,
    token: str | None,
    allow_simulation: bool,
    policy_file: Path | None,
    state_dir: Path | None,
) -> UnlockedModel:
    target = stack.enter_context(
        open_target(
            local=local,
            url=url,
            token=token,
            allow_simulation=allow_simulation,
            policy_file=policy_file,
            state_dir=state_dir,
        )
    )
    return unlock(
        target, stack, model_path=model_path, owner_key=owner_key, provider_url=provider_url
    )


def evaluate_command(
    model_path: Path = typer.Option(..., "--model", help="escrowed model file (.chm)"),
    owner_key: Path = typer.Option(..., "--owner", help="the owner's private key file"),
    provider_url: str | None = PROVIDER_AGENT,
    dataset: Path = typer.Option(..., "--dataset", help="encrypted labelled dataset (.chd)"),
    data_key_path: Path = typer.Option(..., "--data-key", help="the dataset's key file"),
    local: bool = LOCAL,
    url: str | None = URL,
    token: str | None = TOKEN,
    allow_simulation: bool = ALLOW_SIMULATION,
    policy_file: Path | None = POLICY,
    state_dir: Path | None = STATE_DIR,
    as_json: bool = JSON,
    plot: Path | None = typer.Option(None, "--plot", help="confusion-matrix PNG to write"),
) -> None:
    """Measure a model's accuracy on an encrypted dataset, inside a query enclave."""
    _, data_key = check_dataset_key(dataset, data_key_path)
    with ExitStack() as stack:
        unlocked = _unlocked_session(
            stack,
            model_path=model_path,
            owner_key=owner_key,
            provider_url=provider_url,
            local=local,
            url=url,
            token=token,
            allow_simulation=allow_simulation,
            policy_file=policy_file,
            state_dir=state_dir,
        )
        report = evaluate(unlocked, dataset_path=str(dataset.resolve()), data_key=data_key)
    plot_path = plot or Path(f"{output_paths(model_path)['confusion'].with_suffix('')}-eval.png")
    plots.confusion_matrix(
        report["confusion_matrix"],
        [row["class"] for row in report["per_class"]],
        plot_path,
        title=f"confusion matrix ({report['records']} records)",
    )
    report["confusion_plot"] = str(plot_path)
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(f"accuracy {report['accuracy']:.4f} on {report['records']} records")
    table = Table("class", "support", "precision", "recall")
    for row in report["per_class"]:
        table.add_row(
            row["class"],
            str(row["support"]),
            "-" if row["precision"] is None else f"{row['precision']:.3f}",
            "-" if row["recall"] is None else f"{row['recall']:.3f}",
        )
    Console().print(table)
    typer.echo(f"confusion matrix: {plot_path}")


def query_command(
    model_path: Path = typer.Option(..., "--model", help="escrowed model file (.chm)"),
    owner_key: Path = typer.Option(..., "--owner", help="the owner's private key file"),
    provider_url: str | None = PROVIDER_AGENT,
    inputs_path: Path = typer.Option(
        ..., "--inputs", help=".npy, .npz (array x), IDX, an image file or a folder of images"
    ),
    local: bool = LOCAL,
    url: str | None = URL,
    token: str | None = TOKEN,
    allow_simulation: bool = ALLOW_SIMULATION,
    policy_file: Path | None = POLICY,
    state_dir: Path | None = STATE_DIR,
    as_json: bool = JSON,
) -> None:
    """Ask an escrowed model for predictions; answers only, never weights."""
    with ExitStack() as stack:
        unlocked = _unlocked_session(
            stack,
            model_path=model_path,
            owner_key=owner_key,
            provider_url=provider_url,
            local=local,
            url=url,
            token=token,
            allow_simulation=allow_simulation,
            policy_file=policy_file,
            state_dir=state_dir,
        )
        inputs = load_query_inputs(inputs_path, unlocked.header.schema)
        opened, budget_left = query(unlocked, inputs)
    answers = opened.as_dicts()
    names = unlocked.header.schema.class_names
    for answer in answers:
        if names:
            answer["class"] = names[answer["label"]]
    if as_json:
        typer.echo(json.dumps({"predictions": answers, "budget_left": budget_left}))
        return
    table = Table("#", "label", "class", "confidence")
    for index, answer in enumerate(answers):
        probabilities = answer.get("probabilities")
        confidence = f"{max(probabilities):.3f}" if probabilities else "-"
        table.add_row(str(index), str(answer["label"]), answer.get("class", ""), confidence)
    Console().print(table)
    if budget_left is not None:
        typer.echo(f"query budget left: {budget_left}")


def receipt_verify(
    model_path: Path = typer.Argument(..., help="escrowed model file (.chm)"),
    receipt_path: Path | None = typer.Option(None, "--receipt", help="default: MODEL.receipt.json"),
    allow_simulation: bool = ALLOW_SIMULATION,
    policy_file: Path | None = POLICY,
    state_dir: Path | None = STATE_DIR,
    as_json: bool = JSON,
) -> None:
    """Verify a training receipt offline: evidence, signature, and that it names this model."""
    receipt_file = receipt_path or output_paths(model_path)["receipt"]
    policy = load_policy(policy_file, allow_simulation=allow_simulation)
    statement = verify_receipt_offline(
        read_input_file(receipt_file, what="receipt"),
        read_input_file(model_path, what="model file"),
        policy=policy,
        state_dir=state_dir or default_state_dir(),
    )
    if as_json:
        typer.echo(json.dumps(statement))
        return
    typer.echo(f"ok: receipt {receipt_file} verifies for {model_path}")
    for key in ("measurement", "platform", "recipe_sha256", "dataset_ids", "model_sha256", "plan"):
        typer.echo(f"  {key:<15} {statement.get(key)}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
    app.command("evaluate")(evaluate_command)
    app.command("query")(query_command)
    receipt_app = typer.Typer(help="Training receipts.", no_args_is_help=True)
    receipt_app.command("verify")(receipt_verify)
    app.add_typer(receipt_app, name="receipt")
