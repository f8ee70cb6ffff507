"""`chiron evidence verify`: check a TDX quote or SEV-SNP report offline."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import typer

from chiron.client import collateral as fetch_collateral
from chiron.client.attestation import load_policy
from chiron.client.options import JSON, POLICY
from chiron.core.attestation.event_log import MAX_EVENT_LOG_BYTES
from chiron.core.attestation.evidence import PLATFORM_SEV_SNP, PLATFORM_TDX
from chiron.core.attestation.hardware_verifier import (
    MAX_HARDWARE_EVIDENCE_BYTES,
    HardwareInputs,
    decode_evidence,
    verify_hardware_evidence,
)
from chiron.core.attestation.report import HardwareVerification
from chiron.core.attestation.tdx_collateral import MAX_COLLATERAL_BYTES
from chiron.core.attestation.vendor_crypto import MAX_CERTIFICATE_FILE_BYTES
from chiron.core.errors import AttestationError, UsageError
from chiron.core.fileio import atomic_write, read_input_file

# What users type, to the platform names the rest of Chiron uses.
_PLATFORMS = {"snp": PLATFORM_SEV_SNP, "sev-snp": PLATFORM_SEV_SNP, "tdx": PLATFORM_TDX}


def collateral_command(
    evidence_file: Path = typer.Argument(..., help="SNP report, or TDX quote"),
    platform: str = typer.Option(..., "--platform", help="snp or tdx"),
    out: Path = typer.Option(..., "--out", help="where to write the bundle"),
    product: str | None = typer.Option(
        None, "--product", help="SNP: Milan, Genoa or Turin (when the report does not say)"
    ),
    force: bool = typer.Option(False, "--force", help="overwrite an existing bundle"),
) -> None:
    """Fetch the vendor's collateral for EVIDENCE_FILE once, for offline verification.

    TDX: Intel's TCB info, QE identity and CRLs (use with `verify --collateral`).
    SNP: AMD's VCEK, ASK and ARK for the report's chip and TCB (use with `--chain`).
    Needs network; verification never does.
    """
    name = _PLATFORMS.get(platform.lower())
    if name is None:
        raise UsageError(f"unknown platform {platform!r}: use snp or tdx")
    evidence = decode_evidence(
        read_input_file(evidence_file, what="evidence file", limit=MAX_HARDWARE_EVIDENCE_BYTES)
    )
    if name == PLATFORM_TDX:
        bundle = fetch_collateral.tdx_collateral(evidence)
    else:
        bundle = fetch_collateral.snp_chain(evidence, product=product)
    atomic_write(out, bundle, overwrite=force)
    typer.echo(f"wrote {out} ({len(bundle)} bytes); verify offline with it")


def verify(
    evidence_file: Path = typer.Argument(..., help="SNP report / Azure HCL report, or TDX quote"),
    platform: str = typer.Option(..., "--platform", help="snp or tdx"),
    chain: Path | None = typer.Option(
        None, "--chain", help="SNP: VCEK or VLEK (DER or PEM, may include ASK and ARK)"
    ),
    collateral: Path | None = typer.Option(
        None, "--collateral", help="TDX: offline collateral (QuoteCollateralV3 JSON)"
    ),
    event_log: Path | None = typer.Option(
        None, "--event-log", help="TDX: CCEL event log to replay against the RTMRs"
    ),
    at: str | None = typer.Option(
        None, "--at", help="verification time, ISO 8601 (default: now; UTC if no zone)"
    ),
    policy_file: Path | None = POLICY,
    as_json: bool = JSON,
) -> None:
    """Verify a TDX quote or SEV-SNP report offline and print every check."""
    name = _PLATFORMS.get(platform.lower())
    if name is None:
        raise UsageError(f"unknown platform {platform!r}: use snp or tdx")
    when = _time(at)
    policy = load_policy(policy_file, allow_simulation=False).hardware if policy_file else None
    inputs = HardwareInputs(
        platform=name,
        evidence=decode_evidence(
            read_input_file(evidence_file, what="evidence file", limit=MAX_HARDWARE_EVIDENCE_BYTES)
        ),
        chain=_optional(chain, "certificate file", MAX_CERTIFICATE_FILE_BYTES),
        collateral=_optional(collateral, "collateral file", MAX_COLLATERAL_BYTES),
        event_log=_optional(event_log, "event log", MAX_EVENT_LOG_BYTES),
    )
    result = verify_hardware_evidence(inputs, at=when, policy=policy)
    if as_json:
        typer.echo(json.dumps({**result.to_dict(), "verified_at": when.isoformat()}, indent=2))
    else:
        _print(result, when)
    if not result.ok:
        raise AttestationError(
            "evidence refused: "
            + "; ".join(f"{check.name}: {check.reason}" for check in result.failures)
        )


def _optional(path: Path | None, what: str, limit: int) -> bytes | None:
    return None if path is None else read_input_file(path, what=what, limit=limit)


def _time(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"--at {value!r} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _print(result: HardwareVerification, when: datetime) -> None:
    claims = result.claims
    rows = [
        ("platform", claims.platform),
        ("verified at", when.isoformat()),
        ("signing key", claims.signing_key or "-"),
        ("measurement", claims.measurement),
        *((f"rtmr{index}", value) for index, value in enumerate(claims.rtmrs)),
        ("report data", claims.report_data),
        ("debug", "yes" if claims.debug else "no"),
    ]
    if claims.tcb_components:
        rows.append(("tcb", ", ".join(f"{n} {v}" for n, v in claims.tcb_components)))
    if claims.platform == PLATFORM_TDX:
        rows.append(("tcb status", claims.tcb_status or "not checked (no collateral)"))
    for label, value in (
        ("product", claims.product),
        ("chip id", claims.chip_id),
        ("fmspc", claims.fmspc),
    ):
        if value:
            rows.append((label, value))
    for label, value in rows:
        typer.echo(f"{label:<12} {value}")
    for check in result.checks:
        mark = typer.style("PASS", fg="green") if check.passed else typer.style("FAIL", fg="red")
        typer.echo(f"  {mark} {check.name:<26} {check.reason}")
    if result.ok:
        typer.echo("verified: the evidence satisfies the policy")


def register(app: typer.Typer) -> None:
    """Add this room's commands to the `chiron` app."""
    evidence_app = typer.Typer(
        help="Verify TEE evidence (SEV-SNP reports, TDX quotes) against the vendors' pinned roots.",
        no_args_is_help=True,
    )
    evidence_app.command("verify")(verify)
    evidence_app.command("collateral")(collateral_command)
    app.add_typer(evidence_app, name="evidence")
