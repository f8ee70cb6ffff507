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
    E→C DATA         empty: the training data is now in the shared data file (below),
                     or, for a plan with a "stream", the file is the ring of windows
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
    (a plan with a "stream" only, at any point after DATA, even in the middle of a RUN:)
    E→C WINDOW       JSON {"window": int}: that window is now in its slot of the ring, in
                     increasing order; the child reads these only when a step needs a
                     window it was not yet told of, so they wait in its pipe until then
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

A streamed plan (`core.data_windows`) makes the file a ring of two slots instead, each
`slot_records` records (`EpochWindows.slot_records`: the largest window's chunks), exactly
`2 * slot_records * (8 + record_bytes)` bytes; slot k starts at k times half of that:

    slot_records labels, int64 little-endian, then
    slot_records records, C-order, schema dtype, little-endian

Window g lives in slot g % 2, its chunks one after another in the window's order, each
chunk's records in file order; the rest of the slot is unused. The enclave writes window
g + 2 into a slot once the child has sent the TICK of the last step that draws from
window g, and announces it with WINDOW.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from chiron.core.errors import InputError

if TYPE_CHECKING:
    # Imported where used: this module is imported by the sandbox's bootstrap before it
    # confines itself, and numpy must not start its threads there (unshare refuses a
    # process with more than one thread).
    from chiron.core.data_windows import StreamLayout


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
    WINDOW = 14


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
    # A data set larger than memory: how its chunks are held out and cut into windows
    # (`core.data_windows`); None when the training set is in the shared file whole.
    stream: StreamLayout | None = None

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @classmethod
    def fixed(
        cls,
        *,
        num_train: int,
        batch_size: int,
        epochs: int,
        seed: int,
        checkpoint_every: int,
        stream: StreamLayout | None = None,
    ) -> TrainingPlan:
        if num_train <= 0:
            raise InputError("training set is empty")
        if batch_size <= 0 or epochs <= 0:
            raise InputError("batch size and epochs must be positive")
        steps = -(-num_train // batch_size)
        return cls(num_train, batch_size, epochs, seed, steps, max(1, checkpoint_every), stream)

    def to_dict(self) -> dict[str, Any]:
        # Without a stream the dictionary is the one plans always had: checkpoints are
        # bound to it.
        plan = {name: getattr(self, name) for name in _COUNTS}
        return plan if self.stream is None else plan | {"stream": self.stream.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainingPlan:
        from chiron.core.data_windows import StreamLayout

        stream = data.get("stream")
        return cls(
            **{k: int(data[k]) for k in _COUNTS},
            stream=None if stream is None else StreamLayout.from_dict(stream),
        )


_COUNTS = ("num_train", "batch_size", "epochs", "seed", "steps_per_epoch", "checkpoint_every")


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

    from chiron.core.data_windows import HOLDOUT_STREAM, holdout_records

    holdout = holdout_records(num_records)
    order = np.random.Generator(np.random.PCG64([seed, HOLDOUT_STREAM])).permutation(num_records)
    return np.sort(order[holdout:]), np.sort(order[:holdout])
