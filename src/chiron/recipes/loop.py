"""The default training loop: one schedule for every recipe, in the sandbox or outside it.

The loop's behaviour is a function of public facts and the seed only: the batches of
epoch `e` are a permutation drawn from (seed, e), the last partial batch is included,
and exactly `plan.total_steps` optimizer steps run, whatever the loss does. The same
code runs inside the sandbox (driven by `runtime.serve`) and in a plain process
(`sdk.train_plain`), so both give bit-identical weights for the same seed and thread count.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import safetensors.torch
import torch

from chiron.core.errors import InputError, RecipeError
from chiron.core.recipe_protocol import MAX_DECLARE_BYTES, TrainingPlan, encode_json
from chiron.core.schema import DatasetSchema
from chiron.recipes.hooks import Recipe, lr_factor, records_to_tensor, seed_everything
from chiron.recipes.state import decode_state, encode_state

_Payload = TypeVar("_Payload", bytes, bytearray)

# The throwaway run that sizes the declaration: seeded apart from the job's seed (which
# the child learns only later, with the plan), on a zero batch of this many records.
PROBE_SEED = 0
PROBE_RECORDS = 2
PREDICT_BATCH_RECORDS = 256


@dataclass(frozen=True)
class Declaration:
    """What the recipe promises before it sees any data (the DECLARE frame)."""

    model_nbytes: int
    checkpoint_nbytes: int
    num_outputs: int
    hyperparameters: dict[str, Any]
    query_policy: dict[str, Any]

    def to_json(self) -> bytes:
        payload = encode_json(asdict(self))
        if len(payload) > MAX_DECLARE_BYTES:
            raise RecipeError("HYPERPARAMETERS and QUERY_POLICY are too large to declare")
        return payload


def epoch_order(seed: int, epoch: int, num_train: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the training records."""
    return np.random.Generator(np.random.PCG64([seed, epoch])).permutation(num_train)


class BatchSource(Protocol):
    """Where a run's batches come from: the records of step `step`, and their labels."""

    num_records: int
    input_shape: tuple[int, ...]

    def batch(self, step: int, plan: TrainingPlan) -> tuple[np.ndarray, np.ndarray]: ...


class RecordsInMemory:
    """A training set held whole: each epoch visits a permutation of it drawn from the seed."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        if len(x) != len(y):
            raise InputError("training data does not match the plan and schema")
        self._x, self._y = x, y
        self.num_records = len(y)
        self.input_shape = tuple(x.shape[1:])
        self._order_epoch = -1
        self._order = np.empty(0, dtype=np.int64)

    def batch(self, step: int, plan: TrainingPlan) -> tuple[np.ndarray, np.ndarray]:
        epoch, index = divmod(step, plan.steps_per_epoch)
        if epoch != self._order_epoch:
            self._order = epoch_order(plan.seed, epoch, plan.num_train)
            self._order_epoch = epoch
        picked = self._order[index * plan.batch_size : (index + 1) * plan.batch_size]
        return self._x[picked], self._y[picked]


def model_weights(model: torch.nn.Module) -> bytes:
    """The model's state dict as safetensors bytes (the MODEL frame)."""
    # Private contiguous copies, so tied or strided tensors serialize like any other.
    return safetensors.torch.save(
        {
            name: tensor.detach().cpu().clone(memory_format=torch.contiguous_format)
            for name, tensor in model.state_dict().items()
        }
    )


def _rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


@contextlib.contextmanager
def _preserved_rng() -> Iterator[None]:
    state = _rng_state()
    try:
        yield
    finally:
        _set_rng_state(state)


