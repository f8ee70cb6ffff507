"""A stand-in for the enclave's end of the recipe channel, and small recipes and data."""

from __future__ import annotations

import os
import select
import textwrap
import threading
from typing import Any

import numpy as np
import pytest

from chiron.core.framing import read_frame, write_frame
from chiron.core.recipe_protocol import (
    LABEL_DTYPE,
    FromChild,
    ToChild,
    TrainingPlan,
    decode_json,
    encode_json,
)
from chiron.core.schema import DatasetSchema
from chiron.enclave.sandbox.shared_file import SharedFile
from chiron.recipes.runtime import serve

TIMEOUT_SECONDS = 120

SCHEMA = DatasetSchema((1, 8, 8), "uint8", 3)

TINY_RECIPE = textwrap.dedent(
    """
    from torch import nn

    HYPERPARAMETERS = {"epochs": 2, "batch_size": 16, "lr": 0.01}
    QUERY_POLICY = {"output": "label", "budget": 10}

    def build_model(schema):
        c, h, w = schema.input_shape
        return nn.Sequential(
            nn.Flatten(), nn.Linear(c * h * w, 32), nn.ReLU(), nn.Linear(32, schema.num_classes)
        )
    """
)

# Draws from every generator in every hook, has dropout, batch norm, momentum and a
# learning-rate schedule: anything a resumed run could get wrong shows in its weights.
RANDOM_RECIPE = textwrap.dedent(
    """
    import random

    import numpy as np
    import torch
    from torch import nn

    HYPERPARAMETERS = {
        "epochs": 3, "batch_size": 8, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9,
        "lr_schedule": "cosine",
    }

    def build_model(schema):
        c, h, w = schema.input_shape
        return nn.Sequential(
            nn.Conv2d(c, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.3),
            nn.Linear(4 * (h - 2) * (w - 2), schema.num_classes),
        )

    def augment(x):
        noise = torch.rand_like(x) * random.random() * float(np.random.rand())
        return x + 0.1 * noise

    def predict(model, x):
        return model(x) + 1e-3 * torch.rand(x.shape[0], 1)
    """
)


