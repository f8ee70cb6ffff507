"""The example recipes, and what the sandbox needs of the runtime module."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch

from chiron.core.schema import DatasetSchema
from chiron.recipes.hooks import load_recipe
from chiron.recipes.loop import declare
from chiron.recipes.sdk import train_plain

from .conftest import make_data, make_plan

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "recipes"
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_SCHEMA = DatasetSchema((1, 28, 28), "uint8", 10)
CIFAR_SCHEMA = DatasetSchema((3, 32, 32), "uint8", 10)


@pytest.mark.parametrize(
    ("name", "schema"),
    [("mlp.py", FASHION_SCHEMA), ("cnn.py", FASHION_SCHEMA), ("resnet20.py", CIFAR_SCHEMA)],
)
def test_example_builds_declares_and_takes_a_step(name, schema):
    source = (EXAMPLES / name).read_text()
    recipe = load_recipe(source, filename=name)
    declaration, probe = declare(recipe, schema)
    assert declaration.num_outputs == 10
    assert declaration.checkpoint_nbytes > declaration.model_nbytes
    x, y = make_data(6, schema=schema)
    plan = make_plan(6, batch_size=3, epochs=1)
    weights = train_plain(source, schema, x, y, plan)
    assert len(weights) == declaration.model_nbytes
    assert set(safetensors.torch.load(weights)) == set(probe.model.state_dict())


def test_resnet20_is_the_standard_depth():
    recipe = load_recipe((EXAMPLES / "resnet20.py").read_text())
    model = recipe.build_model(CIFAR_SCHEMA)
    convolutions = [m for m in model.modules() if m.__class__.__name__ == "Conv2d"]
    linear = [m for m in model.modules() if m.__class__.__name__ == "Linear"]
    assert len(convolutions) + len(linear) == 20
    assert sum(p.numel() for p in model.parameters()) == 269_722


def test_the_runtime_imports_nothing_once_serving(tmp_path):
    """After import (which warms up), a whole session imports no further module: the
    confined child could not load them."""
    script = textwrap.dedent(
        """
        import os, sys, threading
        import chiron.recipes.runtime as runtime
        import numpy as np
        from chiron.core.framing import read_frame, write_frame
        from chiron.core.recipe_protocol import ToChild, TrainingPlan, encode_json

        def session(path, shape, dry_run, train):
            child_in, to_child = os.pipe()
            from_child, child_out = os.pipe()
            data = os.memfd_create("data")
            thread = threading.Thread(
                target=runtime.serve,
                args=(child_in, child_out),
                kwargs={"data_fd": data, "dry_run": dry_run},
            )
            thread.start()
            receive = lambda: read_frame(from_child, max_payload=2**30).kind
            schema = {"input_shape": shape, "dtype": "uint8", "num_classes": 10}
            setup = {"mode": "train", "schema": schema, "overrides": {"epochs": 1}}
            write_frame(to_child, ToChild.SETUP, encode_json(setup))
            write_frame(to_child, ToChild.SOURCE, open(path, "rb").read())
            kinds = [receive()]
            if train:
                plan = TrainingPlan.fixed(
                    num_train=4, batch_size=2, epochs=1, seed=1, checkpoint_every=1
                )
                write_frame(to_child, ToChild.PLAN, encode_json(plan.to_dict()))
                os.write(data, bytes(4 * 8 + 4 * int(np.prod(shape))))
                write_frame(to_child, ToChild.DATA, b"")
                kinds.append(receive())
                run = {"until_step": 2, "checkpoint": True}
                write_frame(to_child, ToChild.RUN, encode_json(run))
                kinds += [receive() for _ in range(3)]
                write_frame(to_child, ToChild.FINISH, b"")
                kinds.append(receive())
                write_frame(to_child, ToChild.SHUTDOWN, b"")
            thread.join()
            print(kinds)

        before = set(sys.modules)
        session(sys.argv[1], [3, 32, 32], dry_run=False, train=True)
        session(sys.argv[2], [1, 28, 28], dry_run=True, train=False)
        print(sorted(set(sys.modules) - before))
        """
    )
    broken = tmp_path / "broken.py"
    broken.write_text((EXAMPLES / "cnn.py").read_text() + "\ndef augment(x):\n    return x[None]\n")
    result = subprocess.run(
        [sys.executable, "-c", script, str(EXAMPLES / "resnet20.py"), str(broken)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = result.stdout.strip().splitlines()
    assert lines[0] == "[64, 65, 66, 66, 67, 69]"  # DECLARE READY TICK TICK CHECKPOINT MODEL
    assert lines[1] == "[70]"  # RECIPE_ERROR
    assert lines[2] == "[]", lines[2]
    assert "Traceback" in result.stderr  # the dry run showed it


def _fashion_mnist(split: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    from chiron.client.importers import open_source

    dataset = open_source(FASHION_MNIST, format="idx", split=split)
    xs, ys = [], []
    for x, y in dataset.batches:
        xs.append(x)
        ys.append(y)
        if sum(map(len, ys)) >= count:
            break
    return np.concatenate(xs)[:count], np.concatenate(ys)[:count].astype(np.int64)


@pytest.mark.slow
@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="Fashion-MNIST is not installed")
def test_cnn_learns_fashion_mnist_through_the_channel(enclave):
    x, y = _fashion_mnist("train", 12_000)
    x_test, y_test = _fashion_mnist("test", 2_000)
    child = enclave()
    declaration = child.declare((EXAMPLES / "cnn.py").read_text(), FASHION_SCHEMA)
    plan = make_plan(len(y), declaration["hyperparameters"]["batch_size"], epochs=2)
    child.start(plan, x, y)
    child.run(plan.total_steps, plan.total_steps)
    logits = child.predict(x_test, 10)
    assert np.mean(logits.argmax(1) == y_test) > 0.85
