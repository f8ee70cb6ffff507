"""`chiron service jobs list|show|resume`: a host's training jobs, a service's or this machine's.

With `--url` they talk to a service with a token; with `--local` they open this
machine's own host (`chiron.host.local.LocalHost`, what `chiron train --local` runs
its jobs on). `resume` continues a job whose client, enclave or host was killed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from chiron.client.options import (
    ALLOW_SIMULATION,
    JSON,
    POLICY,
    STATE_DIR,
    TOKEN,
    URL,
    default_state_dir,
    require_one_target,
)
from chiron.client.remote import ServiceClient
from chiron.client.sessions import JobHost
from chiron.core.keys import load_identity

JOBS_LOCAL = typer.Option(
    False, "--local", help="this machine's own jobs (`chiron train --local`), not a service's"
)


def print_result(value: Any, as_json: bool, lines: list[str]) -> None:
    """`value` as JSON with --json, else `lines` for people."""
    if as_json:
        typer.echo(json.dumps(value, indent=2))
    else:
        for line in lines:
            typer.echo(line)


@contextmanager
def _jobs_of(
    local: bool, url: str | None, token: str | None, state_dir: Path | None
) -> Iterator[JobHost]:
    """The host whose jobs `service jobs list|show` mean: a service, or this machine's.

    This machine's may be running a job in another process: then they only look.
    """
    from chiron.client.targets import local_host

    require_one_target(local, url)
    if url is not None:
        with ServiceClient(url, token) as client:
            yield client
    else:
        with local_host(state_dir or default_state_dir(), view_only=True) as host:
            yield host


def jobs_list(
    local: bool = JOBS_LOCAL,
    url: str | None = URL,
    token: str | None = TOKEN,
    state_dir: Path | None = STATE_DIR,
    as_json: bool = JSON,
) -> None:
    """List jobs (owners: your own; providers: the state of jobs on your recipes)."""
    with _jobs_of(local, url, token, state_dir) as host:
        jobs = host.jobs()
    print_result(
        jobs, as_json, [f"{j['id']}\t{j['recipe']}\t{j['status']}" for j in jobs] or ["no jobs"]
    )


def jobs_show(
    job_id: str = typer.Argument(...),
    local: bool = JOBS_LOCAL,
    url: str | None = URL,
    token: str | None = TOKEN,
    state_dir: Path | None = STATE_DIR,
    as_json: bool = JSON,
) -> None:
    """Show one job's state."""
    with _jobs_of(local, url, token, state_dir) as host:
        job = host.job(job_id)
    lines = [f"job {job['id']}: {job['status']}", f"recipe {job['recipe']}"]
    if job.get("message"):
        lines.append(f"message: {job['message']}")
    if job.get("model"):
        lines.append(f"model {job['model']}")
    if job["state"] == "interrupted":
        where = "--local" if local else f"--url {url}"
        lines.append(f"continue it with `chiron service jobs resume {job['id']} {where} ...`")
    print_result(job, as_json, lines)


def jobs_resume(
    job_id: str = typer.Argument(..., help="the job to continue"),
    owner_key: Path = typer.Option(..., "--owner", help="the owner's private key file"),
    dataset: Path = typer.Option(..., "--dataset", help="the job's encrypted dataset (.chd)"),
    data_key_path: Path = typer.Option(..., "--data-key", help="the dataset's key file"),
    out: Path = typer.Option(..., "--out", help="where to write the escrowed model (.chm)"),
    local: bool = JOBS_LOCAL,
    url: str | None = URL,
    token: str | None = TOKEN,
    allow_simulation: bool = ALLOW_SIMULATION,
    policy_file: Path | None = POLICY,
    state_dir: Path | None = STATE_DIR,
    as_json: bool = JSON,
    force: bool = typer.Option(False, "--force", help="overwrite an existing model file"),
) -> None:
    """Continue a job after its client, its enclave or the service was killed.

    An interrupted job gets a fresh training enclave, which this client attests before
    it signs a new manifest for the same job (same recipe statement, dataset and plan,
    read from the job's last manifest, which must carry your signature) and seals the
    data key and the job secret to it; training continues from the last sealed
    checkpoint. A job still running or done (only the client died) is waited for.
    With --local, the job is one of this machine's own (`chiron train --local`).
    """
    from chiron.client.jobs import resume_job
    from chiron.client.outputs import check_destination, save_trained, summary_lines
    from chiron.client.targets import hosted_jobs, open_target

    check_destination(out, force=force)
    owner = load_identity(owner_key)

    def on_event(event: dict[str, Any]) -> None:
        if not as_json and event.get("event") == "progress":
            typer.echo(f"job {job_id}: step {event['step']} of {event['total']}", err=True)

    with (
        open_target(
            local=local,
            url=url,
            token=token,
            allow_simulation=allow_simulation,
            policy_file=policy_file,
            state_dir=state_dir,
        ) as target,
        hosted_jobs(target) as host,
    ):
        outcome = resume_job(
            host,
            job_id,
            owner=owner,
            dataset=dataset,
            data_key_path=data_key_path,
            policy=target.policy,
            state_dir=target.state_dir,
            sim_roots=target.sim_roots(),
            on_event=on_event,
        )
    summary = save_trained(out, outcome)
    print_result(summary, as_json, summary_lines(summary))
