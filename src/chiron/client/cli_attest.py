"""`chiron measure` and `chiron attest`."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path

import typer
from rich.console import Console

from chiron.client.attestation import accept, appraise_enclave, load_policy, service_sim_roots
from chiron.client.options import (
    ALLOW_SIMULATION,
    JSON,
    LOCAL,
    POLICY,
    STATE_DIR,
    URL,
    default_state_dir,
    require_one_target,
)
from chiron.client.remote import ServiceClient
from chiron.core.attestation import VerificationReport
from chiron.core.measurement import measure_runtime
from chiron.enclave.boundary import EnclaveProcess

_stderr = Console(stderr=True)


def measure(
    show_list: bool = typer.Option(False, "--list", help="show every file and version covered"),
    as_json: bool = JSON,
) -> None:
    """Print the expected enclave measurement of this installation."""
    measurement = measure_runtime()
    if as_json:
        document = {
            "measurement": measurement.hex,
            "entries": [entry.to_dict() for entry in measurement.entries],
        }
        typer.echo(json.dumps(document, indent=2))
        return
    if show_list:
        for entry in measurement.entries:
            typer.echo(f"{entry.kind:<13} {entry.name:<48} {entry.value}")
        typer.echo(f"{len(measurement.entries)} entries; measurement:")
    typer.echo(measurement.hex)


def attest(
    local: bool = LOCAL,
    url: str | None = URL,
    policy_file: Path | None = POLICY,
    allow_simulation: bool = ALLOW_SIMULATION,
    as_json: bool = JSON,
    state_dir: Path | None = STATE_DIR,
) -> None:
    """Verify an enclave's evidence over a fresh nonce and print the verification report."""
    require_one_target(local, url)
    state = state_dir or default_state_dir()
    policy = load_policy(policy_file, allow_simulation=allow_simulation)
    with ExitStack() as stack:
        if not as_json:
            stack.enter_context(_stderr.status("asking the enclave for evidence"))
        if url is not None:
            service = stack.enter_context(ServiceClient(url))
            report = appraise_enclave(
                service.attestation_evidence,
                policy,
                state_dir=state,
                sim_roots=service_sim_roots(service, state, policy),
            )
        else:
            enclave = stack.enter_context(EnclaveProcess.start(role="train", state_dir=state))
            report = appraise_enclave(
                lambda nonce: enclave.call("attest", {"nonce": nonce})["evidence"],
                policy,
                state_dir=state,
            )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_report(report)
    accept(report)


def _print_report(report: VerificationReport) -> None:
    if report.simulated:
        typer.echo(
            typer.style(
                "SIMULATED: no TEE; this evidence protects nothing against the host",
                fg="red",
                bold=True,
            )
        )
    rows = [
        ("platform", report.platform + (" (SIMULATED)" if report.simulated else "")),
        ("measurement", report.measurement),
        ("debug", "yes" if report.debug else "no"),
        (
            "tcb level",
            str(report.tcb_level) + (f" ({report.tcb_detail})" if report.tcb_detail else ""),
        ),
        ("age", f"{report.age_seconds} s"),
    ]
    if report.launch_measurement:
        rows.append(("launch", report.launch_measurement))
    if report.identity is not None:
        rows.append(("enclave key", report.identity.fingerprint))
    for label, value in rows:
        typer.echo(f"{label:<12} {value}")
    for check in report.checks:
        mark = typer.style("PASS", fg="green") if check.passed else typer.style("FAIL", fg="red")
        typer.echo(f"  {mark} {check.name:<17} {check.reason}")
    if report.ok:
        typer.echo("verified: the enclave satisfies the policy")


def register(app: typer.Typer) -> None:
    """Add this room's commands to the `chiron` app."""
    app.command("measure")(measure)
    app.command("attest")(attest)
