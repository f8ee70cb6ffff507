"""The client's side of attestation: ask an enclave for evidence, verify it, decide.

Every flow that hands an enclave a secret (a data key, a model-key share) first calls
`verify_enclave` with a fresh random nonce and seals the secret only to the public
identity the verified evidence authenticates. Evidence comes from an `EvidenceSource`:
a local enclave process (`LocalEnclaveSession.evidence`) or a Chiron service
(`ServiceClient.attestation_evidence`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from chiron.client.remote import ServiceClient
from chiron.core.attestation import (
    PLATFORM_SIM,
    Evidence,
    Policy,
    SimRoot,
    VerificationReport,
    load_sim_root,
    verify_evidence,
)
from chiron.core.errors import AttestationError, PolicyError
from chiron.core.fileio import atomic_write, read_input_file
from chiron.core.keys import PublicIdentity
from chiron.core.limits import MAX_POLICY_BYTES, MAX_ROOT_DOCUMENT_BYTES
from chiron.core.measurement import measure_runtime
from chiron.core.roles import Role

EvidenceSource = Callable[[bytes], bytes]
SimRootSource = Callable[[], Sequence[SimRoot]]

NONCE_BYTES = 32
KNOWN_SIM_ROOTS_DIRECTORY = "known-sim-roots"


@dataclass(frozen=True)
class AttestedEnclave:
    """An enclave whose evidence satisfied the policy, and the keys it authenticated."""

    identity: PublicIdentity
    report: VerificationReport


def load_policy(path: Path | None, *, allow_simulation: bool) -> Policy:
    """The policy a command verifies against.

    Without a file: accept exactly this installation's own runtime measurement. With
    `allow_simulation` (the --allow-simulation flag), simulated evidence is accepted
    even if the file does not allow it.
    """
    own_measurement = measure_runtime().hex
    if path is None:
        return Policy(measurements=(own_measurement,), UNSAFE_allow_simulation=allow_simulation)
    raw = read_input_file(path, what="policy file", limit=MAX_POLICY_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: a policy file must be UTF-8 text") from None
    policy = Policy.from_toml(
        text, default_measurement=own_measurement, source=str(path), base_dir=path.parent
    )
    if allow_simulation:
        return dataclasses.replace(policy, UNSAFE_allow_simulation=True)
    return policy


def local_sim_roots(state_dir: Path) -> tuple[SimRoot, ...]:
    """The simulation root of this machine's state directory, if one was created."""
    root = load_sim_root(state_dir)
    return () if root is None else (root,)


def known_sim_roots(state_dir: Path) -> tuple[SimRoot, ...]:
    """Every simulation root this client trusts: its own and the services' it met.

    Offline checks (a receipt of a model trained on a service) have no service to ask;
    they accept the roots trusted earlier, and no other.
    """
    roots = list(local_sim_roots(state_dir))
    directory = state_dir / KNOWN_SIM_ROOTS_DIRECTORY
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else ():
        raw = read_input_file(path, what="known simulation root", limit=MAX_ROOT_DOCUMENT_BYTES)
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise AttestationError(f"{path} is not a valid simulation root record") from None
        root = document.get("root") if isinstance(document, dict) else None
        roots.append(SimRoot.from_document(root, source=str(path)))
    return tuple(roots)


def appraise_evidence(
    evidence: bytes,
    nonce: bytes,
    policy: Policy,
    *,
    state_dir: Path,
    sim_roots: SimRootSource | None = None,
    now: float | None = None,
) -> VerificationReport:
    """Verify evidence requested with `nonce`, fetching simulation roots only if needed.

    `now` is the verification time (seconds since the epoch; default the clock).
    """
    roots: Sequence[SimRoot] = ()
    if Evidence.from_bytes(evidence).platform == PLATFORM_SIM:
        roots = sim_roots() if sim_roots is not None else local_sim_roots(state_dir)
    return verify_evidence(evidence, policy, nonce=nonce, sim_roots=roots, now=now)


