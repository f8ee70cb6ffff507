"""`chiron train --local --workers 2` end to end: one escrowed model, data-independent traffic.

One world, three trainings: two workers on data set A and on data set B (same shape,
other records), and one worker on A to compare with.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.numpy

from e2e.model_access import open_model

from .conftest import World, make_world, once_per_session

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> tuple[World, dict[str, Path]]:
    runs = {"a2": ("a", 2), "b2": ("b", 2), "a1": ("a", 1)}
    with once_per_session(tmp_path_factory, "distributed-cli") as (root, fill):
        world = make_world(root, {"a": 3000, "b": 3000}) if fill else World.at(root)
        for name, (dataset, workers) in runs.items():
            if not fill:
                break
            # The recipe's statement names its provider; the owner may pin it (--provider).
            args = world.train_args(
                dataset, root / f"{name}.chm", workers=workers, pin_provider=name != "b2"
            )
            if workers > 1:
                args += ["--wire-trace", root / f"{name}.trace.json"]
            result = world.chiron(*args, "--local", "--json")
            assert result.returncode == 0, result.stderr
    return world, {name: root / f"{name}.chm" for name in runs}


def report(model: Path) -> dict:
    return json.loads(model.with_suffix(".report.json").read_text())


def test_two_workers_give_one_escrowed_model_like_one_worker(trained):
    world, models = trained
    for suffix in ("receipt.json", "report.json", "curve.png", "confusion.png"):
        assert models["a2"].with_suffix(f".{suffix}").exists()
    two, one = report(models["a2"]), report(models["a1"])
    assert two["distributed"]["workers"] == 2
    assert two["distributed"]["mode"] == "sync"
    assert len(two["distributed"]["members"]) == 3
    assert two["holdout_records"] == one["holdout_records"] == 300
    assert two["steps"] == 2 * 85 and one["steps"] == 2 * 169
    assert "distributed" not in one
    verified = world.chiron("receipt", "verify", models["a2"], "--allow-simulation", "--json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["distributed"]["workers"] == 2
    weights = open_model(models["a2"], world.owner, world.provider).weights
    reference = open_model(models["a1"], world.owner, world.provider).weights
    assert safetensors.numpy.load(weights).keys() == safetensors.numpy.load(reference).keys()
    assert len(weights) == len(reference)


def test_two_workers_are_as_accurate_as_one(trained):
    _, models = trained
    two, one = report(models["a2"]), report(models["a1"])
    assert one["final_holdout_accuracy"] > 0.75
    assert abs(two["final_holdout_accuracy"] - one["final_holdout_accuracy"]) <= 0.015


def test_the_wire_carries_the_same_sizes_and_types_whatever_the_data(trained):
    world, _ = trained
    traces = [json.loads((world.root / f"{n}.trace.json").read_text()) for n in ("a2", "b2")]
    assert traces[0].keys() == traces[1].keys() == {"parameter server", "worker 1", "worker 2"}
    for member in traces[0]:
        shapes = [
            [(e["direction"], e["peer"], e["kind"], e["size"]) for e in trace[member]]
            for trace in traces
        ]
        assert shapes[0] == shapes[1]
        # Every parameter message of the job has one size.
        sizes = {size for _, _, kind, size in shapes[0] if kind in ("PARAMS", "AVERAGE")}
        assert len(sizes) == 1
    worker = [e["kind"] for e in traces[0]["worker 1"] if e["kind"] in ("PARAMS", "AVERAGE")]
    # Rounds at steps 0, 10, ..., 170: 18 exchanges, then the last at step 170 itself.
    assert worker == ["PARAMS", "AVERAGE"] * 18
