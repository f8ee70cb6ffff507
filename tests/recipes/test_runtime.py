"""The child's side of the recipe channel, driven in-process through pipes."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import safetensors.torch
import torch

from chiron.core.data_windows import StreamLayout
from chiron.core.recipe_protocol import FromChild, ToChild, TrainingPlan, encode_json
from chiron.recipes.runtime import ProtocolError
from chiron.recipes.sdk import train_plain

from .conftest import RANDOM_RECIPE, SCHEMA, TINY_RECIPE, make_data, make_plan


def test_training_conversation_gives_the_plain_run_weights(enclave):
    x, y = make_data(40)
    plan = make_plan(40, batch_size=16, epochs=2)  # 3 steps per epoch, the last one partial
    child = enclave()
    declaration = child.declare(TINY_RECIPE, overrides={"epochs": 2})
    assert declaration["num_outputs"] == 3
    assert declaration["hyperparameters"] == {
        "epochs": 2,
        "batch_size": 16,
        "lr": 0.01,
        "optimizer": "adam",
        "lr_schedule": "constant",
    }
    assert declaration["query_policy"] == {"output": "label", "budget": 10}

    child.start(plan, x, y)
    first = child.run(3, ticks=3, checkpoint_nbytes=declaration["checkpoint_nbytes"])
    held_out = make_data(5, seed=9)[0]
    logits = child.predict(held_out, 3)
    assert np.isfinite(logits).all()
    second = child.run(6, ticks=3, checkpoint_nbytes=declaration["checkpoint_nbytes"])
    assert first != second
    weights = child.finish(declaration["model_nbytes"])
    # The enclave asks for predictions after the model, too.
    assert child.predict(held_out, 3).shape == (5, 3)
    assert child.close() is None

    assert weights == train_plain(TINY_RECIPE, SCHEMA, x, y, plan)
    tensors = safetensors.torch.load(weights)
    assert tensors["3.weight"].shape == (3, 32)


@pytest.mark.parametrize("interrupt_at", [3, 7])  # an epoch's end; mid-epoch
def test_resuming_from_a_checkpoint_gives_bit_identical_weights(enclave, interrupt_at):
    x, y = make_data(30)
    plan = make_plan(30, batch_size=8, epochs=3)  # 4 steps per epoch
    held_out = make_data(6, seed=5)[0]

    reference = enclave()
    declaration = reference.declare(RANDOM_RECIPE)
    size = declaration["checkpoint_nbytes"]
    reference.start(plan, x, y)
    checkpoints = {}
    for until in (3, 4, 7, 8, 12):
        checkpoints[until] = reference.run(
            until, ticks=until - (max(checkpoints) if checkpoints else 0), checkpoint_nbytes=size
        )
        reference.predict(held_out, 3)  # evaluation between runs draws random numbers
    expected = reference.finish(declaration["model_nbytes"])

    resumed = enclave()
    assert resumed.declare(RANDOM_RECIPE) == declaration
    resumed.start(plan, x, y, state=checkpoints[interrupt_at])
    resumed.run(plan.total_steps, ticks=plan.total_steps - interrupt_at)
    assert resumed.finish(declaration["model_nbytes"]) == expected
    assert expected == train_plain(RANDOM_RECIPE, SCHEMA, x, y, plan)


def test_query_conversation_answers_with_the_trained_model(enclave):
    x, y = make_data(40)
    plan = make_plan(40, batch_size=16, epochs=2)
    weights = train_plain(TINY_RECIPE, SCHEMA, x, y, plan)
    child = enclave()
    declaration = child.declare(TINY_RECIPE, mode="query")
    assert declaration["model_nbytes"] == len(weights)
    child.send(ToChild.WEIGHTS, weights)
    child.expect(FromChild.READY, size=0)

    queries = make_data(300, seed=3)[0]  # more than one internal batch
    logits = child.predict(queries, 3)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3)
    )
    model.load_state_dict(safetensors.torch.load(weights))
    with torch.no_grad():
        expected = model(torch.from_numpy(queries.astype(np.float32) / 255.0)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    assert child.predict(queries[:1], 3).shape == (1, 3)
    assert child.predict(queries[:0], 3).shape == (0, 3)
    assert child.close() is None


BROKEN_RECIPES = {
    "raises-at-top-level": "raise ValueError('no')\n",
    "no-build-model": "HYPERPARAMETERS = {'epochs': 1}\n",
    "not-a-module": "def build_model(schema):\n    return 42\n",
    "wrong-input-size": (
        "from torch import nn\n"
        "def build_model(schema):\n"
        "    return nn.Sequential(nn.Flatten(), nn.Linear(999, 3))\n"
    ),
    "bad-hyperparameters": TINY_RECIPE.replace('"batch_size": 16', '"batch_size": 0'),
    "predict-not-logits": TINY_RECIPE + "def predict(model, x):\n    return model(x).sum()\n",
    "not-utf8": b"\xff\xfe def build_model(schema): pass\n",
}


@pytest.mark.parametrize("source", BROKEN_RECIPES.values(), ids=BROKEN_RECIPES.keys())
def test_a_broken_recipe_is_one_empty_recipe_error_before_any_data(enclave, capfd, source):
    child = enclave()
    child.send_setup(source)
    assert child.expect(FromChild.RECIPE_ERROR) == b""
    assert child.receive() is None  # and nothing after it
    assert child.close() is None
    assert capfd.readouterr().err == ""  # not a dry run: no text anywhere


def test_an_error_during_training_carries_no_text(enclave, capfd):
    source = TINY_RECIPE + textwrap.dedent(
        """
        import torch.nn.functional as F

        def train_step(model, optimizer, x, y, hp):
            if x.sum() > 1:  # not the all-zero batch that sizes the checkpoint
                raise RuntimeError("secret record: " + str(x[0].tolist()))
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            return loss
        """
    )
    x, y = make_data(40)
    child = enclave()
    declaration = child.declare(source)
    child.start(make_plan(40, 16, 2), x, y)
    child.send(ToChild.RUN, encode_json({"until_step": 6, "checkpoint": True}))
    assert child.expect(FromChild.RECIPE_ERROR) == b""
    assert child.receive() is None
    assert child.close() is None
    assert declaration["num_outputs"] == 3
    captured = capfd.readouterr()
    assert "secret" not in captured.out + captured.err


def test_a_dry_run_shows_the_provider_its_traceback(enclave, capsys):
    child = enclave(dry_run=True)
    child.send_setup(TINY_RECIPE + "def augment(x):\n    return 1 / 0\n")
    assert child.expect(FromChild.RECIPE_ERROR) == b""
    assert child.close() is None
    err = capsys.readouterr().err
    assert "ZeroDivisionError" in err
    assert "return 1 / 0" in err  # the recipe's own line, from its source


def test_running_out_of_memory_is_resource_exhausted(enclave):
    child = enclave()
    child.send_setup(TINY_RECIPE + "raise MemoryError\n")
    assert child.expect(FromChild.RESOURCE_EXHAUSTED) == b""
    assert child.close() is None


def test_an_allocation_torch_cannot_make_is_resource_exhausted(enclave):
    child = enclave()
    child.send_setup(TINY_RECIPE + "import torch\n_ = torch.empty(2**62, dtype=torch.uint8)\n")
    assert child.expect(FromChild.RESOURCE_EXHAUSTED) == b""
    assert child.close() is None


def test_a_checkpoint_that_grows_is_refused(enclave):
    # State the optimizer did not have after its first step: the declared size is wrong.
    source = TINY_RECIPE + textwrap.dedent(
        """
        import torch.nn.functional as F

        def train_step(model, optimizer, x, y, hp):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            first = next(iter(optimizer.state.values()))
            first[f"extra{len(first)}"] = 0.0
        """
    )
    x, y = make_data(40)
    child = enclave()
    declaration = child.declare(source)
    child.start(make_plan(40, 16, 2), x, y)
    child.send(ToChild.RUN, encode_json({"until_step": 2, "checkpoint": True}))
    child.expect(FromChild.TICK)
    child.expect(FromChild.TICK)
    assert child.expect(FromChild.RECIPE_ERROR) == b""
    assert declaration["checkpoint_nbytes"] > 0
    assert child.close() is None


def test_predictions_must_keep_the_declared_width(enclave):
    source = TINY_RECIPE + "def predict(model, x):\n    return model(x)[:, : min(3, len(x))]\n"
    child = enclave()
    declaration = child.declare(source)
    assert declaration["num_outputs"] == 1  # sized on one record
    child.start(make_plan(40, 16, 2), *make_data(40))
    child.send(ToChild.PREDICT, make_data(4)[0].tobytes())
    assert child.expect(FromChild.RECIPE_ERROR) == b""
    assert child.close() is None


def test_shutdown_and_end_of_input_end_the_child_quietly(enclave):
    silent = enclave()
    assert silent.close() is None  # SHUTDOWN before SETUP
    child = enclave()
    child.declare(TINY_RECIPE)
    child.start(make_plan(40, 16, 2), *make_data(40))
    assert child.close() is None  # SHUTDOWN between frames


def test_a_protocol_violation_by_the_enclave_is_raised(enclave):
    child = enclave()
    child.send(ToChild.PLAN, b"{}")
    assert child.receive() is None
    assert isinstance(child.close(), ProtocolError)

    child = enclave()
    child.declare(TINY_RECIPE)
    child.start(make_plan(40, 16, 2), *make_data(40))
    child.send(ToChild.RUN, encode_json({"until_step": 99, "checkpoint": False}))
    assert child.receive() is None
    assert isinstance(child.close(), ProtocolError)

    child = enclave()
    child.declare(TINY_RECIPE)
    plan = make_plan(40, 16, 2).to_dict() | {"batch_size": 0}
    child.send(ToChild.PLAN, encode_json(plan))
    assert child.receive() is None
    assert isinstance(child.close(), ProtocolError)


def _streamed_plan(count: int = 200, batch_size: int = 10, epochs: int = 2) -> TrainingPlan:
    """A plan over `count` records in chunks of 7, windows of 3 chunks (the layout alone)."""
    layout = StreamLayout(count, records_per_chunk=7, window_chunks=3)
    windows = layout.windows(1, batch_size)
    return TrainingPlan.fixed(
        num_train=windows.num_train,
        batch_size=batch_size,
        epochs=epochs,
        seed=1,
        checkpoint_every=1,
        stream=layout,
    )


class _Ring:
    """The enclave's side of a streamed run, by hand: fill a slot, announce it."""

    def __init__(self, child, plan: TrainingPlan, x: np.ndarray, y: np.ndarray) -> None:
        self.child, self.plan, self.x, self.y = child, plan, x, y
        self.windows = plan.stream.windows(plan.seed, plan.batch_size)
        self.slot_bytes = self.windows.slot_bytes(SCHEMA.record_bytes)
        self.writer = child.shared.make_ring(2 * self.slot_bytes)
        self.announced = -1

    def announce(self, window: int) -> None:
        base = (window % 2) * self.slot_bytes
        records_at = base + self.windows.slot_records * 8
        position = 0
        per_chunk = self.plan.stream.records_per_chunk
        for chunk in self.windows.chunks(window):
            ids = slice(chunk * per_chunk, min((chunk + 1) * per_chunk, len(self.y)))
            count = ids.stop - ids.start
            self.writer.write_at(base + position * 8, self.y[ids].astype("<i8").tobytes())
            self.writer.write_at(records_at + position * SCHEMA.record_bytes, self.x[ids].tobytes())
            position += count
        self.child.send(ToChild.WINDOW, encode_json({"window": window}))
        self.announced = window

    def run_all(self) -> None:
        """RUN to the end, keeping the ring one window ahead as the enclave does."""
        self.child.send(ToChild.RUN, encode_json({"until_step": self.plan.total_steps,
                                                  "checkpoint": False}))  # fmt: skip
        total_windows = self.plan.epochs * self.windows.per_epoch
        for step in range(self.plan.total_steps):
            needed = self.windows.windows_of(step)[-1]
            while self.announced < needed:
                released = self.announced + 1 - 2
                assert released < 0 or self.windows.last_step_of(released) < step
                self.announce(self.announced + 1)
            self.child.expect(FromChild.TICK, size=0)
        assert self.announced == total_windows - 1


