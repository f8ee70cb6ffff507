"""The sandboxed child's side of the recipe channel (`chiron.core.recipe_protocol`).

The enclave's sandbox imports this module (and with it torch and everything the loop
uses) before it confines the process, then calls `serve`. From then on the child may
not open files for writing, start processes or threads of its own, or use the network,
so nothing here does, and nothing is imported lazily: torch imports hundreds of modules
the first time an optimizer is built, so importing this module runs `warm_up`, a whole
miniature training session, while imports still work.

What the child sends is fixed by the protocol: sizes declared before the data, one
TICK per optimizer step, and for failures an empty RECIPE_ERROR or RESOURCE_EXHAUSTED
frame. Text about a failure goes only to stderr, and only in a dry run, where the data
is synthetic and the provider reads it.
"""

from __future__ import annotations

import gc
import mmap
import os
import sys
import traceback
from typing import Any, NoReturn

import numpy as np

from chiron.core.errors import ChironError, InputError, RecipeError
from chiron.core.framing import MAX_FRAME_PAYLOAD, FramingError, read_frame, write_frame
from chiron.core.recipe_protocol import (
    LABEL_DTYPE,
    PREDICTION_DTYPE,
    FromChild,
    ToChild,
    TrainingPlan,
    decode_json,
)
from chiron.core.schema import DatasetSchema
from chiron.recipes.hooks import OPTIMIZERS, Recipe, load_recipe
from chiron.recipes.loop import Declaration, RecordsInMemory, TrainingRun, check_size, declare
from chiron.recipes.windowed_records import WindowedRecords, WindowError

MAX_CONTROL_BYTES = 64 * 1024
MAX_SOURCE_BYTES = 16 * 1024 * 1024
MODES = ("train", "dryrun", "query")


class ProtocolError(ChironError):
    """The enclave sent something the protocol does not allow at this point."""


class _Closed(Exception):
    """The enclave asked the child to stop (SHUTDOWN), or went away."""


class _Channel:
    """Frames on the two pipes, with the enclave's misbehaviour kept apart from the recipe's."""

    def __init__(self, in_fd: int, out_fd: int, data_fd: int | None = None) -> None:
        self.data_fd = data_fd
        self._in_fd = in_fd
        self._out_fd = out_fd
        # The newest window of a streamed plan the enclave announced (-1: none yet).
        self.window = -1

    def receive(self, *, max_payload: int = MAX_FRAME_PAYLOAD) -> tuple[ToChild, bytes]:
        """The next frame; WINDOW frames, which may come at any point, are noted on the way."""
        while True:
            kind, payload = self._read(max_payload)
            if kind != ToChild.WINDOW:
                return kind, payload
            self._note_window(payload)

    def wait_for_window(self, window: int) -> int:
        """Read WINDOW frames until `window` is announced (nothing else may come meanwhile)."""
        while self.window < window:
            kind, payload = self._read(MAX_CONTROL_BYTES)
            if kind != ToChild.WINDOW:
                _unexpected(kind)
            self._note_window(payload)
        return self.window

    def _note_window(self, payload: bytes) -> None:
        try:
            window = _json(payload)["window"]
        except (KeyError, TypeError):
            raise ProtocolError("malformed WINDOW") from None
        if isinstance(window, bool) or not isinstance(window, int) or window <= self.window:
            raise ProtocolError("WINDOW out of order")
        self.window = window

    def _read(self, max_payload: int) -> tuple[ToChild, bytes]:
        try:
            frame = read_frame(self._in_fd, max_payload=max_payload)
        except (OSError, FramingError):
            raise _Closed from None
        if frame is None or frame.kind == ToChild.SHUTDOWN:
            raise _Closed
        try:
            return ToChild(frame.kind), frame.payload
        except ValueError:
            raise ProtocolError(f"unknown frame kind {frame.kind}") from None

    def expect(self, kind: ToChild, *, max_payload: int, size: int | None = None) -> bytes:
        received, payload = self.receive(max_payload=max_payload)
        if received != kind:
            raise ProtocolError(f"expected {kind.name}, got {received.name}")
        if size is not None:
            _exact(kind, payload, size)
        return payload

    def send(self, kind: FromChild, payload: bytes | bytearray = b"") -> None:
        try:
            write_frame(self._out_fd, kind, payload)
        except OSError:
            raise _Closed from None


