"""A small world for distributed runs: identities, two data sets of one shape, recipes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from chiron.client.statements import statement_path_for

RECIPE = textwrap.dedent(
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

# Steps that take a while, so a test can act while training runs.
SLOW_RECIPE = RECIPE.replace('"epochs": 2, "batch_size": 16', '"epochs": 3, "batch_size": 4') + (
    textwrap.dedent(
        """
        import time
        _sleep = time.sleep

        def augment(x):
            _sleep(0.02)
            return x
        """
    )
)


def noisy_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes, each a faint band in its own place under heavy noise; 10% of the
    labels are random. Hard enough that a model trained on half of 3000 records is a few
    points worse than one trained on all of them: two workers match one only if their
    parameters really are combined."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=count)
    x = rng.integers(0, 120, size=(count, 1, 8, 8)).astype(np.uint8)
    for i, label in enumerate(y):
        x[i, 0, :, label * 2 : label * 2 + 3] += 40
    flipped = rng.random(count) < 0.1
    y[flipped] = rng.integers(0, 3, size=int(flipped.sum()))
    return x, y.astype(np.int64)


@dataclass
class World:
    root: Path
    home: Path
    owner: Path
    provider: Path
    recipe: Path
    slow_recipe: Path

    @classmethod
    def at(cls, root: Path) -> World:
        return cls(
            root,
            root / "home",
            root / "owner.key",
            root / "provider.key",
            root / "r.py",
            root / "slow.py",
        )

    def statement(self, recipe: Path) -> Path:
        """Where the provider's signed statement of `recipe` lies (`chiron recipe sign`)."""
        return statement_path_for(recipe)

    def dataset(self, name: str) -> tuple[Path, Path]:
        return self.root / f"{name}.chd", self.root / f"{name}.key"

    def chiron(self, *args: object, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHIRON_")}
        env["CHIRON_HOME"] = str(self.home)
        return subprocess.run(
            [sys.executable, "-m", "chiron", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    def train_args(
        self,
        dataset: str,
        out: Path,
        *,
        workers: int = 2,
        recipe: Path | None = None,
        pin_provider: bool = True,
        fixed_rate: bool = False,
    ) -> list[object]:
        """`chiron train` of the provider's signed recipe; `pin_provider`: with --provider.

        Without `fixed_rate` the job runs free (`--no-fixed-rate`): these tests are about
        exchanges, membership and failures, and a group's clock would make each run many
        times longer; `test_fixed_rate_group.py` runs the default.
        """
        chd, key = self.dataset(dataset)
        pinned = ["--provider", f"{self.provider}.pub"] if pin_provider else []
        if not fixed_rate:
            pinned.append("--no-fixed-rate")
        return [
            "train",
            "--allow-simulation",
            "--recipe",
            recipe or self.recipe,
            "--dataset",
            chd,
            "--data-key",
            key,
            "--owner",
            self.owner,
            *pinned,
            "--out",
            out,
            "--seed",
            "3",
            "--workers",
            workers,
        ]


def make_world(root: Path, datasets: dict[str, int]) -> World:
    """Keys, and one encrypted data set per name (`count` records, seeded by its order)."""
    world = World.at(root)
    world.home.mkdir(parents=True)
    world.recipe.write_text(RECIPE)
    world.slow_recipe.write_text(SLOW_RECIPE)
    for key in (world.owner, world.provider):
        assert world.chiron("keygen", "--out", key).returncode == 0
    # The provider signs its recipes: an enclave trains only a recipe with its statement.
    for recipe in (world.recipe, world.slow_recipe):
        signed = world.chiron("recipe", "sign", recipe, "--key", world.provider)
        assert signed.returncode == 0, signed.stderr
        assert world.statement(recipe).exists()
    for seed, (name, count) in enumerate(datasets.items()):
        x, y = noisy_images(count, seed)
        np.savez(root / f"{name}.npz", x=x, y=y)
        chd, key = world.dataset(name)
        encrypted = world.chiron(
            "dataset", "encrypt", root / f"{name}.npz", "--out", chd, "--key", key
        )
        assert encrypted.returncode == 0, encrypted.stderr
    return world


@contextlib.contextmanager
def once_per_session(
    tmp_path_factory: pytest.TempPathFactory, name: str
) -> Iterator[tuple[Path, bool]]:
    """A directory every xdist worker of this run shares, and whether the caller fills it.

    The first worker to get here fills it while the others wait; they then reuse it, so
    expensive trainings run once per test run however the tests are spread.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    directory = base / name
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = base / f"{name}.done"
        filled = done.exists()
        yield directory, not filled
        done.touch()
