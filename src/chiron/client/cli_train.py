"""`chiron train`, `chiron evaluate`, `chiron query` and `chiron receipt verify`."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from chiron.client import plots
from chiron.client.attestation import load_policy, service_sim_roots
from chiron.client.distributed import (
    DEFAULT_EXCHANGE_EVERY,
    train_locally,
    train_through_rendezvous,
)
from chiron.client.inputs import load_query_inputs
from chiron.client.key_release import AgentShareSource
from chiron.client.options import (
    ALLOW_SIMULATION,
    JSON,
    LOCAL,
    POLICY,
    STATE_DIR,
    TOKEN,
    URL,
    default_state_dir,
    require_one_target,
)
from chiron.client.querying import evaluate, query, unlock_model
from chiron.client.receipts import verify_receipt_offline
from chiron.client.remote import RemoteJobSession, RemoteQuerySession, ServiceClient
from chiron.client.sessions import EnclaveSession, LocalEnclaveSession
from chiron.client.statements import load_statement, statement_path_for
from chiron.client.training import check_provider, local_job_id, run_training
from chiron.core import container
from chiron.core.contract import TrainMaterials
from chiron.core.errors import InputError, JobFailed, UsageError
from chiron.core.fileio import atomic_write, read_input_file
from chiron.core.keys import DataKey, load_data_key, load_identity, load_public_identity
from chiron.core.limits import MAX_RECIPE_BYTES, MAX_WORKERS
from chiron.core.manifest import DatasetRef, Plan
from chiron.core.recipe_statement import SignedRecipeStatement

_stderr = Console(stderr=True)


def _outputs(model_path: Path) -> dict[str, Path]:
    stem = model_path.with_suffix("") if model_path.suffix == ".chm" else model_path
    return {
        "receipt": Path(f"{stem}.receipt.json"),
        "report": Path(f"{stem}.report.json"),
        "curve": Path(f"{stem}.curve.png"),
        "confusion": Path(f"{stem}.confusion.png"),
    }


def _check_dataset_key(dataset: Path, data_key_path: Path) -> tuple[DatasetRef, DataKey]:
    header, digest = container.read_dataset_header_and_digest(dataset)
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
    if rendezvous is None:
        require_one_target(local, url)
    elif local or url is not None:
        raise UsageError("give exactly one of --local, --url URL or --rendezvous HOST:PORT")
    if recipe is None and rendezvous is None:
        raise UsageError("--recipe is required (with --rendezvous, the node agents hold it)")
    if distributed and url is not None:
        raise UsageError("several workers run with --local or --rendezvous, not --url")
    if not distributed and (wire_trace is not None or async_staleness is not None):
        raise UsageError("--wire-trace and --async-staleness need --workers 2 or more")
    if out.exists() and not force:
        raise InputError(f"{out} already exists (use --force to overwrite)")
    if not out.parent.is_dir():
        raise InputError(f"cannot write {out}: directory {out.parent} does not exist")
    if rendezvous is not None and workers < 2:
        raise UsageError("with --rendezvous, --workers N names the training enclaves (2 or more)")
    if rendezvous is not None and statement_file is None:
        raise UsageError("with --rendezvous, --statement names the recipe's signed statement")
    state = state_dir or default_state_dir()
    policy = load_policy(policy_file, allow_simulation=allow_simulation)
    owner = load_identity(owner_key)
    expected_provider = load_public_identity(provider_key) if provider_key else None
    dataset_ref, data_key = _check_dataset_key(dataset, data_key_path)
    plan = Plan(
        seed=seed,
        epochs=epochs,
        workers=workers,
        exchange_every=exchange_every if distributed else 0,
        mode="async" if distributed and async_staleness is not None else "sync",
        staleness=(async_staleness or 0) if distributed else 0,
    )
    checkpoint_dir: Path | None = None
    wire_traces = None
    with ExitStack() as stack:
        session: EnclaveSession
        if url is not None:
            # The service holds the provider's registered recipes: --recipe names one,
            # and the service hands out its provider's signed statement.
            client = stack.enter_context(ServiceClient(url, token))
            statement = (
                load_statement(statement_file)
                if statement_file
                else SignedRecipeStatement.from_bytes(client.recipe_statement(str(recipe)))
            )
            check_provider(statement, expected_provider)
            uploaded = client.upload_dataset(dataset, progress=not as_json)
            job_id = client.create_job(recipe=recipe, dataset=uploaded["id"])["id"]
            session = RemoteJobSession(client, job_id)
            sim_roots = service_sim_roots(client, state, policy)
            recipe_source = None
        elif rendezvous is not None:
            assert statement_file is not None
            statement = load_statement(statement_file)
            check_provider(statement, expected_provider)
            recipe_source = None
        else:
            recipe_path = Path(str(recipe))
            recipe_source, statement = load_local_recipe(recipe_path, statement_file)
            check_provider(statement, expected_provider)
        job_id_local = local_job_id(
            statement=statement, dataset=dataset_ref, owner=owner.public, plan=plan
        )
        common = {
            "data_key": data_key,
            "dataset": dataset_ref,
            "owner": owner,
            "statement": statement,
            "plan": plan,
            "policy": policy,
            "state_dir": state,
            "on_event": _progress_events(stack, as_json),
        }
        try:
            if distributed:
                if rendezvous is not None:
                    result = train_through_rendezvous(rendezvous, **common)
                else:
                    assert recipe_source is not None
                    result = train_locally(
                        recipe_path=Path(str(recipe)),
                        recipe_source=recipe_source,
                        dataset_path=dataset,
                        **common,
                    )
                outcome, wire_traces = result.training, result.wire_traces
            else:
                if url is None:
                    assert recipe_source is not None
                    job_id = job_id_local
                    checkpoint_dir = state / "jobs" / job_id
                    materials = TrainMaterials(
                        recipe_name=Path(str(recipe)).name,
                        recipe_source=recipe_source,
                        recipe_statement=statement,
                        dataset_path=str(dataset.resolve()),
                        checkpoint_dir=str(checkpoint_dir),
                    )
                    session = stack.enter_context(
                        LocalEnclaveSession(
                            "train", state, extra_args={"train": materials.to_wire()}
                        )
                    )
                    sim_roots = None
                outcome = run_training(session, job_id=job_id, sim_roots=sim_roots, **common)
        except JobFailed as exc:
            raise JobFailed(exc.reason_class, f"training failed: {exc.reason_class}") from None
    paths = _outputs(out)
    report = outcome.report
    atomic_write(paths["receipt"], outcome.receipt)
    atomic_write(paths["report"], (json.dumps(report, indent=2) + "\n").encode())
    plots.training_curve(report["epoch_accuracy"], paths["curve"], title="held-out accuracy")
    plots.confusion_matrix(
        report["confusion_matrix"],
        report["class_names"],
        paths["confusion"],
        title="held-out confusion matrix",
    )
    if wire_traces is not None and wire_trace is not None:
        atomic_write(wire_trace, (json.dumps(wire_traces, indent=1) + "\n").encode())
    atomic_write(out, outcome.model)
    if checkpoint_dir is not None:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    summary = {
        "model": str(out),
        "model_id": report["model_id"],
        "holdout_accuracy": report["final_holdout_accuracy"],
        "epoch_accuracy": report["epoch_accuracy"],
        "resumed_from_step": report["resumed_from_step"],
        **{name: str(path) for name, path in paths.items()},
    }
    if as_json:
        typer.echo(json.dumps(summary))
    else:
        typer.echo(f"model     {out} (escrowed: needs both the owner's and the provider's share)")
        typer.echo(f"held-out accuracy {report['final_holdout_accuracy']:.4f}")
        for name, path in paths.items():
            typer.echo(f"{name:<9} {path}")


def _progress_events(stack: ExitStack, quiet: bool) -> Callable[[dict[str, Any]], None]:
    """A progress bar for the rest of `stack`, and the event handler that drives it."""
    progress = stack.enter_context(_progress_bar(quiet))
    task = progress.add_task("training", total=None)

    def on_event(event: dict[str, Any]) -> None:
        if event.get("event") == "progress":
            progress.update(task, completed=event["step"], total=event["total"])

    return on_event


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


def _provider_agent(stack: ExitStack, provider_url: str | None) -> AgentShareSource:
    """The provider's agent: the only way the provider's share reaches a query enclave."""
    if provider_url is None:
        raise UsageError(
            "the provider's share comes from its key-release agent: pass --provider URL "
            "(the provider runs `chiron keys serve`)"
        )
    source = AgentShareSource(provider_url)
    stack.callback(source.close)
    return source


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
):
    require_one_target(local, url)
    provider = _provider_agent(stack, provider_url)
    state = state_dir or default_state_dir()
    policy = load_policy(policy_file, allow_simulation=allow_simulation)
    model = read_input_file(model_path, what="model file")
    owner = load_identity(owner_key)
    if url is not None:
        client = stack.enter_context(ServiceClient(url, token))
        session: EnclaveSession = stack.enter_context(
            RemoteQuerySession.for_model_file(client, model_path, progress=False)
        )
        sim_roots = service_sim_roots(client, state, policy)
    else:
        session = stack.enter_context(LocalEnclaveSession("query", state))
        sim_roots = None
    return unlock_model(
        session,
        model=model,
        owner=owner,
        provider=provider,
        policy=policy,
        state_dir=state,
        sim_roots=sim_roots,
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
    _, data_key = _check_dataset_key(dataset, data_key_path)
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
    plot_path = plot or Path(f"{_outputs(model_path)['confusion'].with_suffix('')}-eval.png")
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
        answers, budget_left = query(unlocked, inputs)
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
    receipt_file = receipt_path or _outputs(model_path)["receipt"]
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
