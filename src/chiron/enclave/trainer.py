"""The training run of an accepted job: decrypt, confine, train on a fixed schedule, escrow.

Everything that touches plaintext data happens here or in the sandbox child this
module drives. What leaves is fixed by construction: progress as step counts on a
schedule fixed before the recipe saw data, sealed checkpoints of a size declared
before data (`checkpoints`), and at the end an encrypted model, a signed receipt and an
owner report sealed to the owner. A recipe failure leaves as a reason class only. The
job was accepted in `accepted_job`; a group's worker joins through `parameter_exchange`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np

from chiron.core import purposes, replies
from chiron.core.contract import TrainResult
from chiron.core.crypto import seal
from chiron.core.errors import IntegrityError
from chiron.core.query_protocol import confusion_matrix, query_policy_sha256
from chiron.core.recipe_protocol import FromChild, ToChild, TrainingPlan, encode_json
from chiron.enclave import escrow
from chiron.enclave.accepted_job import AcceptedJob
from chiron.enclave.checkpoints import Checkpoints, Progress, checkpoint_key
from chiron.enclave.context import EnclaveContext
from chiron.enclave.fixed_rate import Pacer, Rate, calibrate
from chiron.enclave.padding import WIDEST_FLOAT, padded_json
from chiron.enclave.parameter_exchange import ParameterExchange
from chiron.enclave.recipe_session import Declaration, predict_logits, receive_declaration
from chiron.enclave.sandbox import Sandbox
from chiron.enclave.training_data import calibration_plan, open_training_data

# A free-running job checkpoints every this many steps and at every epoch end: with a
# checkpoint costing a few tens of milliseconds (docs/benchmarks.md, "Checkpoints"), about
# every minute for ResNet-20 on the reference machine, every 12 s for the CNN. A fixed-rate
# job checkpoints on its clock instead, about every CHECKPOINT_SECONDS of it.
CHECKPOINT_EVERY_STEPS = 200
CHECKPOINT_SECONDS = 60


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
    seed = manifest.plan.seed
    emit({"event": "state", "state": "running"})
    # The data closes before the sandbox: a streamed data set's loader writes into the
    # child's shared file until then.
    with context.recipe_sandbox() as sandbox, open_training_data(job, exchange) as data:
        header = data.header
        schema = header.schema
        x_holdout, y_holdout = data.holdout()
        declaration = receive_declaration(
            sandbox,
            mode="train",
            schema=schema,
            recipe_name=job.recipe_name,
            recipe_source=job.recipe_source,
            overrides=manifest.plan.overrides(),
        )
        _check_declaration(job, declaration)
        num_train = data.num_train(declaration.batch_size)
        plan = TrainingPlan.fixed(
            num_train=num_train,
            batch_size=declaration.batch_size,
            epochs=declaration.epochs,
            seed=seed,
            checkpoint_every=min(CHECKPOINT_EVERY_STEPS, -(-num_train // declaration.batch_size)),
            stream=data.stream_layout(declaration.batch_size),
        )
        checkpoints = Checkpoints(
            job.checkpoint_dir,
            checkpoint_key(context, job),
            binding={
                "job": manifest.job_binding(),
                "plan": plan.to_dict(),
                "checkpoint_nbytes": declaration.checkpoint_nbytes,
                **({"worker": exchange.rank} if exchange is not None else {}),
            },
            keep_previous=exchange is not None,
        )
        held = checkpoints.load()

        # The rate is fixed (and, in a group, agreed) before the recipe sees any data;
        # the clock starts as the records go in.
        rate = _fix_rate(job, plan, declaration, len(y_holdout), exchange is not None)
        if exchange is not None:
            start = exchange.begin(plan, declaration, rate, tuple(p.step for p, _ in held))
            rate = start.rate
            # Every worker resumes from the step the group named, which it holds.
            held = [checkpoint for checkpoint in held if checkpoint[0].step == start.resume_step]
            if start.resume_step and not held:
                raise IntegrityError("the group resumes from a step this worker did not checkpoint")
        elif rate is not None:
            plan = dataclasses.replace(plan, checkpoint_every=_clock_checkpoint_every(plan, rate))
        resumed = held[0] if held else None
        progress = resumed[0] if resumed else Progress(0, [])
        resumed_from_step = progress.step
        pacer.rate = rate
        pacer.start()
        units = rate or Rate(period_ms=1)
        total = plan.total_steps

        def target_after(step: int) -> int:
            """Where the segment that starts at `step` stops (fixed by the plan)."""
            epoch_end = (step // plan.steps_per_epoch + 1) * plan.steps_per_epoch
            if exchange is None:
                next_checkpoint = (step // plan.checkpoint_every + 1) * plan.checkpoint_every
                return min(epoch_end, next_checkpoint, total)
            return min(epoch_end, exchange.next_exchange(step), total)

        def checkpoint_due(step: int) -> bool:
            """Whether the segment that ends at `step` ends in a checkpoint.

            A single enclave checkpoints at every segment's end; a group's worker just
            before the exchanges the schedule names, so that all of them hold the same
            steps and resume by holding that exchange again.
            """
            return exchange.checkpoint_due(step) if exchange is not None else True

        def start_segment(step: int) -> None:
            """The child's next RUN, sent as soon as it is idle: it may run ahead of the clock."""
            if step < total:
                target = target_after(step)
                command = {"until_step": target, "checkpoint": checkpoint_due(target)}
                sandbox.send(ToChild.RUN, encode_json(command))

        with pacer.slot(units.load, sandbox):
            sandbox.send(ToChild.PLAN, encode_json(plan.to_dict()))
            data.share(sandbox, plan, progress.step)
            sandbox.expect(FromChild.READY, size=0)
            if resumed:
                sandbox.send(ToChild.STATE, resumed[1])
            if exchange is None:
                start_segment(progress.step)
        if exchange is not None:
            # The group's first exchange: round 0, or again the one a resumed group's
            # checkpoints were sealed just before.
            _exchange(
                pacer,
                sandbox,
                exchange,
                progress.step,
                declaration,
                units,
                functools.partial(start_segment, progress.step),
            )

        emit({"event": "progress", "step": progress.step, "total": total})
        final_logits: np.ndarray | None = None
        report_every = max(1, total // 100)
        while progress.step < total:
            target = target_after(progress.step)
            # One slot per step, each ending on its own boundary.
            for step in range(progress.step + 1, target + 1):
                with pacer.slot(1, sandbox):
                    data.before_step(step - 1)
                    sandbox.expect(FromChild.TICK, size=0)
                # At the slot's end, not when the TICK came: the reads of the next window
                # the host can watch start on the job's clock (`streamed_data`).
                data.steps_done(step)
                if step % report_every == 0 or step == target:
                    emit({"event": "progress", "step": step, "total": total})
            progress.step = target
            evaluating = target % plan.steps_per_epoch == 0
            exchanging = exchange is not None and exchange.due(target)
            checkpointing = checkpoint_due(target)
            # The last piece of the child's work in this segment starts the next one.
            if checkpointing:
                with pacer.slot(units.checkpoint, sandbox):
                    child_state = sandbox.expect(
                        FromChild.CHECKPOINT, size=declaration.checkpoint_nbytes
                    )
                    if not (exchanging or evaluating):
                        start_segment(target)
                    if exchanging:
                        # A worker's last checkpoint is on disk before its parameters
                        # for the next one leave: no worker can then seal a checkpoint
                        # the others are more than one behind (`Checkpoints`).
                        checkpoints.wait()
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
                if target == total:
                    # The last epoch's predictions are the final model's: no step comes
                    # after them, and FINISH only reads the weights out.
                    final_logits = logits
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
            if final_logits is None:  # resumed after the last epoch's evaluation
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
        padded_json(
            owner_report,
            {
                **owner_report,
                "epoch_accuracy": [WIDEST_FLOAT] * plan.epochs,
                "final_holdout_accuracy": WIDEST_FLOAT,
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
        plan=calibration_plan(plan),
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