class TrainingRun:
    """A recipe's model trained on a fixed plan, one optimizer step at a time.

    Seeds every generator with `plan.seed` right before `build_model`, so the initial
    weights are reproducible. `hyperparameters` is what the recipe's hooks receive: its
    own, with `epochs` and `batch_size` those of the plan.
    """

    def __init__(
        self,
        recipe: Recipe,
        schema: DatasetSchema,
        plan: TrainingPlan,
        records: BatchSource,
    ) -> None:
        if records.num_records != plan.num_train or records.input_shape != schema.input_shape:
            raise InputError("training data does not match the plan and schema")
        self.recipe = recipe
        self.schema = schema
        self.plan = plan
        self.hyperparameters = {
            **recipe.hyperparameters,
            "epochs": plan.epochs,
            "batch_size": plan.batch_size,
        }
        self._records = records
        seed_everything(plan.seed)
        self.model = recipe.build_model(schema)
        self.model.train()
        self.optimizer = recipe.configure_optimizer(self.model, self.hyperparameters)
        self._initial_lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.step = 0

    def run_until(self, until_step: int, on_step: Callable[[int], None] | None = None) -> None:
        """Run optimizer steps up to step `until_step`, calling `on_step` after each."""
        if not self.step <= until_step <= self.plan.total_steps:
            raise InputError(f"cannot run from step {self.step} to step {until_step}")
        while self.step < until_step:
            self._train_step()
            self.step += 1
            if on_step is not None:
                on_step(self.step)

    def _train_step(self) -> None:
        plan = self.plan
        records, labels = self._records.batch(self.step, plan)
        x = records_to_tensor(records, self.schema)
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        schedule = self.hyperparameters["lr_schedule"]
        if schedule != "constant":
            factor = lr_factor(schedule, self.step, plan.total_steps)
            for group, initial in zip(self.optimizer.param_groups, self._initial_lrs, strict=True):
                group["lr"] = initial * factor
        x = self.recipe.augment(x)
        self.recipe.train_step(self.model, self.optimizer, x, y, self.hyperparameters)

    def predict(self, records: np.ndarray) -> np.ndarray:
        """Logits (n, outputs) as float32, computed in eval mode without gradients.

        The generators are restored afterwards: a recipe's `predict` that draws random
        numbers must not shift the training that follows, or a run resumed from a
        checkpoint (taken before the evaluation) would differ from an uninterrupted one.
        """
        outputs = []
        was_training = self.model.training
        with _preserved_rng(), torch.no_grad():
            self.model.eval()
            try:
                for start in range(0, len(records), PREDICT_BATCH_RECORDS):
                    batch = records_to_tensor(
                        records[start : start + PREDICT_BATCH_RECORDS], self.schema
                    )
                    logits = self.recipe.predict(self.model, batch)
                    outputs.append(logits.detach().to("cpu", torch.float32).numpy())
            finally:
                self.model.train(was_training)
        if not outputs:
            return np.zeros((0, 0), dtype=np.float32)
        if len({part.shape[1] for part in outputs}) != 1:
            raise RecipeError("predict returned a different number of outputs per batch")
        return np.concatenate(outputs)

    def checkpoint(self) -> bytearray:
        """The full training state: weights, optimizer, generators and step.

        Serialised once, straight from the live tensors into one buffer (see
        `encode_state`); its size is that of the declaration, whatever the values.
        """
        return encode_state(
            {
                "step": self.step,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "rng": _rng_state(),
            }
        )

    def restore(self, checkpoint: bytes | bytearray | memoryview) -> None:
        """Continue from a checkpoint of a run of the same recipe, schema and plan."""
        state = decode_state(checkpoint)
        try:
            step = state["step"]
            if isinstance(step, bool) or not isinstance(step, int):
                raise TypeError("step is not an integer")
            if not 0 <= step <= self.plan.total_steps:
                raise ValueError("step outside the plan")
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            _set_rng_state(state["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError):
            raise InputError("the checkpoint does not belong to this recipe and plan") from None
        self.step = step

    def model_weights(self) -> bytes:
        return model_weights(self.model)

    def load_weights(self, weights: bytes) -> None:
        """Replace the model's whole state with `weights` (from a trained model)."""
        self.model.load_state_dict(safetensors.torch.load(weights), strict=True)


def declare(recipe: Recipe, schema: DatasetSchema) -> tuple[Declaration, TrainingRun]:
    """Size everything the recipe will send, before it sees any data.

    A throwaway run builds the model and takes one optimizer step on a batch of zeros,
    which materializes the optimizer's state; the sizes of its weights and checkpoint
    are those of any run of this recipe on this schema, because they depend only on
    names, shapes and dtypes. Returns the declaration and the probe run (whose model a
    query session loads trained weights into).
    """
    records = min(PROBE_RECORDS, recipe.hyperparameters["batch_size"])
    plan = TrainingPlan.fixed(
        num_train=records, batch_size=records, epochs=1, seed=PROBE_SEED, checkpoint_every=1
    )
    zeros = np.zeros((records, *schema.input_shape), dtype=schema.dtype)
    probe = TrainingRun(
        recipe, schema, plan, RecordsInMemory(zeros, np.zeros(records, dtype=np.int64))
    )
    probe.run_until(plan.total_steps)
    logits = probe.predict(zeros[:1])
    declaration = Declaration(
        model_nbytes=len(probe.model_weights()),
        checkpoint_nbytes=len(probe.checkpoint()),
        num_outputs=int(logits.shape[1]),
        hyperparameters=recipe.declared_hyperparameters(),
        query_policy=recipe.query_policy,
    )
    return declaration, probe


def check_size(what: str, data: _Payload, declared: int) -> _Payload:
    """Refuse to send something whose size differs from what was declared."""
    if len(data) != declared:
        raise RecipeError(
            f"the {what} is {len(data)} bytes but {declared} were declared before training; "
            "its names, shapes and dtypes must not change"
        )
    return data
