"""Loading recipes, the default hooks and the loop's schedule, outside any sandbox."""

from __future__ import annotations

import math
import random
import textwrap

import numpy as np
import pytest
import torch

from chiron.core.errors import RecipeError
from chiron.core.schema import DatasetSchema
from chiron.recipes.hooks import lr_factor, records_to_tensor
from chiron.recipes.loop import RecordsInMemory, TrainingRun, declare, epoch_order
from chiron.recipes.sdk import DEFAULT_HYPERPARAMETERS, load_recipe, train_plain

from .conftest import RANDOM_RECIPE, SCHEMA, TINY_RECIPE, make_data, make_plan

BUILD_ONLY = textwrap.dedent(
    """
    from torch import nn

    def build_model(schema):
        return nn.Sequential(nn.Flatten(), nn.Linear(64, schema.num_classes))
    """
)


def test_same_seed_same_bytes_other_seed_other_bytes():
    x, y = make_data(40)
    first = train_plain(RANDOM_RECIPE, SCHEMA, x, y, make_plan(40, 8, 2, seed=4))
    assert first == train_plain(RANDOM_RECIPE, SCHEMA, x, y, make_plan(40, 8, 2, seed=4))
    assert first != train_plain(RANDOM_RECIPE, SCHEMA, x, y, make_plan(40, 8, 2, seed=5))


def test_defaults_fill_in_what_the_recipe_leaves_out():
    recipe = load_recipe(BUILD_ONLY)
    assert recipe.hyperparameters == dict(DEFAULT_HYPERPARAMETERS)
    assert recipe.query_policy == {}
    run = TrainingRun(recipe, SCHEMA, make_plan(40, 64, 1), RecordsInMemory(*make_data(40)))
    assert type(run.optimizer) is torch.optim.Adam
    assert run.optimizer.param_groups[0]["lr"] == 1e-3
    x = torch.rand(3, 1, 8, 8)
    assert recipe.augment(x) is x
    assert recipe.predict(run.model, x).shape == (3, 3)
    before = [p.clone() for p in run.model.parameters()]
    run.run_until(1)
    assert all(not torch.equal(a, b) for a, b in zip(before, run.model.parameters()))


def test_overrides_replace_hyperparameters_and_none_is_ignored():
    recipe = load_recipe(TINY_RECIPE, overrides={"epochs": 5, "batch_size": None})
    assert recipe.hyperparameters["epochs"] == 5
    assert recipe.hyperparameters["batch_size"] == 16


@pytest.mark.parametrize(
    ("name", "kind", "extra"),
    [
        ("adam", torch.optim.Adam, {}),
        ("adamw", torch.optim.AdamW, {"weight_decay": 0.05}),
        ("sgd", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    ],
)
def test_the_default_optimizer_follows_the_hyperparameters(name, kind, extra):
    recipe = load_recipe(BUILD_ONLY, overrides={"optimizer": name, "lr": 0.5, **extra})
    optimizer = recipe.configure_optimizer(recipe.build_model(SCHEMA), recipe.hyperparameters)
    assert type(optimizer) is kind
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.5
    for key, value in extra.items():
        assert group[key] == value


def test_custom_hooks_replace_the_defaults():
    source = BUILD_ONLY + textwrap.dedent(
        """
        import torch
        import torch.nn.functional as F

        HYPERPARAMETERS = {"batch_size": 4, "epochs": 2, "lr": 0.1, "scale": 2.0}
        calls = []

        def configure_optimizer(model, hp):
            calls.append(("configure_optimizer", hp["scale"]))
            return torch.optim.SGD(model.parameters(), lr=hp["lr"])

        def augment(x):
            calls.append(("augment", tuple(x.shape)))
            return x * 2

        def train_step(model, optimizer, x, y, hp):
            calls.append(("train_step", float(x.max()), tuple(y.shape), hp["epochs"]))
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()

        def predict(model, x):
            return torch.full((x.shape[0], 3), 7.0)
        """
    )
    recipe = load_recipe(source)
    x, y = make_data(10)
    x[:] = 255
    run = TrainingRun(recipe, SCHEMA, make_plan(10, 4, 2), RecordsInMemory(x, y))
    calls = recipe.module.calls
    calls.clear()  # those of the probe
    assert type(run.optimizer) is not torch.optim.Adam
    run.run_until(6)
    # Three batches per epoch, the last one partial; augment sees [0, 1] inputs, train_step
    # what augment returned, and the plan's number of epochs.
    assert [c[0] for c in calls] == ["augment", "train_step"] * 6
    assert [c[1] for c in calls if c[0] == "augment"] == [
        (4, 1, 8, 8),
        (4, 1, 8, 8),
        (2, 1, 8, 8),
    ] * 2
    assert {c[1:] for c in calls if c[0] == "train_step"} == {(2.0, (4,), 2), (2.0, (2,), 2)}
    assert (run.predict(x) == 7.0).all()
    declaration, _ = declare(recipe, SCHEMA)
    assert declaration.hyperparameters["scale"] == 2.0


def test_every_epoch_visits_every_record_once_in_a_seeded_order():
    source = BUILD_ONLY + textwrap.dedent(
        """
        HYPERPARAMETERS = {"batch_size": 4}
        seen = []

        def augment(x):
            seen.extend(x[:, 0, 0, 0].mul(255).round().long().tolist())
            return x
        """
    )
    recipe = load_recipe(source)
    x = np.zeros((10, 1, 8, 8), dtype=np.uint8)
    x[:, 0, 0, 0] = np.arange(10)
    run = TrainingRun(
        recipe, SCHEMA, make_plan(10, 4, 3, seed=8), RecordsInMemory(x, np.zeros(10, np.int64))
    )
    recipe.module.seen.clear()
    run.run_until(run.plan.total_steps)
    seen = recipe.module.seen
    assert run.plan.total_steps == 9
    for epoch in range(3):
        assert seen[epoch * 10 : (epoch + 1) * 10] == epoch_order(8, epoch, 10).tolist()
    assert seen[:10] != seen[10:20]


def test_a_cosine_schedule_sets_the_learning_rate_of_every_step():
    recipe = load_recipe(BUILD_ONLY, overrides={"lr_schedule": "cosine", "lr": 0.2})
    run = TrainingRun(recipe, SCHEMA, make_plan(40, 8, 2), RecordsInMemory(*make_data(40)))
    run.run_until(7)
    assert run.optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * lr_factor("cosine", 6, 10))
    assert lr_factor("cosine", 0, 10) == 1.0
    assert lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert lr_factor("constant", 9, 10) == 1.0
    assert math.isclose(lr_factor("cosine", 10, 10), 0.0, abs_tol=1e-12)


