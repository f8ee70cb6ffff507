"""`chiron train --local --workers N`: every member of a distributed job on this machine.

The N+1 enclave processes start here; the parameter server hosts the rendezvous store
on 127.0.0.1 and announces its free port, which the owner's flow relays to the workers.
The job is kept in this machine's `group_jobs` folder until it ends: a group that lost
a member, or whose command was killed, continues when the same command runs again.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from chiron.client.distributed.group_jobs import group_job, job_terms
from chiron.client.distributed.owner import DistributedOutcome, run_distributed_training
from chiron.client.sessions import EventHandler, LocalEnclaveSession
from chiron.core.attestation import Policy
from chiron.core.contract import TrainMaterials
from chiron.core.keys import DataKey, Identity
from chiron.core.manifest import DatasetRef, Plan
from chiron.core.recipe_statement import SignedRecipeStatement
from chiron.core.roles import Role

LOOPBACK = "127.0.0.1"


def train_locally(
    *,
    recipe_path: Path,
    recipe_source: bytes,
    dataset_path: Path,
    data_key: DataKey,
    dataset: DatasetRef,
    owner: Identity,
    statement: SignedRecipeStatement,
    plan: Plan,
    policy: Policy,
    state_dir: Path,
    on_event: EventHandler | None = None,
) -> DistributedOutcome:
    """`chiron train --local --workers N`: every member as a process on this machine."""
    terms = job_terms(owner.public, statement, dataset, plan)
    with contextlib.ExitStack() as stack:
        job = stack.enter_context(group_job(state_dir, terms))
        server = stack.enter_context(LocalEnclaveSession(Role.PARAMSERVER, state_dir))
        workers = []
        for rank in range(1, plan.workers + 1):
            materials = TrainMaterials(
                recipe_name=recipe_path.name,
                recipe_source=recipe_source,
                recipe_statement=statement,
                dataset_path=str(dataset_path.resolve()),
                checkpoint_dir=str(job.checkpoint_dir(rank)),
            )
            host_args = {"train": materials.to_wire()}
            workers.append(
                stack.enter_context(
                    LocalEnclaveSession(Role.TRAIN, state_dir, extra_args=host_args)
                )
            )
        return run_distributed_training(
            server,
            workers,
            job_id=job.job_id,
            data_key=data_key,
            dataset=dataset,
            owner=owner,
            statement=statement,
            plan=plan,
            policy=policy,
            state_dir=state_dir,
            store_host=LOOPBACK,
            on_event=on_event,
        )
