"""The training enclave's `train` call: decrypt, confine, train on a fixed schedule, escrow.

Everything that touches plaintext data happens here or in the sandbox child this
module drives. What leaves is fixed by construction: progress as step counts on a
schedule fixed before the recipe saw data, sealed checkpoints of a size declared
before data, and at the end an encrypted model, a signed receipt and an owner report
sealed to the owner. A recipe failure leaves as a reason class and nothing else.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from chiron.core import dataset, purposes, replies
from chiron.core.contract import TrainRequest, TrainResult
from chiron.core.crypto import open_sealed, seal
from chiron.core.dataset import DatasetHeader
from chiron.core.errors import InputError, IntegrityError
from chiron.core.manifest import JobManifest, SignedManifest, training_data_key_context
from chiron.core.query_protocol import confusion_matrix, query_policy_sha256
from chiron.core.recipe_protocol import (
    FromChild,
    ToChild,
    TrainingPlan,
    decode_json,
    encode_json,
    holdout_split,
)
from chiron.core.recipe_statement import SignedRecipeStatement
from chiron.enclave import escrow
from chiron.enclave.context import EnclaveContext
from chiron.enclave.fixed_rate import Pacer, Rate, calibrate
from chiron.enclave.recipe_session import (
    Declaration,
    predict_logits,
    receive_declaration,
    share_training_data,
    spawn_recipe,
)
from chiron.enclave.sandbox import Sandbox
from chiron.enclave.sealing import SealingKey, sealed_size

# A free-running job checkpoints every this many steps and at every epoch end: with a
# checkpoint costing a few tens of milliseconds (docs/benchmarks.md, "Checkpoints"), about
# every minute for ResNet-20 on the reference machine, every 12 s for the CNN. A fixed-rate
# job checkpoints on its clock instead, about every CHECKPOINT_SECONDS of it.
CHECKPOINT_EVERY_STEPS = 200
CHECKPOINT_SECONDS = 60
# The longest JSON text of any float (sign, 17 significant digits, 3-digit exponent).
# Every accuracy in the owner's report and in checkpoint metadata is padded as if it took
# this many characters, so the digits a figure happens to need (which a recipe steers
# through its predictions) never show in the size of what is sealed.
_WIDEST_FLOAT = -1.2345678901234567e300


def _padded_json(value: Any, widest: Any) -> bytes:
    """`value` as JSON padded with spaces (still valid JSON) to the length of `widest`.

    `widest` is the same document with every data-dependent figure at its longest, built
    from public facts only (epochs, steps, classes, held-out records), so the padded
    size is a function of those facts alone.
    """
    data, size = encode_json(value), len(encode_json(widest))
    if len(data) > size:
        raise IntegrityError("a sealed document is larger than its fixed size")
    return data + b" " * (size - len(data))


@dataclass(frozen=True)
class AcceptedJob:
    """A `train` request whose every host-supplied part matched the owner's manifest.

    Only `accept_job` makes one; the training loop reads nothing else, so nothing the
    host chose without the owner's or the provider's signature reaches it.
    """

    signed: SignedManifest
    statement: SignedRecipeStatement
    recipe_name: str
    recipe_source: bytes
    dataset_path: Path
    header: DatasetHeader
    data_key: bytes
    checkpoint_dir: Path | None
    # The owner's secret for this job, when released: checkpoints are sealed under it.
    job_secret: bytes | None = None

    @property
    def manifest(self) -> JobManifest:
        return self.signed.manifest

    @property
    def job_id(self) -> str:
        return self.manifest.job_id


def accept_job(context: EnclaveContext, request: TrainRequest) -> AcceptedJob:
    """Check the host's half of the request against the owner's, bind, open the data key.

    Every check runs before the data key is opened, and the enclave commits to the
    manifest (`context.bind`) before it opens it: a second `train` on this enclave,
    with any manifest, is refused, so the owner's sealed key serves one job only.
    """
    signed = request.manifest
    manifest = signed.manifest
    materials = request.materials
    statement = materials.recipe_statement
    # The recipe: the file the provider signed, the statement the owner named.
    if statement.sha256 != manifest.recipe_statement_sha256:
        raise IntegrityError("the recipe statement is not the one the owner's manifest names")
    statement.check_recipe(materials.recipe_source)
    if statement.statement.recipe_sha256 != manifest.recipe_sha256:
        raise IntegrityError("the recipe is not the one the owner's manifest names")
    # The provider: named by its own signature, never by the host or the owner alone.
    if statement.provider != manifest.provider:
        raise IntegrityError("the manifest's provider is not the one who signed the recipe")
    # This enclave: the very one the owner attested for its place in the job.
    group = request.authorization.group
    if manifest.plan.distributed != (group is not None):
        raise InputError("the manifest's plan and the call disagree on the number of workers")
    rank = group.rank if group is not None else 0
    if rank == 0 and group is not None:
        raise InputError("rank 0 of a job is the parameter server, not a training enclave")
    if manifest.enclaves[rank] != context.identity.public.fingerprint:
        raise IntegrityError("this enclave is not the one the owner's manifest names")
    # The dataset: the exact ciphertext file the owner named.
    dataset_path = Path(materials.dataset_path)
    header, digest = dataset.read_dataset_header_and_digest(dataset_path)
    if (header.dataset_id, digest) != (manifest.dataset.dataset_id, manifest.dataset.header_sha256):
        raise IntegrityError("the dataset is not the one the owner's manifest names")
    context.bind(signed.digest)
    key_context = training_data_key_context(signed.digest, header.dataset_id)
    data_key = open_sealed(
        context.identity.hpke_key,
        request.authorization.sealed_data_key,
        purpose=purposes.TRAINING_DATA_KEY,
        context=key_context,
        what="data key",
    )
    sealed_secret = request.authorization.sealed_job_secret
    job_secret = (
        None
        if sealed_secret is None
        else open_sealed(
            context.identity.hpke_key,
            sealed_secret,
            purpose=purposes.JOB_SECRET,
            context=key_context,
            what="job secret",
        )
    )
    return AcceptedJob(
        signed=signed,
        statement=statement,
        # The provider's signed name, not the host's: it is stored in the model file.
        recipe_name=f"{statement.statement.name}.py",
        recipe_source=materials.recipe_source,
        dataset_path=dataset_path,
        header=header,
        data_key=data_key,
        checkpoint_dir=Path(materials.checkpoint_dir) if materials.checkpoint_dir else None,
        job_secret=job_secret,
    )


@dataclass
class _Progress:
    """Owner metrics so far; sealed inside every checkpoint so a resume keeps them."""

    step: int = 0
    epoch_accuracy: list[float] = field(default_factory=list)

    def to_bytes(self, plan: TrainingPlan) -> bytes:
        """Of one size for `plan`, whatever the accuracies (see `_padded_json`)."""
        return _padded_json(
            {"step": self.step, "epoch_accuracy": self.epoch_accuracy},
            {"step": plan.total_steps, "epoch_accuracy": [_WIDEST_FLOAT] * plan.epochs},
        )

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

    def __init__(
        self, directory: Path | None, key: SealingKey | None, binding: dict[str, object]
    ) -> None:
        # Without a folder or a key there are no checkpoints (a worker of a group; a job
        # on a platform without sealing whose owner released no job secret).
        self._directory = directory if key is not None else None
        self._key = key
        self._binding = binding
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None
        # A job's checkpoints all have one size (the declared state and the metadata,
        # padded), so the writer fills the same two buffers each time: no fresh 2 x 5 MB
        # to fault in per write, on cores the training needs.
        self._plain = bytearray()
        self._sealed = bytearray()

    def load(self) -> tuple[_Progress, bytes] | None:
        if self._directory is None:
            return None
        try:
            blob = (self._directory / self.FILE).read_bytes()
        except OSError:
            return None
        try:
            assert self._key is not None
            plain = self._key.unseal(blob, self._binding)
        except IntegrityError:
            return None  # another job's, another runtime's, or tampered: start afresh
        split = int.from_bytes(plain[:4], "big")
        return _Progress.from_bytes(plain[4 : 4 + split]), plain[4 + split :]

    def save(self, progress: _Progress, child_state: bytes, plan: TrainingPlan) -> None:
        """Seal and write in the background: the loop goes on while the host's disk syncs.

        The write starts now (a fixed-rate job calls this on a slot boundary); how long
        the host's disk takes is the host's business and delays no later slot.
        """
        if self._directory is None or self._key is None:
            return
        self.wait()  # the buffers are the last writer's until then
        meta = progress.to_bytes(plan)
        self._writer = threading.Thread(target=self._write, args=(meta, child_state), daemon=True)
        self._writer.start()

    def _write(self, meta: bytes, child_state: bytes) -> None:
        try:
            assert self._directory is not None and self._key is not None
            size = 4 + len(meta) + len(child_state)
            if len(self._plain) != size:
                self._plain, self._sealed = bytearray(size), bytearray(sealed_size(size))
            self._plain[:4] = len(meta).to_bytes(4, "big")
            self._plain[4 : 4 + len(meta)] = meta
            self._plain[4 + len(meta) :] = child_state
            self._directory.mkdir(parents=True, exist_ok=True)
            self._key.seal_to_file(
                self._directory / self.FILE, self._plain, self._binding, buffer=self._sealed
            )
        except BaseException as exc:  # re-raised by wait(), in the training loop
            self._error = exc

    def wait(self) -> None:
        """The last checkpoint is written (or its error raised here)."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


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

    def begin(self, plan: TrainingPlan, declaration: Declaration, rate: Rate | None) -> Rate | None:
        """Agree on the plan and the fixed rate with the group; then the schedule is fixed.

        Returns the group's rate (every member's the same), and the clock starts on return.
        """

    def next_exchange(self, step: int) -> int:
        """The first exchange point after `step`."""

    def due(self, step: int) -> bool:
        """Whether `step` is an exchange point (step 0 always is)."""

    def collect(self, sandbox: Sandbox, declaration: Declaration) -> bytes:
        """The child's parameters for the next exchange."""

    def synchronize(
        self, sandbox: Sandbox, step: int, declaration: Declaration, params: bytes
    ) -> None:
        """Exchange `params` with the group and load the result into the child."""

    def describe(self) -> dict[str, Any]:
        """The group, for the receipt and the owner's report."""

    def summary(self) -> TrainResult:
        """What this worker's call returns besides the model (the wire trace, timings)."""