def test_records_become_float32_batches():
    schema_u8 = DatasetSchema((2,), "uint8", 2)
    batch = records_to_tensor(np.array([[0, 255], [51, 102]], dtype=np.uint8), schema_u8)
    assert batch.dtype == torch.float32
    assert torch.equal(batch, torch.tensor([[0.0, 1.0], [0.2, 0.4]]))
    schema_f32 = DatasetSchema((2,), "float32", 2)
    values = np.array([[-3.5, 7.25]], dtype=np.float32)
    assert records_to_tensor(values, schema_f32).tolist() == [[-3.5, 7.25]]


BAD_RECIPES = {
    "no build_model": ("HYPERPARAMETERS = {}\n", "does not define build_model"),
    "build_model not callable": ("build_model = 3\n", "does not define build_model"),
    "hook not callable": (BUILD_ONLY + "augment = 3\n", "augment is not a function"),
    "hyperparameters not a dict": (BUILD_ONLY + "HYPERPARAMETERS = [1]\n", "must be a dict"),
    "zero epochs": (BUILD_ONLY + "HYPERPARAMETERS = {'epochs': 0}\n", "'epochs'"),
    "boolean batch size": (BUILD_ONLY + "HYPERPARAMETERS = {'batch_size': True}\n", "'batch_size'"),
    "negative lr": (BUILD_ONLY + "HYPERPARAMETERS = {'lr': -1}\n", "'lr'"),
    "unknown schedule": (BUILD_ONLY + "HYPERPARAMETERS = {'lr_schedule': 'x'}\n", "lr_schedule"),
    "not JSON": (BUILD_ONLY + "HYPERPARAMETERS = {'f': print}\n", "JSON"),
    "query policy not a dict": (BUILD_ONLY + "QUERY_POLICY = 'label'\n", "QUERY_POLICY"),
}


@pytest.mark.parametrize(("source", "words"), BAD_RECIPES.values(), ids=BAD_RECIPES.keys())
def test_a_recipe_that_breaks_the_contract_is_named_a_recipe_error(source, words):
    with pytest.raises(RecipeError, match=words):
        load_recipe(source)


@pytest.mark.parametrize(
    ("hook", "source", "words"),
    [
        ("build_model", "def build_model(schema):\n    return 42\n", "torch.nn.Module, not int"),
        (
            "configure_optimizer",
            BUILD_ONLY + "def configure_optimizer(model, hp):\n    return None\n",
            "torch.optim.Optimizer",
        ),
        ("augment", BUILD_ONLY + "def augment(x):\n    return x.numpy()\n", "torch.Tensor"),
        ("predict", BUILD_ONLY + "def predict(model, x):\n    return model(x)[0]\n", "shape"),
        ("optimizer", BUILD_ONLY + "HYPERPARAMETERS = {'optimizer': 'lion'}\n", "lion"),
    ],
)
def test_a_hook_returning_the_wrong_thing_is_named(hook, source, words):
    with pytest.raises(RecipeError, match=words):
        declare(load_recipe(source), SCHEMA)


def test_top_level_code_draws_the_same_random_numbers_every_time():
    source = (
        BUILD_ONLY + "import random, torch\nDRAWN = (torch.rand(2).tolist(), random.random())\n"
    )
    first = load_recipe(source).module.DRAWN
    torch.rand(5)
    random.random()
    assert load_recipe(source).module.DRAWN == first