def serve(in_fd: int, out_fd: int, *, data_fd: int | None = None, dry_run: bool) -> None:
    """Speak the recipe protocol on `in_fd` / `out_fd` until SHUTDOWN or end of input.

    `data_fd` is the read-only shared data file the training data arrives in.

    Any exception from the recipe (its top-level code or a hook) ends the conversation
    with an empty RECIPE_ERROR frame; running out of memory with RESOURCE_EXHAUSTED.
    A `ProtocolError` (the enclave broke the protocol) propagates to the caller.
    """
    channel = _Channel(in_fd, out_fd, data_fd)
    try:
        _converse(channel)
    except _Closed:
        return
    except ProtocolError:
        raise
    except (Exception, SystemExit) as exc:
        if dry_run:
            traceback.print_exc(file=sys.stderr)
        failure = FromChild.RESOURCE_EXHAUSTED if _exhausted(exc) else FromChild.RECIPE_ERROR
        try:
            channel.send(failure)
        except _Closed:
            return


def _exhausted(exc: BaseException) -> bool:
    # torch's CPU allocator reports exhaustion as a RuntimeError with this wording, and
    # the threading module a thread the sandbox's task limit refused.
    return isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError)
        and any(text in str(exc) for text in ("can't allocate memory", "can't start new thread"))
    )


def _converse(channel: _Channel) -> None:
    setup = _json(channel.expect(ToChild.SETUP, max_payload=MAX_CONTROL_BYTES))
    source = channel.expect(ToChild.SOURCE, max_payload=MAX_SOURCE_BYTES)
    try:
        mode = setup["mode"]
        schema = DatasetSchema.from_dict(setup["schema"])
        filename = str(setup.get("recipe_filename") or "recipe.py")
        overrides = dict(setup.get("overrides") or {})
    except (KeyError, TypeError, ValueError, InputError):
        raise ProtocolError("malformed SETUP") from None
    if mode not in MODES:
        raise ProtocolError(f"unknown mode {mode!r}")

    recipe = load_recipe(source, filename=filename, overrides=overrides)
    declaration, probe = declare(recipe, schema)
    channel.send(FromChild.DECLARE, declaration.to_json())
    if mode == "query":
        _serve_queries(channel, probe, declaration)
    else:
        _serve_training(channel, _start_run(channel, recipe, schema), declaration)


def _start_run(channel: _Channel, recipe: Recipe, schema: DatasetSchema) -> TrainingRun:
    """Receive the plan and the data, and start the real run (seeded by the plan)."""
    plan_doc = _json(channel.expect(ToChild.PLAN, max_payload=MAX_CONTROL_BYTES))
    try:
        plan = TrainingPlan.from_dict(plan_doc)
    except (KeyError, TypeError, ValueError):
        raise ProtocolError("malformed PLAN") from None
    if min(plan.num_train, plan.batch_size, plan.epochs) <= 0 or plan.steps_per_epoch != -(
        -plan.num_train // plan.batch_size
    ):
        raise ProtocolError("inconsistent PLAN")
    channel.expect(ToChild.DATA, max_payload=0, size=0)
    if plan.stream is not None:
        if channel.data_fd is None:
            raise ProtocolError("the shared data file does not hold the planned records")
        try:
            windowed = WindowedRecords(channel.data_fd, plan, schema, channel.wait_for_window)
        except (WindowError, InputError):
            raise ProtocolError("the shared data file is not the plan's ring") from None
        return TrainingRun(recipe, schema, plan, windowed)
    x, y = _map_training_data(channel.data_fd, plan.num_train, schema)
    return TrainingRun(recipe, schema, plan, RecordsInMemory(x, y))


