"""Service commands: `chiron serve`, accounts, and a provider's and owner's view of a service.

`serve` and `service account create` act on a state directory on this machine (the
operator's); the rest (`service recipes|datasets|jobs|models ...`) talk to a running
service over HTTP with a token (`--token` or CHIRON_TOKEN); `service jobs` also take
`--local`, for this machine's own host (`chiron train --local`). Everything about a service
is under `chiron service`, so it never reads like the local file tools beside it
(`chiron dataset` encrypts a file, `chiron service datasets` lists those uploaded).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from chiron.client.job_commands import jobs_list, jobs_resume, jobs_show, print_result
from chiron.client.options import (
    JSON,
    TOKEN,
    default_state_dir,
)
from chiron.client.remote import ServiceClient
from chiron.core.errors import InputError, UsageError
from chiron.core.fileio import read_input_file
from chiron.core.keys import load_identity
from chiron.core.limits import MAX_RECIPE_BYTES
from chiron.core.recipe_statement import make_statement
from chiron.core.schema import DatasetSchema

SERVICE_URL = typer.Option(..., "--url", help="the Chiron service, e.g. http://127.0.0.1:8470")
SERVICE_STATE = typer.Option(
    None, "--state", help="service state directory (default $CHIRON_HOME/service)"
)
DB_URL = typer.Option(
    None, "--db", help="database URL (default SQLite in the state directory), e.g. postgresql://..."
)


def _service_state(state: Path | None) -> Path:
    return state if state is not None else default_state_dir() / "service"


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on"),
    port: int = typer.Option(8470, "--port", help="port to listen on (0: any free port)"),
    state: Path | None = SERVICE_STATE,
    db: str | None = DB_URL,
    store: str | None = typer.Option(
        None,
        "--store",
        help="artifact store (default a folder in the state directory): s3://bucket/prefix",
    ),
    s3_endpoint: str | None = typer.Option(
        None,
        "--s3-endpoint",
        envvar="CHIRON_S3_ENDPOINT",
        help="S3 endpoint URL for S3-compatible stores (credentials: the usual AWS settings)",
    ),
    concurrency: int = typer.Option(1, "--concurrency", min=1, max=64, help="jobs run at once"),
    platform: str = typer.Option("sim", "--platform", help="enclave platform: sim or tsm"),
) -> None:
    """Run the Chiron service: REST API, job runner, artifact store."""
    from chiron.host.config import ServiceConfig
    from chiron.host.server import serve_forever

    if not 0 <= port <= 65535:
        raise UsageError("--port must be between 0 and 65535")
    config = ServiceConfig(
        state_dir=_service_state(state),
        db_url=db,
        store_url=store,
        s3_endpoint=s3_endpoint,
        concurrency=concurrency,
        platform=platform,
    )

    def ready(service: Any, url: str) -> None:
        typer.echo(f"chiron: serving on {url} (state {config.state_dir})", err=True)
        typer.echo(f"chiron: operator token in {service.operator_token_path}", err=True)
        if platform == "sim":
            typer.echo(
                "chiron: platform sim: simulated enclaves protect nothing against this host",
                err=True,
            )
        typer.echo(url)

    serve_forever(config, host=host, port=port, on_ready=ready)


def account_create(
    name: str = typer.Argument(..., help="account name"),
    role: str = typer.Option("owner", "--role", help="owner or provider"),
    state: Path | None = SERVICE_STATE,
    db: str | None = DB_URL,
) -> None:
    """Create an account and print its token (shown this once; stored only hashed)."""
    from chiron.host.accounts import PEPPER_FILE, create_account, load_pepper
    from chiron.host.config import ServiceConfig
    from chiron.host.db import Database

    directory = _service_state(state)
    if not (directory / PEPPER_FILE).is_file():
        raise UsageError(
            f"{directory} holds no Chiron service state; run `chiron serve --state {directory}` "
            "once first"
        )
    database = Database(ServiceConfig(state_dir=directory, db_url=db).database_url)
    try:
        token = create_account(database, load_pepper(directory), name=name, role=role)
    finally:
        database.close()
    typer.echo(token)


def recipes_register(
    name: str = typer.Argument(..., help="the recipe's name on the service"),
    source: Path = typer.Option(..., "--source", help="the recipe file (stays on the service)"),
    key: Path = typer.Option(
        ..., "--key", help="your provider key (private; it signs here and is never sent)"
    ),
    version: str = typer.Option("1", "--version", help="the version you sign the recipe as"),
    description: str = typer.Option("", "--description", help="public description"),
    task: str = typer.Option("classification", "--task", help="what the recipe does"),
    input_schema: str | None = typer.Option(
        None,
        "--input-schema",
        help='JSON, e.g. {"input_shape": [1, 28, 28], "dtype": "uint8", ...}',
    ),
    url: str = SERVICE_URL,
    token: str | None = TOKEN,
    as_json: bool = JSON,
) -> None:
    """Register a recipe with your signed statement: owners see both, never its source.

    The statement (recipe SHA-256, name, version, query policy digest, your identity)
    is signed here with your key; only the statement and the file are sent.
    """
    schema = None
    if input_schema is not None:
        try:
            schema = DatasetSchema.from_dict(json.loads(input_schema)).to_dict()
        except json.JSONDecodeError:
            raise InputError("--input-schema is not valid JSON") from None
    recipe_source = read_input_file(source, what="recipe", limit=MAX_RECIPE_BYTES)
    statement = make_statement(
        recipe_source, name=name, version=version, provider=load_identity(key)
    )
    with ServiceClient(url, token) as client:
        recipe = client.register_recipe(
            name,
            source=recipe_source,
            statement=statement.to_bytes(),
            description=description,
            task=task,
            input_schema=schema,
        )
    print_result(
        recipe,
        as_json,
        [
            f"registered recipe {recipe['name']} version {version} "
            f"({recipe['source_sha256'][:16]}), provider {statement.provider.fingerprint[:16]}"
        ],
    )


def recipes_list(url: str = SERVICE_URL, token: str | None = TOKEN, as_json: bool = JSON) -> None:
    """List the recipes a service offers."""
    with ServiceClient(url, token) as client:
        recipes = client.recipes()
    print_result(
        recipes,
        as_json,
        [f"{r['name']}\t{r['task']}\t{r['description']}" for r in recipes] or ["no recipes"],
    )


def datasets_upload(
    path: Path = typer.Argument(..., help="an encrypted dataset (.chd)"),
    url: str = SERVICE_URL,
    token: str | None = TOKEN,
    as_json: bool = JSON,
) -> None:
    """Upload an encrypted dataset (resumes an interrupted upload of the same file)."""
    with ServiceClient(url, token) as client:
        dataset = client.upload_dataset(path)
    print_result(dataset, as_json, [f"dataset {dataset['id']} ({dataset['record_count']} records)"])


def datasets_list(url: str = SERVICE_URL, token: str | None = TOKEN, as_json: bool = JSON) -> None:
    """List your datasets."""
    with ServiceClient(url, token) as client:
        datasets = client.datasets()
    print_result(
        datasets,
        as_json,
        [f"{d['id']}\t{d['record_count']} records\t{d['size']} bytes" for d in datasets]
        or ["no datasets"],
    )


def models_list(url: str = SERVICE_URL, token: str | None = TOKEN, as_json: bool = JSON) -> None:
    """List models (owners: your own; providers: those trained with your recipes)."""
    with ServiceClient(url, token) as client:
        models = client.models()
    print_result(
        models,
        as_json,
        [f"{m['id']}\tjob {m['job']}\t{m['size']} bytes" for m in models] or ["no models"],
    )


def models_download(
    model: str = typer.Argument(..., help="model id"),
    out: Path = typer.Option(..., "--out", help="file to write (the escrowed model)"),
    url: str = SERVICE_URL,
    token: str | None = TOKEN,
) -> None:
    """Download an escrowed model file (it opens only in a query enclave, with both shares)."""
    with ServiceClient(url, token) as client:
        client.model_file(model, out)
    typer.echo(f"wrote {out}")


def register(app: typer.Typer) -> None:
    """Add this room's commands to the `chiron` app: `serve`, and `service ...`.

    Everything that lives on a service is under `chiron service` (plural nouns, like the
    REST resources), apart from the local file tools of the `dataset` and `recipe` rooms.
    """
    app.command("serve")(serve)
    service_app = typer.Typer(
        help="A Chiron service: its accounts (on the machine that runs it), and the "
        "recipes, datasets, jobs and models it holds (over HTTP, --url).",
        no_args_is_help=True,
    )
    groups = (
        ("account", "Accounts of a service you run.", {"create": account_create}),
        (
            "recipes",
            "A provider's recipes on a service (`chiron recipe` for local recipe files).",
            {"register": recipes_register, "list": recipes_list},
        ),
        (
            "datasets",
            "Your encrypted datasets on a service (`chiron dataset` for local .chd files).",
            {"upload": datasets_upload, "list": datasets_list},
        ),
        (
            "jobs",
            "Training jobs on a service.",
            {"list": jobs_list, "show": jobs_show, "resume": jobs_resume},
        ),
        (
            "models",
            "Escrowed models on a service.",
            {"list": models_list, "download": models_download},
        ),
    )
    for name, help_text, commands in groups:
        group = typer.Typer(help=help_text, no_args_is_help=True)
        for command, function in commands.items():
            group.command(command)(function)
        service_app.add_typer(group, name=name)
    app.add_typer(service_app, name="service")
    # The spelling the two-party walkthrough was first written with keeps working for
    # registering a recipe; it is the very same command, not listed in --help.
    former = typer.Typer(no_args_is_help=True, hidden=True)
    former.command("register")(recipes_register)
    app.add_typer(former, name="recipes", hidden=True)
