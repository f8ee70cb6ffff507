"""`chiron demo`: the whole story on this machine, each step the command a person would type.

Three parties, each with its own folder and its own `CHIRON_HOME`: a service (started on
a free loopback port with a temporary state directory), a provider (`OUT/provider/`)
and an owner (`OUT/owner/`). The provider makes its key, registers its CNN recipe and
starts its key-release agent; the owner encrypts Fashion-MNIST, attests, trains through
the service, then evaluates and queries the model with only its own key, the provider's
share arriving from the provider's agent. Finally the provider revokes the model and the
owner's next query is refused. Every step runs the real `chiron` command line in a
subprocess, so the demo exercises exactly what a user would; the owner's commands never
see the provider's private key.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from rich.console import Console

from chiron.core.errors import ChironError, InputError

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "recipes"
_console = Console(stderr=True, highlight=False)


class DemoStepFailed(ChironError):
    """A step of the demo exited non-zero; its own one-line error is passed on."""


def _environment(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIRON_")}
    env["CHIRON_HOME"] = str(home)
    return env


def _show(args: list[str]) -> None:
    shown = " ".join(shlex.quote(a) for a in args)
    _console.print(f"\n[bold cyan]$ chiron {shown}[/]")


def _chiron_refused(args: list[str], env: dict[str, str]) -> str:
    """Run a step that must fail; its one-line error, or DemoStepFailed if it succeeded."""
    _show(args)
    completed = subprocess.run(
        [sys.executable, "-m", "chiron", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    lines = (completed.stderr or "").strip().splitlines()
    if completed.returncode == 0:
        raise DemoStepFailed(f"`chiron {args[0]}` succeeded where it must be refused")
    return lines[-1] if lines else "no output"


def _chiron(args: list[str], env: dict[str, str], *, capture: bool = False) -> str:
    """Run one step; show its command; pass its output through unless captured."""
    _show(args)
    completed = subprocess.run(
        [sys.executable, "-m", "chiron", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE,
        text=True,
    )
    if completed.returncode != 0:
        lines = (completed.stderr or "").strip().splitlines()
        raise DemoStepFailed(f"`chiron {args[0]}` failed: {lines[-1] if lines else 'no output'}")
    if completed.stderr and not capture:
        sys.stderr.write(completed.stderr)
    return completed.stdout or ""


@contextmanager
def _service(state: Path, env: dict[str, str]) -> Iterator[str]:
    """A `chiron serve` on a free loopback port; yields its URL, stops it afterwards."""
    args = ["serve", "--host", "127.0.0.1", "--port", "0", "--state", str(state)]
    _show(args)
    process = subprocess.Popen(
        [sys.executable, "-m", "chiron", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http"):
            raise DemoStepFailed("the service did not start")
        _console.print(f"service listening on {url}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def _key_release_agent(
    key: Path, policy: Path, state: Path, log: Path, env: dict[str, str]
) -> Iterator[str]:
    """The provider's `chiron keys serve` on a free loopback port; yields its URL."""
    args = ["keys", "serve", "--key", str(key), "--policy", str(policy), "--port", "0"]
    args += ["--state", str(state)]
    _show(args)
    with open(log, "ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "chiron", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        if not url.startswith("http"):
            raise DemoStepFailed(f"the key-release agent did not start (see {log})")
        _console.print(f"key-release agent listening on {url} (log: {log})")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# The provider's release policy in the demo. There is no TEE here, so it must accept
# simulated evidence, and says so; a real provider leaves allow_simulation out.
DEMO_RELEASE_POLICY = """\
# chiron keys serve --policy: when this provider releases its model shares.
# measurements: default, this installation's own runtime.
allow_simulation = true          # UNSAFE: no TEE on this machine; protects nothing
max_releases_per_owner = 100
"""


def _released_models(log: Path) -> list[str]:
    """Model ids the agent's log says it released (what the provider sees of its models)."""
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    return re.findall(r"^released model ([0-9a-f]{32}) ", text, flags=re.MULTILINE)


def run_demo(out: Path, *, epochs: int, queries: int) -> dict[str, object]:
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        raise InputError(
            f"Fashion-MNIST is not installed in {FASHION_MNIST}: "
            "install the Debian package dataset-fashion-mnist (make demo does)"
        )
    owner_dir, provider_dir = out / "owner", out / "provider"
    for folder in (owner_dir, provider_dir):
        folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chiron-demo-") as scratch:
        root = Path(scratch)
        # Each party has its own home: nothing one of them keeps is in another's folder.
        owner_base, provider_base = (
            _environment(root / "owner-home"),
            _environment(root / "provider-home"),
        )
        state = root / "service"
        with _service(state, _environment(root / "service-home")) as url:
            _console.rule("[bold]1. Identities: each party makes its own key, on its own machine")
            _chiron(
                ["keygen", "--out", str(provider_dir / "provider.key"), "--force"], provider_base
            )
            _chiron(["keygen", "--out", str(owner_dir / "owner.key"), "--force"], owner_base)
            # The provider hands the owner its PUBLIC key only.
            shutil.copyfile(provider_dir / "provider.key.pub", owner_dir / "provider.key.pub")
            _console.print(f"the provider gives the owner {owner_dir / 'provider.key.pub'}")
            operator = (state / "operator.token").read_text().strip()
            owner_token = _chiron(
                ["service", "account", "create", "alice", "--role", "owner", "--state", str(state)],
                _environment(root / "service-home"),
                capture=True,
            ).strip()
            provider_env = {**provider_base, "CHIRON_TOKEN": operator}
            owner_env = {**owner_base, "CHIRON_TOKEN": owner_token}

            _console.rule("[bold]2. The provider registers its secret recipe")
            _chiron(
                [
                    "service",
                    "recipes",
                    "register",
                    "fashion-cnn",
                    "--source",
                    str(EXAMPLES / "cnn.py"),
                    "--key",
                    str(provider_dir / "provider.key"),
                    "--description",
                    "small CNN for 28x28 grayscale images",
                    "--url",
                    url,
                ],
                provider_env,
            )

            _console.rule("[bold]3. The provider starts its key-release agent")
            policy = provider_dir / "release.toml"
            policy.write_text(DEMO_RELEASE_POLICY, encoding="utf-8")
            _console.print(f"{policy}:\n{DEMO_RELEASE_POLICY}")
            agent_state = provider_dir / "agent"
            # Simulation only: the agent trusts the service's simulation root, pinned
            # once, and no root a request brings along.
            _chiron(
                ["keys", "trust-sim-root", "--url", url, "--state", str(agent_state)],
                provider_env,
            )
            agent_log = provider_dir / "agent.log"
            with _key_release_agent(
                provider_dir / "provider.key", policy, agent_state, agent_log, provider_env
            ) as agent_url:
                summary, evaluation, model = _owner_story(
                    owner_dir, owner_env, url, agent_url, epochs=epochs, queries=queries
                )

                _console.rule("[bold]9. The provider revokes the model; it opens nowhere new")
                released = _released_models(agent_log)
                _console.print(
                    f"the agent's log names the models it released: {sorted(set(released))}"
                )
                if summary["model_id"] not in released:
                    raise DemoStepFailed("the agent's log does not name the model it released")
                _chiron(
                    ["keys", "revoke", summary["model_id"], "--state", str(agent_state)],
                    provider_env,
                )
                refusal = _chiron_refused(
                    ["query", *_use_model(owner_dir, url, agent_url, model),
                     "--inputs", str(owner_dir / "queries.npy"), "--allow-simulation"],
                    owner_env,
                )  # fmt: skip
                _console.print(f"refused, as it must be: [bold]{refusal}[/]")
    result = {
        "test_accuracy": evaluation["accuracy"],
        "holdout_accuracy": summary["holdout_accuracy"],
        "model": str(model),
        "model_id": summary["model_id"],
        "revoked_query": refusal,
        "plots": [
            summary["curve"],
            summary["confusion"],
            str(owner_dir / "model.test-confusion.png"),
        ],
    }
    _console.rule("[bold]Done")
    _console.print(
        f"test accuracy {evaluation['accuracy']:.4f}; the owner's files in {owner_dir}, "
        f"the provider's in {provider_dir}"
    )
    for plot in result["plots"]:
        _console.print(f"  plot: {plot}")
    return result


def _use_model(owner_dir: Path, url: str, agent_url: str, model: Path) -> list[str]:
    """What every use of the model names: the service, the model, the owner's key, the agent."""
    return [
        "--url", url, "--model", str(model),
        "--owner", str(owner_dir / "owner.key"), "--provider", agent_url,
    ]  # fmt: skip


def _owner_story(
    owner_dir: Path,
    owner_env: dict[str, str],
    url: str,
    agent_url: str,
    *,
    epochs: int,
    queries: int,
) -> tuple[dict[str, object], dict[str, object], Path]:
    """Steps 4-8, all the owner's, with only the owner's key and the provider's .pub."""
    _console.rule("[bold]4. The owner encrypts Fashion-MNIST on its own machine")
    for split in ("train", "test"):
        _chiron(
            [
                "dataset",
                "encrypt",
                str(FASHION_MNIST),
                "--split",
                split,
                "--out",
                str(owner_dir / f"fm-{split}.chd"),
                "--key",
                str(owner_dir / f"fm-{split}.key"),
                "--force",
            ],
            owner_env,
        )
    _chiron(["dataset", "inspect", str(owner_dir / "fm-train.chd")], owner_env)

    _console.rule("[bold]5. The owner attests the service's enclave")
    _chiron(["attest", "--url", url, "--allow-simulation"], owner_env)

    _console.rule("[bold]6. Training inside the enclave (the provider sees only steps)")
    model = owner_dir / "model.chm"
    summary = json.loads(
        _chiron(
            [
                "train",
                "--url",
                url,
                "--recipe",
                "fashion-cnn",
                "--dataset",
                str(owner_dir / "fm-train.chd"),
                "--data-key",
                str(owner_dir / "fm-train.key"),
                "--owner",
                str(owner_dir / "owner.key"),
                "--provider",
                str(owner_dir / "provider.key.pub"),
                "--out",
                str(model),
                "--epochs",
                str(epochs),
                "--seed",
                "1",
                "--allow-simulation",
                "--force",
                "--json",
            ],
            owner_env,
            capture=True,
        )
    )
    _console.print(f"held-out accuracy while training: {summary['epoch_accuracy']}")
    _chiron(["receipt", "verify", str(model), "--allow-simulation"], owner_env)

    # The owner holds one share; the provider's agent releases the other, sealed to the
    # query enclave the owner attested, after checking that enclave against its policy.
    use_model = _use_model(owner_dir, url, agent_url, model)
    _console.rule("[bold]7. Evaluation on the encrypted test set, inside a query enclave")
    evaluation = json.loads(
        _chiron(
            [
                "evaluate",
                *use_model,
                "--dataset",
                str(owner_dir / "fm-test.chd"),
                "--data-key",
                str(owner_dir / "fm-test.key"),
                "--plot",
                str(owner_dir / "model.test-confusion.png"),
                "--allow-simulation",
                "--json",
            ],
            owner_env,
            capture=True,
        )
    )
    _console.print(f"test accuracy: [bold]{evaluation['accuracy']:.4f}[/]")

    _console.rule("[bold]8. Black-box queries: answers, never weights")
    images = _first_test_images(queries)
    np.save(owner_dir / "queries.npy", images)
    _chiron(
        ["query", *use_model, "--inputs", str(owner_dir / "queries.npy"), "--allow-simulation"],
        owner_env,
    )
    return summary, evaluation, model


def _first_test_images(count: int) -> np.ndarray:
    import gzip

    with gzip.open(FASHION_MNIST / "t10k-images-idx3-ubyte.gz", "rb") as handle:
        handle.read(16)
        raw = handle.read(count * 28 * 28)
    return np.frombuffer(raw, dtype=np.uint8).reshape(count, 1, 28, 28)
