"""The channel between the enclave runtime and the sandboxed recipe: frame kinds and rules.

Both ends import this module: the enclave (trusted) to enforce it, the recipe runtime in
the sandbox (untrusted) to speak it. The enclave never trusts the child to follow it;
`enclave.sandbox` checks every child frame against the kind expected next and its exact
size, and kills the child on any deviation.

Conversation (E = enclave runtime, C = sandboxed child), all frames from core.framing:

    E→C SETUP        JSON {"mode": "train"|"query"|"dryrun", "schema": {...},
                           "recipe_filename": str, "overrides": {"epochs": int|null}}
    E→C SOURCE       the recipe's Python source (UTF-8)
    C→E DECLARE      JSON (≤ MAX_DECLARE_BYTES), sent after build_model and before any data:
                     {"model_nbytes": int, "checkpoint_nbytes": int, "num_outputs": int,
                      "hyperparameters": {...}, "query_policy": {...}}
                     (hyperparameters include epochs and batch_size; query_policy is the
                     recipe's QUERY_POLICY or {} — the enclave validates both)
  train / dryrun:
    E→C PLAN         JSON TrainingPlan.to_dict()
    E→C DATA         empty: the training data is now in the shared data file (below)
    C→E READY        empty
    E→C STATE        (only when resuming, before the first RUN) a checkpoint the child
                     sent earlier; the child cannot know whether one comes, so it
                     answers READY first and accepts STATE until the first RUN
    repeat:
      E→C RUN        JSON {"until_step": int, "checkpoint": bool}
      C→E TICK       empty, exactly once per optimizer step, up to until_step
      C→E CHECKPOINT exactly checkpoint_nbytes (only if "checkpoint" was true)
      E→C PREDICT    n records (held-out evaluation), C-order, schema dtype, little-endian
      C→E PREDICTIONS exactly n * num_outputs float32 little-endian
      (distributed training, at each exchange point of the fixed schedule:)
      E→C GET_PARAMS empty
      C→E PARAMS     exactly model_nbytes: the current weights, laid out like MODEL
      E→C SET_PARAMS exactly model_nbytes: weights to load (the group's average)
      C→E READY      empty
    E→C FINISH       empty
    C→E MODEL        exactly model_nbytes: the weights as safetensors
  query:
    E→C WEIGHTS      safetensors bytes from an escrowed model
    C→E READY        empty
    repeat: E→C PREDICT / C→E PREDICTIONS
  any mode:
    E→C SHUTDOWN     empty; the child exits
    C→E RECIPE_ERROR empty; the recipe raised. The enclave reports `recipe_error` and
                     nothing else: no text from the child ever crosses the boundary.
    C→E RESOURCE_EXHAUSTED empty; the recipe ran out of memory (MemoryError).

The shared data file. Training records do not cross the pipe: the child holds, from its
start, a read-only descriptor of a memory file of the enclave's (`--data-fd`), empty
until the enclave has the declaration and then written once and sealed before DATA is
sent. Its layout, exactly `num_train * (8 + record_bytes)` bytes:

    num_train labels, int64 little-endian, then
    num_train records, C-order, schema dtype, little-endian

(labels first, so that both arrays start 8-byte aligned). The child maps it private and
read-only; one copy of the data serves both ends.
"""

from __future__ import annotations

import enum
import json
from dataclasses import asdict, dataclass
from typing import Any

from chiron.core.errors import InputError


class ToChild(enum.IntEnum):
    SETUP = 1
    SOURCE = 2
    PLAN = 3
    DATA = 4
    STATE = 6
    RUN = 7
    PREDICT = 8
    FINISH = 9
    WEIGHTS = 10
    SHUTDOWN = 11
    GET_PARAMS = 12
    SET_PARAMS = 13


class FromChild(enum.IntEnum):
    DECLARE = 64
    READY = 65
    TICK = 66
    CHECKPOINT = 67
    PREDICTIONS = 68
    MODEL = 69
    RECIPE_ERROR = 70
    RESOURCE_EXHAUSTED = 71
    PARAMS = 72


MAX_DECLARE_BYTES = 64 * 1024
LABEL_DTYPE = "<i8"
PREDICTION_DTYPE = "<f4"


class ReasonClass(enum.StrEnum):
    """Everything the provider may learn about why a job failed."""

    RECIPE_ERROR = "recipe_error"
    POLICY_VIOLATION = "policy_violation"
    RESOURCE_LIMIT = "resource_limit"
    TIMEOUT = "timeout"
    BAD_OUTPUT = "bad_output"


@dataclass(frozen=True)
class TrainingPlan:
    """The whole schedule, fixed from public facts before the recipe sees any data.

    The number of steps depends only on record count, batch size and epochs, so the
    running time of a job cannot encode a data-dependent stopping decision.
    """

    num_train: int
    batch_size: int
    epochs: int
    seed: int
    steps_per_epoch: int
    checkpoint_every: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @classmethod
    def fixed(
        cls, *, num_train: int, batch_size: int, epochs: int, seed: int, checkpoint_every: int
    ) -> TrainingPlan:
        if num_train <= 0:
            raise InputError("training set is empty")
        if batch_size <= 0 or epochs <= 0:
            raise InputError("batch size and epochs must be positive")
        steps = -(-num_train // batch_size)
        return cls(num_train, batch_size, epochs, seed, steps, max(1, checkpoint_every))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingPlan:
        return cls(**{k: int(data[k]) for k in cls.__dataclass_fields__})


def encode_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8")


def decode_json(payload: bytes) -> Any:
    return json.loads(payload.decode("utf-8"))


def holdout_split(num_records: int, seed: int) -> tuple[Any, Any]:
    """Split record indices into (train, held-out) from public facts only.

    The enclave keeps the held-out part to itself and measures the owner's per-epoch
    accuracy on it; the recipe never trains on it. Returns two sorted int64 arrays.
    """
    import numpy as np

    if num_records < 2:
        raise InputError("a data set needs at least two records")
    holdout = min(num_records // 10, 5000) if num_records >= 20 else 1
    order = np.random.Generator(np.random.PCG64([seed, 0x484F4C44])).permutation(num_records)
    return np.sort(order[holdout:]), np.sort(order[:holdout])
