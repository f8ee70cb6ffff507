"""Query latency and throughput: through the query enclave vs the same model in-process.

One run: trains a small model of the CNN recipe (a short run on part of Fashion-MNIST;
the weights do not matter for timing), unlocks it in a query enclave the way
`chiron query --local` does, then measures

- single-input latency p50/p99 through the enclave (seal on the query channel, relay,
  check, sandbox, seal back, open) against calling the same recipe's `predict` in this
  process, and prints the added milliseconds (goals once warm: p50 added <= 0.5 ms,
  p99 added <= 2 ms);
- batch-of-256 throughput as a ratio to in-process inference (goal >= 0.97).

The two paths take turns round by round, the first of a round alternating; each round is
printed with the load average, then the median of the rounds (`--rounds`). `--budget N` gives the recipe a query budget,
so every query is also charged to the model's sealed ledger. The in-process side runs
with the sandbox's allocator settings (`MALLOC_TUNABLES`; `--plain-default-malloc`: glibc's
defaults).

    .venv/bin/python benchmarks/query_latency.py [--singles 300] [--batches 30] \
        [--rounds 3] [--budget N]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from provider_agent import provider_agent  # beside this script

from chiron.client.attestation import load_policy
from chiron.client.key_release import AgentShareSource
from chiron.client.querying import query, unlock_model
from chiron.client.sessions import LocalEnclaveSession
from chiron.core.keys import load_identity
from chiron.enclave.sandbox.startup import MALLOC_TUNABLES

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
RECIPE = REPO / "examples" / "recipes" / "cnn.py"


def _images(count: int) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(FASHION / "t10k-images-idx3-ubyte.gz", "rb") as handle:
        handle.read(16)
        x = np.frombuffer(handle.read(count * 784), dtype=np.uint8).reshape(count, 1, 28, 28)
    with gzip.open(FASHION / "t10k-labels-idx1-ubyte.gz", "rb") as handle:
        handle.read(8)
        y = np.frombuffer(handle.read(count), dtype=np.uint8).astype(np.int64)
    return x, y


def _train_model(root: Path, recipe: Path) -> Path:
    x, y = _images(3000)
    np.savez(root / "small.npz", x=x, y=y)

    def chiron(*args: str) -> None:
        subprocess.run(
            [sys.executable, "-m", "chiron", *args],
            check=True,
            stdout=subprocess.DEVNULL,
            env={"CHIRON_HOME": str(root / "home"), "PATH": "/usr/bin:/bin"},
        )

    chiron("keygen", "--out", str(root / "owner.key"))
    chiron("keygen", "--out", str(root / "provider.key"))
    chiron(
        "dataset",
        "encrypt",
        str(root / "small.npz"),
        "--out",
        str(root / "small.chd"),
        "--key",
        str(root / "small.key"),
    )
    statement = root / "recipe.statement.json"
    chiron(
        "recipe", "sign", str(recipe), "--key", str(root / "provider.key"), "--out", str(statement)
    )
    chiron(
        "train",
        "--local",
        "--allow-simulation",
        "--recipe",
        str(recipe),
        "--statement",
        str(statement),
        "--dataset",
        str(root / "small.chd"),
        "--data-key",
        str(root / "small.key"),
        "--owner",
        str(root / "owner.key"),
        "--provider",
        str(root / "provider.key.pub"),
        "--out",
        str(root / "model.chm"),
        "--epochs",
        "1",
    )
    return root / "model.chm"


def _in_process_predictor(model: Path, owner: Path, provider: Path):
    """The same recipe and weights, loaded in this process (what the enclave protects)."""
    sys.path.insert(0, str(REPO / "tests"))
    from chiron.core import modelfile
    from chiron.recipes.hooks import load_recipe
    from chiron.recipes.loop import declare
    from e2e.model_access import open_model

    payload = open_model(model, owner, provider)
    schema = modelfile.read_model_header(model.read_bytes()).schema
    _, run = declare(load_recipe(payload.recipe_source), schema)
    run.load_weights(payload.weights)
    return run.predict


def _percentile(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1000, q))


def _recipe(root: Path, budget: int | None) -> Path:
    """The CNN recipe, with a query budget if one is asked for."""
    if budget is None:
        return RECIPE
    source = RECIPE.read_text().replace(
        'QUERY_POLICY = {"output": "probabilities", "rounding": 4}',
        f'QUERY_POLICY = {{"output": "probabilities", "rounding": 4, "budget": {budget}}}',
    )
    assert "budget" in source
    (root / "cnn.py").write_text(source)
    return root / "cnn.py"


def _round(
    call: Callable[[np.ndarray], object], x: np.ndarray, singles: int, batches: int
) -> dict[str, float]:
    """One path's singles, then its batches.

    The paths take turns by round, not call by call: the recipe's torch threads spin for
    a while after each call, and would steal the other path's cores if it ran then.
    """
    samples = []
    for i in range(singles):
        batch = x[i % 1024 : i % 1024 + 1]
        start = time.perf_counter()
        call(batch)
        samples.append(time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(batches):
        offset = (i * 256) % (1024 - 256)
        call(x[offset : offset + 256])
    elapsed = time.perf_counter() - start
    return {
        "p50_ms": _percentile(samples, 50),
        "p99_ms": _percentile(samples, 99),
        "batch256_per_s": batches * 256 / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--singles", type=int, default=300)
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=int, default=None)
    parser.add_argument("--plain-default-malloc", action="store_true",
                        help="the in-process side with glibc's allocator defaults")  # fmt: skip
    args = parser.parse_args()
    if not args.plain_default_malloc and os.environ.get("GLIBC_TUNABLES") != MALLOC_TUNABLES:
        # Like with like: the sandbox's allocator settings for the in-process side too.
        # glibc reads them only as a process starts, so this process starts again.
        os.execve(sys.executable, [sys.executable, *sys.argv],
                  {**os.environ, "GLIBC_TUNABLES": MALLOC_TUNABLES})  # fmt: skip
    print(
        f"in-process allocator: {'glibc defaults' if args.plain_default_malloc else 'as the sandbox'}"
    )
    x, _ = _images(1024)
    rounds: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        model = _train_model(root, _recipe(root, args.budget))
        predict = _in_process_predictor(model, root / "owner.key", root / "provider.key")
        owner = load_identity(root / "owner.key")
        with (
            LocalEnclaveSession("query", root / "home") as session,
            provider_agent(root / "provider.key", root / "home", root / "agent") as agent_url,
        ):
            # The provider's share comes from its agent, as with `chiron query --provider URL`.
            unlocked = unlock_model(
                session,
                model=model.read_bytes(),
                owner=owner,
                provider=AgentShareSource(agent_url),
                policy=load_policy(None, allow_simulation=True),
                state_dir=root / "home",
            )
            paths = {"enclave": lambda batch: query(unlocked, batch), "in-process": predict}
            for call in paths.values():
                for i in range(20):  # warm up both paths
                    call(x[i : i + 1])
            for number in range(args.rounds):
                # The first path of a round alternates, so neither always runs first.
                order = list(paths) if number % 2 == 0 else list(reversed(paths))
                results = {
                    name: _round(paths[name], x, args.singles, args.batches) for name in order
                }
                rounds.append(results)
                load = " ".join(f"{value:.2f}" for value in os.getloadavg())
                print(f"round {number + 1} (load average {load}): {json.dumps(results)}")
    _report(rounds)


def _report(rounds: list[dict[str, dict[str, float]]]) -> None:
    def median(path: str, key: str) -> float:
        return float(np.median([r[path][key] for r in rounds]))

    def added(key: str) -> float:
        return float(np.median([r["enclave"][key] - r["in-process"][key] for r in rounds]))

    ratio = float(
        np.median(
            [r["enclave"]["batch256_per_s"] / r["in-process"]["batch256_per_s"] for r in rounds]
        )
    )
    print(f"median of {len(rounds)} rounds:")
    print(
        f"single input p50: enclave {median('enclave', 'p50_ms'):.2f} ms, in-process "
        f"{median('in-process', 'p50_ms'):.2f} ms -> added {added('p50_ms'):.2f} ms (goal <= 0.5 ms)"
    )
    print(
        f"single input p99: enclave {median('enclave', 'p99_ms'):.2f} ms, in-process "
        f"{median('in-process', 'p99_ms'):.2f} ms -> added {added('p99_ms'):.2f} ms (goal <= 2 ms)"
    )
    print(
        f"batch of 256: {median('enclave', 'batch256_per_s'):.0f} vs "
        f"{median('in-process', 'batch256_per_s'):.0f} inputs/s -> ratio {ratio:.3f} (goal >= 0.97)"
    )


if __name__ == "__main__":
    main()