def appraise_enclave(
    get_evidence: EvidenceSource,
    policy: Policy,
    *,
    state_dir: Path,
    sim_roots: SimRootSource | None = None,
) -> VerificationReport:
    """Ask for evidence over a fresh random nonce and verify it; never raises on refusal."""
    nonce = os.urandom(NONCE_BYTES)
    evidence = get_evidence(nonce)
    return appraise_evidence(evidence, nonce, policy, state_dir=state_dir, sim_roots=sim_roots)


def accept(report: VerificationReport, role: Role | None = None) -> AttestedEnclave:
    """The attested enclave, or an AttestationError listing every failed check.

    With `role`, the evidence must also say the enclave plays that role and serves
    nothing yet: a flow about to hand over a secret for a new job or model must be
    talking to a fresh enclave of the right kind, not to one a host repurposed.
    """
    if not report.ok or report.identity is None:
        raise AttestationError(refusal_message(report))
    if role is not None and report.claims.role != role:
        raise AttestationError(
            f"enclave refused: it is a {report.claims.role or 'unknown'} enclave, "
            f"not a {role} enclave"
        )
    if role is not None and report.claims.binding:
        raise AttestationError("enclave refused: it already serves another job or model")
    return AttestedEnclave(report.identity, report)


def verify_enclave(
    get_evidence: EvidenceSource,
    policy: Policy,
    *,
    state_dir: Path,
    sim_roots: SimRootSource | None = None,
    role: Role | None = None,
) -> AttestedEnclave:
    """Attest an enclave: fresh nonce, evidence, verification; raise unless it passes.

    Simulation roots come from `sim_roots` when given (e.g. a service's root, trusted
    on first use), else from `state_dir` (the root a local enclave created there).
    Flows that release a secret pass the `role` the enclave must attest to.
    """
    report = appraise_enclave(get_evidence, policy, state_dir=state_dir, sim_roots=sim_roots)
    return accept(report, role)


def refusal_message(report: VerificationReport) -> str:
    failures = report.failures
    others = "; ".join(f"{c.name}: {c.reason}" for c in failures if c.name != "simulation")
    if any(check.name == "simulation" for check in failures):
        message = (
            "enclave refused: the evidence is simulated (no TEE) and protects nothing "
            "against the host; pass --allow-simulation to accept it for testing"
        )
        return f"{message} (also failed: {others})" if others else message
    return f"enclave refused: {others or 'the evidence does not authenticate the enclave'}"


def service_sim_roots(service: ServiceClient, state_dir: Path, policy: Policy) -> SimRootSource:
    """Where `appraise_evidence` gets simulation roots for a service's evidence.

    Only a policy that allows simulation fetches the service's root (trusted on first
    use); otherwise no root is trusted, and simulated evidence fails that check too.
    """

    def roots() -> Sequence[SimRoot]:
        if not policy.UNSAFE_allow_simulation:
            return ()
        root = SimRoot.from_document(
            service.sim_root(), source=f"the simulation root of {service.url}"
        )
        return (trust_sim_root_on_first_use(state_dir, service.url, root),)

    return roots


def trust_sim_root_on_first_use(state_dir: Path, url: str, root: SimRoot) -> SimRoot:
    """Remember a service's simulation root the first time; refuse if it later changes.

    Trust on first use: the first answer is believed (simulation protects nothing
    anyway); afterwards a different root for the same service is refused, so a changed
    installation or a swapped service is noticed rather than silently accepted.
    """
    directory = state_dir / KNOWN_SIM_ROOTS_DIRECTORY
    path = directory / f"{hashlib.sha256(url.rstrip('/').encode()).hexdigest()[:32]}.json"
    if path.exists():
        raw = read_input_file(path, what="known simulation root", limit=MAX_ROOT_DOCUMENT_BYTES)
        try:
            known = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            known = None
        trusted = SimRoot.from_document(
            known.get("root") if isinstance(known, dict) else None, source=str(path)
        )
        if trusted != root:
            raise AttestationError(
                f"the simulation root of {url} changed since first use "
                f"({trusted.fingerprint[:16]} -> {root.fingerprint[:16]}); "
                f"if that is expected, delete {path}"
            )
        return trusted
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    document = {"url": url.rstrip("/"), "root": root.to_document()}
    atomic_write(path, (json.dumps(document, indent=2) + "\n").encode("utf-8"))
    return root
