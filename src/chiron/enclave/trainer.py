"""The training enclave's `train` call: decrypt, confine, train on a fixed schedule, escrow.

Everything that touches plaintext data happens here or in the sandbox child this
module drives. What leaves is fixed by construction: progress as step counts on a
schedule fixed before the recipe saw data, sealed checkpoints of a size declared
before data, and at the end an encrypted model, a signed receipt and an owner report
sealed to the owner. A recipe failure leaves as a reason class and nothing else.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from chiron.core import container, purposes
from chiron.core.crypto import open_sealed, seal
from chiron.core.errors import InputError, IntegrityError
from chiron.core.fileio import atomic_write
from chiron.core.keys import PublicIdentity
from chiron.core.query_protocol import confusion_matrix
from chiron.core.recipe_protocol import (
    LABEL_DTYPE,
    FromChild,
    ToChild,
    TrainingPlan,
    decode_json,
    encode_json,
    holdout_split,
)
from chiron.enclave import escrow
from chiron.enclave.context import EnclaveContext
from chiron.enclave.recipe_session import (
    Declaration,
    predict_logits,
    receive_declaration,
    send_records,
    spawn_recipe,
)
from chiron.enclave.sandbox import Sandbox
from chiron.enclave.sealing import SealingKey

MAX_RECIPE_BYTES = 1024 * 1024
MAX_EPOCHS = 1000
CHECKPOINT_EVERY_STEPS = 1000
_JOB_ID = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def check_job_id(job_id: str) -> str:
    """A job id as the host may choose it: it names files and store keys, so it is plain."""
    if not _JOB_ID.match(job_id):
        raise InputError("job id must be 1-128 letters, digits, '.', '_' or '-'")
    return job_id


@dataclass(frozen=True)
class TrainRequest:
    """The `train` call's arguments, validated: the host that sends them is untrusted."""

    job_id: str
    recipe_name: str
    recipe_source: bytes
    dataset_path: Path
    sealed_data_key: bytes
    owner: PublicIdentity
    provider: PublicIdentity
    epochs: int | None
    seed: int
    checkpoint_dir: Path | None

    @classmethod
    def parse(cls, args: dict[str, Any]) -> TrainRequest:
        try:
            job_id = str(args["job_id"])
            source = args["recipe_source"]
            epochs = args.get("epochs")
            seed = int(args.get("seed", 0))
            request = cls(
                job_id=job_id,
                recipe_name=str(args.get("recipe_name") or "recipe.py"),
                recipe_source=source,
                dataset_path=Path(str(args["dataset_path"])),
                sealed_data_key=args["sealed_data_key"],
                owner=PublicIdentity.from_bytes(args["owner_public"]),
                provider=PublicIdentity.from_bytes(args["provider_public"]),
                epochs=None if epochs is None else int(epochs),
                seed=seed,
                checkpoint_dir=(
                    Path(str(args["checkpoint_dir"])) if args.get("checkpoint_dir") else None
                ),
            )
        except (KeyError, TypeError, ValueError):
            raise InputError("malformed train request") from None
        check_job_id(job_id)
        if not isinstance(source, bytes) or not 0 < len(source) <= MAX_RECIPE_BYTES:
            raise InputError(f"recipe must be between 1 byte and {MAX_RECIPE_BYTES} bytes")
        if not isinstance(request.sealed_data_key, bytes):
            raise InputError("malformed sealed data key")
        if request.epochs is not None and not 1 <= request.epochs <= MAX_EPOCHS:
            raise InputError(f"epochs must be between 1 and {MAX_EPOCHS}")
        if not 0 <= seed < 2**63:
            raise InputError("seed must be a non-negative 63-bit integer")
        return request

    @property
    def recipe_sha256(self) -> str:
        return hashlib.sha256(self.recipe_source).hexdigest()


@dataclass
class _Progress:
    """Owner metrics so far; sealed inside every checkpoint so a resume keeps them."""

    step: int = 0
    epoch_accuracy: list[float] | None = None

    def to_bytes(self) -> bytes:
        return encode_json({"step": self.step, "epoch_accuracy": self.epoch_accuracy or []})

    @classmethod
    def from_bytes(cls, data: bytes) -> _Progress:
        doc = decode_json(data)
        return cls(int(doc["step"]), [float(a) for a in doc["epoch_accuracy"]])