def test_a_streamed_conversation_gives_the_plain_runs_weights(enclave):
    x, y = make_data(200)
    plan = _streamed_plan()
    child = enclave()
    declaration = child.declare(TINY_RECIPE, overrides={"epochs": 2})
    child.send(ToChild.PLAN, encode_json(plan.to_dict()))
    ring = _Ring(child, plan, x, y)
    child.send(ToChild.DATA)
    child.expect(FromChild.READY, size=0)
    assert ring.windows.per_epoch >= 3
    ring.run_all()  # WINDOW frames arrive while the child runs
    weights = child.finish(declaration["model_nbytes"])
    assert child.close() is None
    assert weights == train_plain(TINY_RECIPE, SCHEMA, x, y, plan)


@pytest.mark.parametrize(
    "announce",
    [
        [{"window": 0}, {"window": 0}],  # again
        [{"window": 1}, {"window": 0}],  # backwards
        [{"window": True}],
        [{"window": "0"}],
        [{}],
        [{"window": 0}, {"window": 1}, {"window": 2}],  # over the slot step 0 reads
    ],
)
def test_a_window_announced_out_of_order_is_a_protocol_violation(enclave, announce):
    x, y = make_data(200)
    plan = _streamed_plan()
    child = enclave()
    child.declare(TINY_RECIPE, overrides={"epochs": 2})
    child.send(ToChild.PLAN, encode_json(plan.to_dict()))
    _Ring(child, plan, x, y)
    child.send(ToChild.DATA)
    child.expect(FromChild.READY, size=0)
    for doc in announce:
        child.send(ToChild.WINDOW, encode_json(doc))
    child.send(ToChild.RUN, encode_json({"until_step": 1, "checkpoint": False}))
    assert child.receive() is None
    assert isinstance(child.close(), ProtocolError)


def test_a_ring_of_the_wrong_size_is_a_protocol_violation(enclave):
    plan = _streamed_plan()
    child = enclave()
    child.declare(TINY_RECIPE, overrides={"epochs": 2})
    child.send(ToChild.PLAN, encode_json(plan.to_dict()))
    child.shared.make_ring(plan.stream.windows(1, 10).slot_bytes(SCHEMA.record_bytes))  # one slot
    child.send(ToChild.DATA)
    assert child.receive() is None
    assert isinstance(child.close(), ProtocolError)
