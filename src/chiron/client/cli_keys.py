"""Keys: `chiron keygen` (an identity), and `chiron keys` (the provider's key-release agent
and its state: revocations, trusted simulation roots)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import typer

from chiron.client.key_release_agent import AgentState, KeyReleaseAgent, make_server
from chiron.client.options import default_state_dir
from chiron.client.remote import ServiceClient
from chiron.core.attestation import SimRoot
from chiron.core.errors import AttestationError, PolicyError, UsageError
from chiron.core.fileio import read_input_file
from chiron.core.key_release import DEFAULT_CHALLENGE_SECONDS
from chiron.core.keys import Identity, load_identity
from chiron.core.limits import MAX_POLICY_BYTES, MAX_ROOT_DOCUMENT_BYTES
from chiron.core.measurement import measure_runtime
from chiron.core.release_policy import ReleasePolicy

DEFAULT_PORT = 8471

STATE = typer.Option(
    None,
    "--state",
    help="the agent's state: revocations, release counts, trusted simulation roots "
    "(default $CHIRON_HOME/key-release)",
)


def _state(directory: Path | None) -> AgentState:
    return AgentState(directory or default_state_dir() / "key-release")


def load_release_policy(path: Path) -> ReleasePolicy:
    """`release.toml`; without `measurements`, this installation's own runtime."""
    raw = read_input_file(path, what="release policy", limit=MAX_POLICY_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"{path}: a release policy must be UTF-8 text") from None
    return ReleasePolicy.from_toml(
        text, default_measurement=measure_runtime().hex, source=str(path)
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    key: Path = typer.Option(..., "--key", help="the provider's private key file"),
    policy_file: Path = typer.Option(
        ..., "--policy", help="release policy (TOML, see docs/key-release.md)", dir_okay=False
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind (default loopback)"),
    port: int = typer.Option(DEFAULT_PORT, "--port", min=0, max=65535, help="0: a free port"),
    state_dir: Path | None = STATE,
    challenge_seconds: int = typer.Option(
        DEFAULT_CHALLENGE_SECONDS,
        "--challenge-seconds",
        min=5,
        max=3600,
        help="how long a challenge stays good",
    ),
) -> None:
    """Release the provider's model shares to attested query enclaves, under a policy.

    Prints the agent's URL on the first line of stdout; decisions go to stderr, one
    line each, never a key or a share.
    """
    policy = load_release_policy(policy_file)
    identity = load_identity(key)
    state = _state(state_dir)
    agent = KeyReleaseAgent(identity, policy, state, challenge_seconds=challenge_seconds)
    try:
        server = make_server(agent, host, port)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    typer.echo(server.url)
    err = typer.get_text_stream("stderr")
    err.write(f"key-release agent for provider {identity.public.fingerprint[:16]}…\n")
    for line in policy.describe():
        err.write(f"  {line}\n")
    err.write(f"  state: {state.directory}\n")
    if not _is_loopback(host):
        err.write(
            "  note: plain HTTP beyond loopback: put TLS in front of it (shares travel sealed "
            "to the enclave, but the owner should know it talks to this agent)\n"
        )
    err.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def revoke(
    model_id: str = typer.Argument(
        ..., help="the model's id (32 hex digits, as the agent's log names it)"
    ),
    state_dir: Path | None = STATE,
) -> None:
    """Revoke a model: the agent releases its share to no new enclave, from now on.

    Enclaves that already hold the share keep serving until they stop; revocation
    stops the model from opening anywhere new.
    """
    state = _state(state_dir)
    if state.revoke(model_id):
        typer.echo(f"revoked model {model_id}: its share is released to no new enclave")
    else:
        typer.echo(f"model {model_id} was already revoked")


def trust_sim_root(
    root_file: Path | None = typer.Argument(
        None, help="a simulation root document (sim-platform/root.pub of an enclave host)"
    ),
    url: str | None = typer.Option(None, "--url", help="take the root of this Chiron service"),
    state_dir: Path | None = STATE,
) -> None:
    """Trust a simulation root for simulated evidence (UNSAFE: simulation protects nothing).

    Used only when the release policy says `allow_simulation = true`. Whoever holds this
    root's private key can obtain the shares this agent releases.
    """
    if (root_file is None) == (url is None):
        raise UsageError("give exactly one of a root FILE or --url URL")
    if url is not None:
        with ServiceClient(url) as service:
            root = SimRoot.from_document(service.sim_root(), source=f"the simulation root of {url}")
    else:
        assert root_file is not None
        raw = read_input_file(root_file, what="simulation root", limit=MAX_ROOT_DOCUMENT_BYTES)
        try:
            document = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise AttestationError(f"{root_file} is not a simulation root") from None
        root = SimRoot.from_document(document, source=str(root_file))
    path = _state(state_dir).trust_sim_root(root)
    typer.echo(f"trusting simulation root {root.fingerprint[:16]}… ({path})")


def keygen(
    out: Path = typer.Option(
        ..., "--out", help="private key file to write (0600); FILE.pub beside it"
    ),
    force: bool = typer.Option(False, "--force", help="overwrite existing key files"),
) -> None:
    """Create an identity: an Ed25519 signing key and an X25519 HPKE key."""
    identity = Identity.generate()
    public_path = identity.save(out, overwrite=force)
    typer.echo(f"wrote {out} (private, 0600) and {public_path}")
    typer.echo(f"fingerprint {identity.public.fingerprint}")


def register(app: typer.Typer) -> None:
    """Add this room's commands to the `chiron` app."""
    app.command("keygen")(keygen)
    keys_app = typer.Typer(
        help="The provider's key-release agent: its model shares, only to attested enclaves.",
        no_args_is_help=True,
    )
    keys_app.command("serve")(serve)
    keys_app.command("revoke")(revoke)
    keys_app.command("trust-sim-root")(trust_sim_root)
    app.add_typer(keys_app, name="keys")
