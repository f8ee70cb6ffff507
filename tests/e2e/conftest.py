"""A small owner/provider world for end-to-end runs: identities, a dataset, recipes."""

from __future__ import annotations

import os
import subprocess
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

TINY_RECIPE = textwrap.dedent(
    """
    import torch.nn as nn

    HYPERPARAMETERS = {"epochs": 2, "batch_size": 16, "lr": 0.01}

    def build_model(schema):
        c, h, w = schema.input_shape
        return nn.Sequential(
            nn.Flatten(), nn.Linear(c * h * w, 32), nn.ReLU(), nn.Linear(32, schema.num_classes)
        )
    """
)


def make_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes, each a bright band in a different place: easy to learn."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=count)
    x = rng.integers(0, 60, size=(count, 1, 8, 8)).astype(np.uint8)
    for i, label in enumerate(y):
        x[i, 0, :, label * 2 : label * 2 + 3] += 180
    return x, y.astype(np.int64)


@dataclass
class World:
    root: Path
    owner: Path
    provider: Path
    dataset: Path
    data_key: Path
    test_dataset: Path
    test_key: Path
    recipe: Path

    def write_recipe(self, name: str, source: str) -> Path:
        path = self.root / name
        path.write_text(textwrap.dedent(source))
        return path


@pytest.fixture
def world(tmp_path: Path, run_chiron) -> World:
    run_chiron("keygen", "--out", tmp_path / "owner.key", check=True)
    run_chiron("keygen", "--out", tmp_path / "provider.key", check=True)
    for name, count, seed in (("train", 320, 1), ("test", 120, 2)):
        x, y = make_images(count, seed)
        np.savez(tmp_path / f"{name}.npz", x=x, y=y)
        run_chiron(
            "dataset",
            "encrypt",
            tmp_path / f"{name}.npz",
            "--out",
            tmp_path / f"{name}.chd",
            "--key",
            tmp_path / f"{name}.key",
            check=True,
        )
    recipe = tmp_path / "tiny.py"
    recipe.write_text(TINY_RECIPE)
    return World(
        root=tmp_path,
        owner=tmp_path / "owner.key",
        provider=tmp_path / "provider.key",
        dataset=tmp_path / "train.chd",
        data_key=tmp_path / "train.key",
        test_dataset=tmp_path / "test.chd",
        test_key=tmp_path / "test.key",
        recipe=recipe,
    )


@pytest.fixture
def provider_agent(tmp_path: Path, chiron_home: Path) -> Iterator[Callable[..., str]]:
    """Start the provider's `chiron keys serve` on a free loopback port; returns its URL.

    The agent has its own folder and home (the provider's machine); it trusts the
    simulation root of this machine's enclaves, which exists once one has run.
    """
    from tests.conftest import CHIRON

    from chiron.core.attestation.sim import SIM_PLATFORM_DIRECTORY, SIM_ROOT_PUBLIC_FILE

    processes: list[subprocess.Popen[str]] = []

    def start(provider_key: Path, *, policy: str = "allow_simulation = true\n") -> str:
        folder = tmp_path / f"provider-agent-{len(processes)}"
        folder.mkdir()
        (folder / "release.toml").write_text(policy)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHIRON_")}
        env["CHIRON_HOME"] = str(folder / "home")
        root = chiron_home / SIM_PLATFORM_DIRECTORY / SIM_ROOT_PUBLIC_FILE
        state = ["--state", str(folder / "state")]
        subprocess.run(
            [*CHIRON, "keys", "trust-sim-root", str(root), *state],
            env=env, check=True, capture_output=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        with open(folder / "agent.log", "wb") as log:
            process = subprocess.Popen(
                [*CHIRON, "keys", "serve", "--key", str(provider_key),
                 "--policy", str(folder / "release.toml"), "--port", "0", *state],
                env=env, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True,
            )  # fmt: skip
        processes.append(process)
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), (folder / "agent.log").read_text()
        return url

    yield start
    for process in processes:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def sign_recipe(recipe: Path, provider_key: Path) -> Path:
    """The provider's signed statement beside `recipe` (what `chiron recipe sign` writes)."""
    from chiron.client.statements import statement_path_for
    from chiron.core.keys import load_identity
    from chiron.core.recipe_statement import make_statement, recipe_name_for_file

    statement = make_statement(
        recipe.read_bytes(),
        name=recipe_name_for_file(recipe.name),
        version="1",
        provider=load_identity(provider_key),
    )
    path = statement_path_for(recipe)
    path.write_bytes(statement.to_bytes())
    return path


def train_args(
    world: World,
    *,
    recipe: Path | None = None,
    out: Path | None = None,
    dataset: Path | None = None,
    data_key: Path | None = None,
) -> list:
    if (recipe or world.recipe).exists():
        sign_recipe(recipe or world.recipe, world.provider)
    return [
        "train",
        "--local",
        "--allow-simulation",
        "--recipe",
        recipe or world.recipe,
        "--dataset",
        dataset or world.dataset,
        "--data-key",
        data_key or world.data_key,
        "--owner",
        world.owner,
        "--provider",
        f"{world.provider}.pub",
        "--out",
        out or world.root / "model.chm",
        "--seed",
        "7",
    ]