def train(
    context: EnclaveContext,
    job: AcceptedJob,
    emit: Callable[[dict[str, Any]], None],
    exchange: ParameterExchange | None = None,
) -> TrainResult:
    """Train `job`'s recipe on its dataset; with `exchange`, as one worker of a group.

    With the owner's `fixed_rate`, every observable action happens on the job's clock
    (`chiron.enclave.fixed_rate`), a failure included.
    """
    pacer = Pacer()
    try:
        return _train(context, job, emit, exchange, pacer)
    except BaseException:
        pacer.settle()
        raise


def _train(
    context: EnclaveContext,
    job: AcceptedJob,
    emit: Callable[[dict[str, Any]], None],
    exchange: ParameterExchange | None,
    pacer: Pacer,
) -> TrainResult:
    manifest = job.manifest
    header, x, y = dataset.load_dataset(job.dataset_path, job.data_key)
    schema = header.schema
    seed = manifest.plan.seed
    train_index, holdout_index = holdout_split(len(y), seed)
    if exchange is not None:
        train_index = exchange.shard(train_index, seed)
    x_holdout, y_holdout = x[holdout_index], y[holdout_index]
    num_train = len(train_index)

    emit({"event": "state", "state": "running"})
    with spawn_recipe() as sandbox:
        declaration = receive_declaration(
            sandbox,
            mode="train",
            schema=schema,
            recipe_name=job.recipe_name,
            recipe_source=job.recipe_source,
            overrides=manifest.plan.overrides(),
        )
        _check_declaration(job, declaration)
        plan = TrainingPlan.fixed(
            num_train=num_train,
            batch_size=declaration.batch_size,
            epochs=declaration.epochs,
            seed=seed,
            checkpoint_every=min(CHECKPOINT_EVERY_STEPS, -(-num_train // declaration.batch_size)),
        )
        checkpoints = _Checkpoints(
            job.checkpoint_dir,
            _checkpoint_key(context, job),
            binding={
                "job": manifest.job_binding(),
                "plan": plan.to_dict(),
                "checkpoint_nbytes": declaration.checkpoint_nbytes,
            },
        )
        resumed = checkpoints.load()
        progress = resumed[0] if resumed else _Progress(0, [])
        resumed_from_step = progress.step

        # The rate is fixed (and, in a group, agreed) before the recipe sees any data;
        # the clock starts as the records go in.
        rate = _fix_rate(job, plan, declaration, len(y_holdout), exchange is not None)
        if exchange is not None:
            rate = exchange.begin(plan, declaration, rate)
        elif rate is not None:
            plan = dataclasses.replace(plan, checkpoint_every=_clock_checkpoint_every(plan, rate))
        pacer.rate = rate
        pacer.start()
        units = rate or Rate(period_ms=1)
        total = plan.total_steps
        # A worker of a group checkpoints nothing (a job that loses a worker fails) and
        # stops at every exchange point instead.
        checkpointing = exchange is None

        def target_after(step: int) -> int:
            """Where the segment that starts at `step` stops (fixed by the plan)."""
            epoch_end = (step // plan.steps_per_epoch + 1) * plan.steps_per_epoch
            if exchange is None:
                next_checkpoint = (step // plan.checkpoint_every + 1) * plan.checkpoint_every
                return min(epoch_end, next_checkpoint, total)
            return min(epoch_end, exchange.next_exchange(step), total)

        def start_segment(step: int) -> None:
            """The child's next RUN, sent as soon as it is idle: it may run ahead of the clock."""
            if step < total:
                command = {"until_step": target_after(step), "checkpoint": checkpointing}
                sandbox.send(ToChild.RUN, encode_json(command))

        with pacer.slot(units.load, sandbox):
            sandbox.send(ToChild.PLAN, encode_json(plan.to_dict()))
            share_training_data(sandbox, x, y, schema, train_index)
            del x, y  # the child's shared file holds the training set; one copy is enough
            sandbox.expect(FromChild.READY, size=0)
            if resumed:
                sandbox.send(ToChild.STATE, resumed[1])
            if exchange is None:
                start_segment(progress.step)
        if exchange is not None:
            _exchange(pacer, sandbox, exchange, 0, declaration, units, lambda: start_segment(0))

        emit({"event": "progress", "step": progress.step, "total": total})
        report_every = max(1, total // 100)
        while progress.step < total:
            target = target_after(progress.step)
            # One slot per step, each ending on its own boundary.
            for step in range(progress.step + 1, target + 1):
                with pacer.slot(1, sandbox):
                    sandbox.expect(FromChild.TICK, size=0)
                if step % report_every == 0 or step == target:
                    emit({"event": "progress", "step": step, "total": total})
            progress.step = target
            evaluating = target % plan.steps_per_epoch == 0
            exchanging = exchange is not None and exchange.due(target)
            # The last piece of the child's work in this segment starts the next one.
            if checkpointing:
                with pacer.slot(units.checkpoint, sandbox):
                    child_state = sandbox.expect(
                        FromChild.CHECKPOINT, size=declaration.checkpoint_nbytes
                    )
                    if not (exchanging or evaluating):
                        start_segment(target)
            if exchange is not None and exchanging:
                _exchange(
                    pacer,
                    sandbox,
                    exchange,
                    target,
                    declaration,
                    units,
                    None if evaluating else functools.partial(start_segment, target),
                )
            if evaluating:
                with pacer.slot(units.evaluate, sandbox):
                    logits = predict_logits(sandbox, x_holdout, schema, declaration.num_outputs)
                    start_segment(target)
                progress.epoch_accuracy.append(float(np.mean(logits.argmax(1) == y_holdout)))
            if checkpointing:
                checkpoints.save(progress, child_state, plan)

        # The last slots hold the final weights and predictions, the child's exit and
        # escrow: the call returns at their end.
        finished = pacer.reserve(units.finish)
        checkpoints.wait()
        with sandbox.until(finished):
            sandbox.send(ToChild.FINISH, b"")
            weights = sandbox.expect(FromChild.MODEL, size=declaration.model_nbytes)
            escrow.check_weights(weights)
            final_logits = predict_logits(sandbox, x_holdout, schema, declaration.num_outputs)

    summary = exchange.summary() if exchange is not None else TrainResult()
    if exchange is not None and not exchange.lead:
        pacer.arrive(finished)
        return summary
    fixed_rate = pacer.describe()
    group = {"distributed": exchange.describe()} if exchange is not None else {}
    model = escrow.seal_model(
        context,
        schema=schema,
        recipe_name=job.recipe_name,
        recipe_source=job.recipe_source,
        weights=weights,
        query_policy=declaration.query_policy,
        owner=manifest.owner,
        provider=manifest.provider,
    )
    owner_report = {
        "job_id": manifest.job_id,
        "manifest_sha256": job.signed.digest,
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
        "fixed_rate": fixed_rate,
        **group,
    }
    receipt = escrow.sign_receipt(
        context,
        {
            "job_id": manifest.job_id,
            "manifest_sha256": job.signed.digest,
            "model_id": model.model_id,
            "model_sha256": hashlib.sha256(model.file_bytes).hexdigest(),
            "recipe_sha256": manifest.recipe_sha256,
            "recipe_statement_sha256": manifest.recipe_statement_sha256,
            "dataset_ids": [header.dataset_id],
            "dataset_header_sha256s": [manifest.dataset.header_sha256],
            "hyperparameters_sha256": hashlib.sha256(
                encode_json(declaration.hyperparameters)
            ).hexdigest(),
            "plan": {
                "epochs": plan.epochs,
                "batch_size": plan.batch_size,
                "steps": plan.total_steps,
                "seed": plan.seed,
                "workers": manifest.plan.workers,
                "fixed_rate": manifest.plan.fixed_rate,
            },
            "fixed_rate": fixed_rate,
            "owner_fingerprint": manifest.owner.fingerprint,
            "provider_fingerprint": manifest.provider.fingerprint,
            **group,
        },
    )
    sealed_report = seal(
        manifest.owner.hpke_key,
        _padded_json(
            owner_report,
            {
                **owner_report,
                "epoch_accuracy": [_WIDEST_FLOAT] * plan.epochs,
                "final_holdout_accuracy": _WIDEST_FLOAT,
                "confusion_matrix": [[len(y_holdout)] * schema.num_classes] * schema.num_classes,
                "resumed_from_step": plan.total_steps,
            },
        ),
        purpose=purposes.OWNER_REPORT,
        context={"manifest": job.signed.digest},
    )
    pacer.arrive(finished)
    return dataclasses.replace(
        summary,
        model=model.file_bytes,
        receipt=receipt,
        owner_report=sealed_report,
        owner_report_signature=replies.sign_owner_report(
            context.identity, job.signed.digest, sealed_report
        ),
    )


def _fix_rate(
    job: AcceptedJob,
    plan: TrainingPlan,
    declaration: Declaration,
    holdout_records: int,
    exchanges: bool,
) -> Rate | None:
    """The owner's period, or one calibrated on synthetic records; None if not fixed-rate."""
    owner_plan = job.manifest.plan
    if not owner_plan.fixed_rate:
        return None
    if owner_plan.period_ms is not None:
        return Rate.of_period(owner_plan.period_ms)
    return calibrate(
        schema=job.header.schema,
        recipe_name=job.recipe_name,
        recipe_source=job.recipe_source,
        overrides=owner_plan.overrides(),
        plan=plan,
        declaration=declaration,
        holdout_records=holdout_records,
        exchanges=exchanges,
    )


def _clock_checkpoint_every(plan: TrainingPlan, rate: Rate) -> int:
    """Steps between a fixed-rate job's checkpoints: about `CHECKPOINT_SECONDS` of its clock.

    On the clock every step takes one period, so this is fixed by public facts (the
    period, owner-given or calibrated on synthetic records) like the rest of the schedule.
    The sealed checkpoints stay bound to the plan as first fixed: a resumed run may
    calibrate another period and checkpoint at other steps, which changes no weights.
    """
    steps = max(1, round(CHECKPOINT_SECONDS * 1000 / rate.period_ms))
    return min(steps, plan.steps_per_epoch)


def _exchange(
    pacer: Pacer,
    sandbox: Sandbox,
    exchange: ParameterExchange,
    step: int,
    declaration: Declaration,
    units: Rate,
    then: Callable[[], None] | None = None,
) -> None:
    """One exchange on the clock: PARAMS leaves at a boundary, whenever the child gave them.

    `then` runs once the child holds the group's parameters, within the exchange's slots.
    """
    with pacer.slot(units.exchange, sandbox):
        params = exchange.collect(sandbox, declaration)
    with pacer.slot(units.exchange, sandbox):
        exchange.synchronize(sandbox, step, declaration, params)
        if then is not None:
            then()


def _checkpoint_key(context: EnclaveContext, job: AcceptedJob) -> SealingKey | None:
    """The job's secret when the owner released one (any platform); else `sim`'s own."""
    if job.checkpoint_dir is None:
        return None
    purpose = "training-checkpoint"
    if job.job_secret is not None:
        return SealingKey.for_job(job.job_secret, measurement=context.measurement, purpose=purpose)
    if context.platform_name != "sim":
        return None
    return SealingKey(
        state_dir=context.state_dir,
        platform_name=context.platform_name,
        measurement=context.measurement,
        purpose=purpose,
    )


def _check_declaration(job: AcceptedJob, declaration: Declaration) -> None:
    """The recipe must declare what its provider signed and what the owner's plan fixed."""
    if query_policy_sha256(declaration.query_policy) != job.statement.statement.query_policy_sha256:
        raise IntegrityError("the recipe declares a query policy its provider did not sign")
    plan = job.manifest.plan
    for fixed, declared in (
        (plan.epochs, declaration.epochs),
        (plan.batch_size, declaration.batch_size),
    ):
        if fixed is not None and fixed != declared:
            raise IntegrityError("the recipe does not follow the owner's plan")