def _map_training_data(
    data_fd: int | None, n: int, schema: DatasetSchema
) -> tuple[np.ndarray, np.ndarray]:
    """The labels and records in the shared data file, mapped read-only without a copy."""
    size = n * (np.dtype(LABEL_DTYPE).itemsize + schema.record_bytes)
    if data_fd is None or os.fstat(data_fd).st_size != size:
        raise ProtocolError("the shared data file does not hold the planned records")
    region = mmap.mmap(data_fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    y = np.frombuffer(region, dtype=LABEL_DTYPE, count=n)
    x = np.frombuffer(region, dtype=np.dtype(schema.dtype).newbyteorder("<"), offset=y.nbytes)
    return x.reshape(n, *schema.input_shape), y


def _serve_training(channel: _Channel, run: TrainingRun, declaration: Declaration) -> None:
    # READY goes out before the optional STATE is read: only the enclave knows whether
    # it resumes, and it sends STATE (if any) before it waits for READY, so the child
    # must not wait for a frame that may never come. STATE is accepted until the first RUN.
    channel.send(FromChild.READY)
    started = False

    def tick(_step: int) -> None:
        channel.send(FromChild.TICK)

    while True:
        kind, payload = channel.receive()
        if kind == ToChild.STATE and not started:
            _exact(kind, payload, declaration.checkpoint_nbytes)
            run.restore(payload)
        elif kind == ToChild.RUN:
            started = True
            command = _json(payload)
            try:
                until_step, checkpoint = int(command["until_step"]), bool(command["checkpoint"])
            except (KeyError, TypeError, ValueError):
                raise ProtocolError("malformed RUN") from None
            if not run.step <= until_step <= run.plan.total_steps:
                raise ProtocolError(f"RUN to step {until_step} from step {run.step}")
            try:
                run.run_until(until_step, tick)
            except WindowError:
                raise ProtocolError("the enclave's ring broke the protocol") from None
            if checkpoint:
                state = run.checkpoint()
                channel.send(
                    FromChild.CHECKPOINT,
                    check_size("checkpoint", state, declaration.checkpoint_nbytes),
                )
        elif kind == ToChild.PREDICT:
            _answer_predict(channel, run, declaration, payload)
        elif kind == ToChild.FINISH:
            started = True
            weights = run.model_weights()
            channel.send(FromChild.MODEL, check_size("model", weights, declaration.model_nbytes))
        elif kind == ToChild.GET_PARAMS:
            started = True
            weights = run.model_weights()
            channel.send(FromChild.PARAMS, check_size("model", weights, declaration.model_nbytes))
        elif kind == ToChild.SET_PARAMS:
            started = True
            _exact(kind, payload, declaration.model_nbytes)
            run.load_weights(payload)
            channel.send(FromChild.READY)
        else:
            _unexpected(kind)


def _serve_queries(channel: _Channel, probe: TrainingRun, declaration: Declaration) -> None:
    weights = channel.expect(
        ToChild.WEIGHTS, max_payload=declaration.model_nbytes, size=declaration.model_nbytes
    )
    probe.load_weights(weights)
    del weights
    # Everything alive now (torch, the recipe, the model) lives as long as this child:
    # move it out of the collector's generations, so that a collection while answering
    # walks only what queries allocated, not torch's whole object graph (a tail of
    # tens of milliseconds on a query that happens to trigger a full collection).
    gc.collect()
    gc.freeze()
    channel.send(FromChild.READY)
    while True:
        kind, payload = channel.receive()
        if kind != ToChild.PREDICT:
            _unexpected(kind)
        _answer_predict(channel, probe, declaration, payload)


def _answer_predict(
    channel: _Channel, run: TrainingRun, declaration: Declaration, payload: bytes
) -> None:
    records = _records(payload, run.schema)
    logits = run.predict(records)
    if len(records) and logits.shape[1] != declaration.num_outputs:
        raise RecipeError(
            f"predict returned {logits.shape[1]} outputs, {declaration.num_outputs} declared"
        )
    channel.send(
        FromChild.PREDICTIONS, np.ascontiguousarray(logits, dtype=PREDICTION_DTYPE).tobytes()
    )


def _records(payload: bytes, schema: DatasetSchema) -> np.ndarray:
    if len(payload) % schema.record_bytes:
        raise ProtocolError("records frame is not a whole number of records")
    dtype = np.dtype(schema.dtype).newbyteorder("<")
    return np.frombuffer(payload, dtype=dtype).reshape(-1, *schema.input_shape)


def _exact(kind: ToChild, payload: bytes, size: int) -> None:
    if len(payload) != size:
        raise ProtocolError(f"{kind.name} has {len(payload)} bytes instead of {size}")


def _json(payload: bytes) -> Any:
    try:
        return decode_json(payload)
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("malformed JSON frame") from None


def _unexpected(kind: ToChild) -> NoReturn:
    raise ProtocolError(f"unexpected {kind.name} frame")


_WARM_UP_RECIPE = """
from torch import nn

def build_model(schema):
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Dropout(0.1), nn.Linear(2 * 3 * 3, schema.num_classes),
    )
"""


def warm_up() -> None:
    """Exercise the whole loop once on a toy recipe, so that every module it (and torch
    behind it) imports on first use is loaded before the sandbox forbids it."""
    schema = DatasetSchema((1, 8, 8), "uint8", 2)
    for optimizer in OPTIMIZERS:
        recipe = load_recipe(
            _WARM_UP_RECIPE,
            filename="<warm-up>",
            overrides={"optimizer": optimizer, "lr_schedule": "cosine"},
        )
        declaration, probe = declare(recipe, schema)
        declaration.to_json()
        probe.restore(probe.checkpoint())
        probe.load_weights(probe.model_weights())


warm_up()