def make_data(count: int, seed: int = 0, schema: DatasetSchema = SCHEMA):
    """Records whose class is a bright column band: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, schema.num_classes, size=count).astype(np.int64)
    x = rng.integers(0, 60, size=(count, *schema.input_shape)).astype(np.uint8)
    for i, label in enumerate(y):
        x[i, ..., label * 2 : label * 2 + 3] += 180
    return x, y


def make_plan(count: int, batch_size: int, epochs: int, seed: int = 1) -> TrainingPlan:
    return TrainingPlan.fixed(
        num_train=count, batch_size=batch_size, epochs=epochs, seed=seed, checkpoint_every=1
    )


class Enclave:
    """Drives `runtime.serve` in a thread over two pipes, as the enclave drives the child."""

    def __init__(self, *, dry_run: bool = False) -> None:
        self._child_in, self._to_child = os.pipe()
        self._from_child, self._child_out = os.pipe()
        self.shared = SharedFile("test-data")
        self.error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._serve, args=(dry_run,), daemon=True)
        self._thread.start()

    def _serve(self, dry_run: bool) -> None:
        try:
            serve(self._child_in, self._child_out, data_fd=self.shared.reader_fd, dry_run=dry_run)
        except BaseException as exc:
            self.error = exc
        finally:
            os.close(self._child_out)
            os.close(self._child_in)

    def send(self, kind: ToChild, payload: bytes = b"") -> None:
        write_frame(self._to_child, kind, payload)

    def receive(self) -> tuple[int, bytes] | None:
        ready, _, _ = select.select([self._from_child], [], [], TIMEOUT_SECONDS)
        assert ready, "the child did not answer in time"
        frame = read_frame(self._from_child, max_payload=2**31)
        return None if frame is None else (frame.kind, frame.payload)

    def expect(self, kind: FromChild, size: int | None = None) -> bytes:
        frame = self.receive()
        assert frame is not None, f"the child ended instead of sending {kind.name}"
        assert frame[0] == kind, f"expected {kind.name}, got {FromChild(frame[0]).name}"
        if size is not None:
            assert len(frame[1]) == size
        return frame[1]

    def declare(
        self,
        source: str | bytes,
        schema: DatasetSchema = SCHEMA,
        *,
        mode: str = "train",
        overrides: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        self.send_setup(source, schema, mode=mode, overrides=overrides)
        return decode_json(self.expect(FromChild.DECLARE))

    def send_setup(
        self,
        source: str | bytes,
        schema: DatasetSchema = SCHEMA,
        *,
        mode: str = "train",
        overrides: dict[str, Any] | None = None,
    ) -> None:
        setup = {
            "mode": mode,
            "schema": schema.to_dict(),
            "recipe_filename": "recipe.py",
            "overrides": overrides or {"epochs": None},
        }
        self.send(ToChild.SETUP, encode_json(setup))
        self.send(ToChild.SOURCE, source.encode() if isinstance(source, str) else source)

    def start(
        self, plan: TrainingPlan, x: np.ndarray, y: np.ndarray, state: bytes | None = None
    ) -> None:
        self.send(ToChild.PLAN, encode_json(plan.to_dict()))
        self.shared.write_once(
            [np.ascontiguousarray(y, dtype=LABEL_DTYPE), np.ascontiguousarray(x)]
        )
        self.send(ToChild.DATA)
        if state is not None:
            self.send(ToChild.STATE, state)
        self.expect(FromChild.READY, size=0)

    def run(self, until_step: int, ticks: int, checkpoint_nbytes: int | None = None) -> bytes:
        """RUN to `until_step`; check the TICKs; return the checkpoint (if asked for)."""
        command = {"until_step": until_step, "checkpoint": checkpoint_nbytes is not None}
        self.send(ToChild.RUN, encode_json(command))
        for _ in range(ticks):
            self.expect(FromChild.TICK, size=0)
        if checkpoint_nbytes is None:
            return b""
        return self.expect(FromChild.CHECKPOINT, size=checkpoint_nbytes)

    def predict(self, x: np.ndarray, num_outputs: int) -> np.ndarray:
        self.send(ToChild.PREDICT, np.ascontiguousarray(x).tobytes())
        payload = self.expect(FromChild.PREDICTIONS, size=len(x) * num_outputs * 4)
        return np.frombuffer(payload, dtype="<f4").reshape(len(x), num_outputs)

    def finish(self, model_nbytes: int) -> bytes:
        self.send(ToChild.FINISH)
        return self.expect(FromChild.MODEL, size=model_nbytes)

    def close(self) -> BaseException | None:
        """Shut the child down and wait for it; return what serve raised, if anything."""
        if self._closed:
            return self.error
        self._closed = True
        try:
            self.send(ToChild.SHUTDOWN)
        except BrokenPipeError:
            pass
        self._thread.join(TIMEOUT_SECONDS)
        assert not self._thread.is_alive(), "serve did not return"
        os.close(self._to_child)
        os.close(self._from_child)
        self.shared.close()
        return self.error

    def train(
        self, source: str, plan: TrainingPlan, x: np.ndarray, y: np.ndarray
    ) -> tuple[dict[str, Any], bytes]:
        """A whole uninterrupted training conversation; returns declaration and weights."""
        declaration = self.declare(source, overrides={"epochs": plan.epochs})
        self.start(plan, x, y)
        self.run(plan.total_steps, plan.total_steps, declaration["checkpoint_nbytes"])
        return declaration, self.finish(declaration["model_nbytes"])


@pytest.fixture
def enclave():
    """Factory of Enclave stand-ins; each is shut down at the end of the test."""
    opened: list[Enclave] = []

    def open_enclave(*, dry_run: bool = False) -> Enclave:
        opened.append(Enclave(dry_run=dry_run))
        return opened[-1]

    yield open_enclave
    for each in opened:
        each.close()
