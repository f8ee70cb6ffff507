"""The TRAIN call: accept the owner's job, then train alone or as one worker of a group.

Kept apart from `trainer` (the training loop) and `distributed.worker` (a member of a
group, built on that loop), so that the loop never imports its own caller: the layers
run train_call → distributed → trainer, and the import linter holds them so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chiron.core.contract import TrainRequest, TrainResult
from chiron.enclave.accepted_job import accept_job
from chiron.enclave.context import EnclaveContext
from chiron.enclave.trainer import train


def handle_train(
    context: EnclaveContext, request: TrainRequest, emit: Callable[[dict[str, Any]], None]
) -> TrainResult:
    job = accept_job(context, request)
    if request.authorization.group is not None:
        # One training enclave of a distributed job: torch (for gloo) loads only here.
        from chiron.enclave.distributed.worker import train_worker

        return train_worker(context, job, request, emit)
    return train(context, job, emit)