class _Checkpoints:
    """Sealed checkpoints in a host directory, bound to this exact job and runtime.

    The host stores them and may delete or roll them back, which costs it only time:
    the schedule and seed make the final weights the same either way. It cannot read,
    alter, or move them to another job (the binding is authenticated).
    """

    FILE = "checkpoint.sealed"

    def __init__(self, directory: Path | None, key: SealingKey, binding: dict[str, object]):
        self._directory = directory
        self._key = key
        self._binding = binding

    def load(self) -> tuple[_Progress, bytes] | None:
        if self._directory is None:
            return None
        try:
            blob = (self._directory / self.FILE).read_bytes()
        except OSError:
            return None
        try:
            plain = self._key.unseal(blob, self._binding)
        except IntegrityError:
            return None  # another job's, another runtime's, or tampered: start afresh
        split = int.from_bytes(plain[:4], "big")
        return _Progress.from_bytes(plain[4 : 4 + split]), plain[4 + split :]

    def save(self, progress: _Progress, child_state: bytes) -> None:
        if self._directory is None:
            return
        meta = progress.to_bytes()
        plain = len(meta).to_bytes(4, "big") + meta + child_state
        self._directory.mkdir(parents=True, exist_ok=True)
        atomic_write(self._directory / self.FILE, self._key.seal(plain, self._binding), mode=0o600)


class ParameterExchange(Protocol):
    """A training enclave's part in a distributed job (chiron.enclave.distributed.worker).

    The loop below calls it at fixed points only: which records this worker trains on,
    the plan once it is fixed, and the exchange points of a schedule fixed with it.
    """

    @property
    def lead(self) -> bool:
        """Whether this worker escrows the group's model and writes the owner's report."""

    def shard(self, train_index: np.ndarray, seed: int) -> np.ndarray:
        """This worker's share of the training indices."""

    def begin(self, plan: TrainingPlan, declaration: Declaration) -> None:
        """Agree on the plan with the group; afterwards the schedule is fixed."""

    def next_exchange(self, step: int) -> int:
        """The first exchange point after `step`."""

    def due(self, step: int) -> bool:
        """Whether `step` is an exchange point (step 0 always is)."""

    def synchronize(self, sandbox: Sandbox, step: int, declaration: Declaration) -> None:
        """Exchange the child's parameters with the group and load the result into it."""

    def describe(self) -> dict[str, Any]:
        """The group, for the receipt and the owner's report."""

    def summary(self) -> dict[str, Any]:
        """What this worker's call returns besides the model (the wire trace, timings)."""


def handle_train(
    context: EnclaveContext, args: dict[str, Any], emit: Callable[[dict[str, Any]], None]
) -> dict[str, Any]:
    request = TrainRequest.parse(args)
    if args.get("distributed") is not None:
        # One training enclave of a distributed job: torch (for gloo) loads only here.
        from chiron.enclave.distributed.worker import train_worker

        return train_worker(context, request, args, emit)
    return train(context, request, emit)


