"""`chiron demo`: the whole story on this machine, each step the command a person would type.

It starts a service on a free loopback port with a temporary state directory, makes a
provider and an owner, encrypts Fashion-MNIST, attests, trains the CNN recipe through
the service, evaluates and queries the model, prints where everything is, and stops
the service. Every step runs the real `chiron` command line in a subprocess, so the
demo exercises exactly what a user would.
"""

from __future__ import annotations

import json
import os
import shlex
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


def run_demo(out: Path, *, epochs: int, queries: int) -> dict[str, object]:
    if not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        raise InputError(
            f"Fashion-MNIST is not installed in {FASHION_MNIST}: "
            "install the Debian package dataset-fashion-mnist (make demo does)"
        )
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chiron-demo-") as scratch:
        root = Path(scratch)
        env = _environment(root / "client-home")
        state = root / "service"
        with _service(state, env) as url:
            _console.rule("[bold]1. Identities")
            _chiron(["keygen", "--out", str(out / "provider.key"), "--force"], env)
            _chiron(["keygen", "--out", str(out / "owner.key"), "--force"], env)
            operator = (state / "operator.token").read_text().strip()
            owner_token = _chiron(
                ["service", "account", "create", "alice", "--role", "owner", "--state", str(state)],
                env,
                capture=True,
            ).strip()
            provider_env = {**env, "CHIRON_TOKEN": operator}
            owner_env = {**env, "CHIRON_TOKEN": owner_token}

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
                    str(out / "provider.key"),
                    "--description",
                    "small CNN for 28x28 grayscale images",
                    "--url",
                    url,
                ],
                provider_env,
            )

            _console.rule("[bold]3. The owner encrypts Fashion-MNIST on its own machine")
            for split in ("train", "test"):
                _chiron(
                    [
                        "dataset",
                        "encrypt",
                        str(FASHION_MNIST),
                        "--split",
                        split,
                        "--out",
                        str(out / f"fm-{split}.chd"),
                        "--key",
                        str(out / f"fm-{split}.key"),
                        "--force",
                    ],
                    env,
                )
            _chiron(["dataset", "inspect", str(out / "fm-train.chd")], env)

            _console.rule("[bold]4. The owner attests the service's enclave")
            _chiron(["attest", "--url", url, "--allow-simulation"], owner_env)

            _console.rule("[bold]5. Training inside the enclave (the provider sees only steps)")
            model = out / "model.chm"
            summary = json.loads(
                _chiron(
                    [
                        "train",
                        "--url",
                        url,
                        "--recipe",
                        "fashion-cnn",
                        "--dataset",
                        str(out / "fm-train.chd"),
                        "--data-key",
                        str(out / "fm-train.key"),
                        "--owner",
                        str(out / "owner.key"),
                        "--provider",
                        str(out / "provider.key.pub"),
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
            _chiron(["receipt", "verify", str(model), "--allow-simulation"], env)

            # Both parties' keys are here, so the demo releases both shares of the model key.
            use_model = [
                "--url", url, "--model", str(model),
                "--owner", str(out / "owner.key"), "--provider", str(out / "provider.key"),
            ]  # fmt: skip
            _console.rule("[bold]6. Evaluation on the encrypted test set, inside a query enclave")
            evaluation = json.loads(
                _chiron(
                    [
                        "evaluate",
                        *use_model,
                        "--dataset",
                        str(out / "fm-test.chd"),
                        "--data-key",
                        str(out / "fm-test.key"),
                        "--plot",
                        str(out / "model.test-confusion.png"),
                        "--allow-simulation",
                        "--json",
                    ],
                    owner_env,
                    capture=True,
                )
            )
            _console.print(f"test accuracy: [bold]{evaluation['accuracy']:.4f}[/]")

            _console.rule("[bold]7. Black-box queries: answers, never weights")
            images = _first_test_images(queries)
            np.save(out / "queries.npy", images)
            _chiron(
                [
                    "query",
                    *use_model,
                    "--inputs",
                    str(out / "queries.npy"),
                    "--allow-simulation",
                ],
                owner_env,
            )
    result = {
        "test_accuracy": evaluation["accuracy"],
        "holdout_accuracy": summary["holdout_accuracy"],
        "model": str(model),
        "plots": [summary["curve"], summary["confusion"], str(out / "model.test-confusion.png")],
    }
    _console.rule("[bold]Done")
    _console.print(f"test accuracy {evaluation['accuracy']:.4f}; files in {out}")
    for plot in result["plots"]:
        _console.print(f"  plot: {plot}")
    return result


def _first_test_images(count: int) -> np.ndarray:
    import gzip

    with gzip.open(FASHION_MNIST / "t10k-images-idx3-ubyte.gz", "rb") as handle:
        handle.read(16)
        raw = handle.read(count * 28 * 28)
    return np.frombuffer(raw, dtype=np.uint8).reshape(count, 1, 28, 28)