def train(
    context: EnclaveContext,
    request: TrainRequest,
    emit: Callable[[dict[str, Any]], None],
    exchange: ParameterExchange | None = None,
) -> dict[str, Any]:
    """Train `request`'s recipe on its dataset; with `exchange`, as one worker of a group."""
    header = container.read_dataset_header(request.dataset_path)
    data_key = open_sealed(
        context.identity.hpke_key,
        request.sealed_data_key,
        purpose=purposes.DATASET_KEY,
        context={"job_id": request.job_id, "dataset_id": header.dataset_id},
        what="data key",
    )
    header, x, y = container.load_dataset(request.dataset_path, data_key)
    schema = header.schema
    train_index, holdout_index = holdout_split(len(y), request.seed)
    if exchange is not None:
        train_index = exchange.shard(train_index, request.seed)
    x_holdout, y_holdout = x[holdout_index], y[holdout_index]
    x, y = x[train_index], y[train_index]

    emit({"event": "state", "state": "running"})
    with spawn_recipe() as sandbox:
        declaration = receive_declaration(
            sandbox,
            mode="train",
            schema=schema,
            recipe_name=request.recipe_name,
            recipe_source=request.recipe_source,
            overrides={"epochs": request.epochs},
        )
        plan = TrainingPlan.fixed(
            num_train=len(y),
            batch_size=declaration.batch_size,
            epochs=declaration.epochs,
            seed=request.seed,
            checkpoint_every=min(CHECKPOINT_EVERY_STEPS, -(-len(y) // declaration.batch_size)),
        )
        checkpoints = _Checkpoints(
            request.checkpoint_dir,
            SealingKey(
                state_dir=context.state_dir,
                platform_name=context.platform_name,
                measurement=context.measurement,
                purpose="training-checkpoint",
            ),
            binding=_job_binding(request, header.dataset_id, plan, declaration),
        )
        resumed = checkpoints.load()
        progress = resumed[0] if resumed else _Progress(0, [])
        resumed_from_step = progress.step

        sandbox.send(ToChild.PLAN, encode_json(plan.to_dict()))
        send_records(sandbox, ToChild.DATA_X, x, schema)
        sandbox.send(ToChild.DATA_Y, np.ascontiguousarray(y, dtype=LABEL_DTYPE).tobytes())
        sandbox.expect(FromChild.READY, size=0)
        if resumed:
            sandbox.send(ToChild.STATE, resumed[1])
        # A worker of a group checkpoints nothing (a job that loses a worker fails) and
        # stops at every exchange point instead.
        checkpointing = exchange is None
        if exchange is not None:
            exchange.begin(plan, declaration)
            exchange.synchronize(sandbox, 0, declaration)

        total = plan.total_steps
        emit({"event": "progress", "step": progress.step, "total": total})
        report_every = max(1, total // 100)
        while progress.step < total:
            epoch_end = (progress.step // plan.steps_per_epoch + 1) * plan.steps_per_epoch
            next_checkpoint = (progress.step // plan.checkpoint_every + 1) * plan.checkpoint_every
            if exchange is None:
                target = min(epoch_end, next_checkpoint, total)
            else:
                target = min(epoch_end, exchange.next_exchange(progress.step), total)
            sandbox.send(
                ToChild.RUN, encode_json({"until_step": target, "checkpoint": checkpointing})
            )
            for step in range(progress.step + 1, target + 1):
                sandbox.expect(FromChild.TICK, size=0)
                if step % report_every == 0 or step == target:
                    emit({"event": "progress", "step": step, "total": total})
            if checkpointing:
                child_state = sandbox.expect(
                    FromChild.CHECKPOINT, size=declaration.checkpoint_nbytes
                )
            progress.step = target
            if exchange is not None and exchange.due(target):
                exchange.synchronize(sandbox, target, declaration)
            if target == epoch_end:
                logits = predict_logits(sandbox, x_holdout, schema, declaration.num_outputs)
                progress.epoch_accuracy.append(float(np.mean(logits.argmax(1) == y_holdout)))
            if checkpointing:
                checkpoints.save(progress, child_state)

        sandbox.send(ToChild.FINISH, b"")
        weights = sandbox.expect(FromChild.MODEL, size=declaration.model_nbytes)
        escrow.check_weights(weights)
        final_logits = predict_logits(sandbox, x_holdout, schema, declaration.num_outputs)

    if exchange is not None and not exchange.lead:
        return exchange.summary()
    group = {"distributed": exchange.describe()} if exchange is not None else {}
    model = escrow.seal_model(
        context,
        schema=schema,
        recipe_name=request.recipe_name,
        recipe_source=request.recipe_source,
        weights=weights,
        query_policy=declaration.query_policy,
        owner=request.owner,
        provider=request.provider,
    )
    owner_report = {
        "job_id": request.job_id,
        "model_id": model.model_id,
        "dataset_id": header.dataset_id,
        "holdout_records": len(y_holdout),
        "epoch_accuracy": progress.epoch_accuracy,
        "final_holdout_accuracy": float(np.mean(final_logits.argmax(1) == y_holdout)),
        "confusion_matrix": confusion_matrix(
            y_holdout, final_logits.argmax(1), schema.num_classes
        ).tolist(),
        "class_names": list(schema.class_names),
        "steps": plan.total_steps,
        "epochs": plan.epochs,
        "resumed_from_step": resumed_from_step,
        **group,
    }
    receipt = escrow.sign_receipt(
        context,
        {
            "job_id": request.job_id,
            "model_id": model.model_id,
            "model_sha256": hashlib.sha256(model.file_bytes).hexdigest(),
            "recipe_sha256": request.recipe_sha256,
            "dataset_ids": [header.dataset_id],
            "hyperparameters_sha256": hashlib.sha256(
                encode_json(declaration.hyperparameters)
            ).hexdigest(),
            "plan": {
                "epochs": plan.epochs,
                "batch_size": plan.batch_size,
                "steps": plan.total_steps,
                "seed": plan.seed,
            },
            "owner_fingerprint": request.owner.fingerprint,
            "provider_fingerprint": request.provider.fingerprint,
            **group,
        },
    )
    return {
        **(exchange.summary() if exchange is not None else {}),
        "model": model.file_bytes,
        "receipt": receipt,
        "owner_report": seal(
            request.owner.hpke_key,
            encode_json(owner_report),
            purpose=purposes.OWNER_REPORT,
            context={"job_id": request.job_id},
        ),
    }


def _job_binding(
    request: TrainRequest, dataset_id: str, plan: TrainingPlan, declaration: Declaration
) -> dict[str, object]:
    return {
        "job_id": request.job_id,
        "dataset_id": dataset_id,
        "recipe_sha256": request.recipe_sha256,
        "owner": request.owner.fingerprint,
        "provider": request.provider.fingerprint,
        "plan": plan.to_dict(),
        "checkpoint_nbytes": declaration.checkpoint_nbytes,
    }
