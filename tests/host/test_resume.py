"""SIGKILL of a real `chiron serve` mid-job, then `chiron service jobs resume`: same weights.

The job's enclave dies with the service; the job is `interrupted` and its sealed
checkpoints stay. The owner resumes it: a fresh enclave, attested by the owner's client,
a new manifest for the same job, and training continues from the last checkpoint to
exactly the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chiron.client import signed_jobs, targets
from chiron.client.attestation import load_policy, service_sim_roots
from chiron.client.jobs import resume_job
from chiron.client.remote import RemoteJobSession, ServiceClient
from chiron.client.sessions import EventHandler
from chiron.client.training import run_training
from chiron.core.dataset import encrypt_dataset, read_dataset_header_and_digest
from chiron.core.errors import (
    AccessDenied,
    Conflict,
    InputError,
    IntegrityError,
    NotFound,
    ServiceError,
)
from chiron.core.keys import DataKey, Identity
from chiron.core.manifest import DatasetRef, Plan
from chiron.core.recipe_statement import SignedRecipeStatement, make_statement
from chiron.core.schema import DatasetSchema
from chiron.host.accounts import create_account
from chiron.host.config import ServiceConfig
from chiron.host.server import running_service
from chiron.host.service import Service
from e2e.model_access import open_model

from .test_crash import CHIRON, RunningServe

# Small, but slow enough per step that the service can be killed between checkpoints.
SLOW_RECIPE = textwrap.dedent(
    """
    import time

    import torch.nn as nn
    import torch.nn.functional as F

    HYPERPARAMETERS = {"epochs": 4, "batch_size": 4, "lr": 0.01}
    _sleep = time.sleep

    def build_model(schema):
        c, h, w = schema.input_shape
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 16), nn.ReLU(), nn.Linear(16, 3))

    def train_step(model, optimizer, x, y, hp):
        _sleep(0.02)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss
    """
).encode()
SCHEMA = DatasetSchema((1, 8, 8), "uint8", 3)
PLAN = Plan(seed=3)


class _Started(Exception):
    """Raised instead of waiting: the client 'dies' once its job is started."""


class StartOnly(RemoteJobSession):
    """A job session whose client goes away as soon as the job is queued."""

    def wait(self, on_event: EventHandler | None = None) -> dict[str, Any]:
        raise _Started


def _images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=count)
    x = rng.integers(0, 60, size=(count, 1, 8, 8)).astype(np.uint8)
    for i, label in enumerate(y):
        x[i, 0, :, label * 2 : label * 2 + 3] += 180
    return x, y.astype(np.int64)


def _account(state: Path, name: str) -> str:
    completed = subprocess.run(
        [*CHIRON, "service", "account", "create", name, "--role", "owner", "--state", str(state)],
        capture_output=True,
        text=True,
        check=True,
    )
    return completed.stdout.strip()


class Owner:
    """The owner's files and what its client needs to start a job."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.identity = Identity.generate()
        self.key, self.provider_key = root / "owner.key", root / "provider.key"
        self.identity.save(self.key)
        self.provider = Identity.generate()
        self.provider.save(self.provider_key)
        x, y = _images(160, seed=1)
        secret = bytes(range(32))
        self.dataset = root / "train.chd"
        header = encrypt_dataset([(x, y)], self.dataset, secret, schema=SCHEMA, record_count=160)
        _, digest = read_dataset_header_and_digest(self.dataset)
        self.data_key = DataKey(header.dataset_id, secret)
        self.data_key_path = root / "train.key"
        self.data_key.save(self.data_key_path)
        self.ref = DatasetRef(header.dataset_id, digest)
        self.home = root / "owner-home"
        self.policy = load_policy(None, allow_simulation=True)

    def train(self, client: ServiceClient, job_id: str, session: RemoteJobSession, plan: Plan):
        return run_training(
            session,
            job_id=job_id,
            data_key=self.data_key,
            dataset=self.ref,
            owner=self.identity,
            statement=SignedRecipeStatement.from_bytes(client.recipe_statement("slow")),
            plan=plan,
            policy=self.policy,
            state_dir=self.home,
            sim_roots=service_sim_roots(client, self.home, self.policy),
        )

    def start_only(self, client: ServiceClient, job_id: str, plan: Plan = PLAN) -> None:
        with pytest.raises(_Started):
            self.train(client, job_id, StartOnly(client, job_id), plan)

    def resume_command(self, url: str, token: str, job_id: str, out: Path) -> dict[str, Any]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHIRON_")}
        env.update(CHIRON_HOME=str(self.home), CHIRON_TOKEN=token)
        completed = subprocess.run(
            [
                *CHIRON,
                "service",
                "jobs",
                "resume",
                job_id,
                "--url",
                url,
                "--owner",
                str(self.key),
                "--dataset",
                str(self.dataset),
                "--data-key",
                str(self.data_key_path),
                "--out",
                str(out),
                "--allow-simulation",
                "--json",
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert completed.returncode == 0, completed.stderr
        return json.loads(completed.stdout)


def _wait_for_checkpoint(client: ServiceClient, state: Path, job_id: str) -> None:
    sealed = state / "checkpoints" / job_id / "checkpoint.sealed"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not sealed.exists():
        assert client.job(job_id)["state"] in ("queued", "running")
        time.sleep(0.05)
    assert sealed.exists(), "the job never wrote a checkpoint"
    time.sleep(0.3)


@pytest.mark.slow
def test_a_job_killed_with_the_service_resumes_to_the_same_weights(tmp_path):
    state = tmp_path / "service"
    owner = Owner(tmp_path)
    services: list[RunningServe] = []
    try:
        first = RunningServe(state)
        services.append(first)
        alice, bob = _account(state, "alice"), _account(state, "bob")
        operator = (state / "operator.token").read_text().strip()
        with ServiceClient(first.url, operator) as provider:
            statement = make_statement(
                SLOW_RECIPE, name="slow", version="1", provider=owner.provider
            )
            provider.register_recipe(
                "slow", source=SLOW_RECIPE, statement=statement.to_bytes(), input_schema=None
            )
        with ServiceClient(first.url, alice) as client:
            dataset = client.upload_dataset(owner.dataset, progress=False)["id"]
            # The uninterrupted run, through the same service.
            reference = client.create_job(recipe="slow", dataset=dataset)["id"]
            uninterrupted = owner.train(
                client, reference, RemoteJobSession(client, reference, poll_seconds=0.2), PLAN
            )
            assert uninterrupted.report["resumed_from_step"] == 0
            (tmp_path / "reference.chm").write_bytes(uninterrupted.model)
            never_started = client.create_job(recipe="slow", dataset=dataset)["id"]
            job = client.create_job(recipe="slow", dataset=dataset)["id"]
            owner.start_only(client, job)
            _wait_for_checkpoint(client, state, job)
        first.kill()

        second = RunningServe(state)
        services.append(second)
        with ServiceClient(second.url, alice) as client:
            after = client.job(job)
            assert (after["state"], after["reason"]) == ("interrupted", "host_restart")
            assert after["status"] == "interrupted (host_restart)"
            assert 0 < after["step"] < after["total"]
            # Kept for the resume: sealed under the owner's job secret, useless to others.
            assert (state / "checkpoints" / job / "checkpoint.sealed").exists()
            # A job never started has nothing to resume; a finished one has ended.
            assert client.job(never_started)["state"] == "failed"
            for ended in (never_started, reference):
                with pytest.raises(Conflict):
                    client.resume_job(ended)
        with ServiceClient(second.url, bob) as other:
            with pytest.raises(NotFound):
                other.resume_job(job)
        with ServiceClient(second.url, operator) as provider:
            with pytest.raises(AccessDenied):
                provider.resume_job(job)
            assert provider.job(job)["message"] is None
        with ServiceClient(second.url, alice) as client:
            # A fresh enclave; a manifest with another plan is not this job. The owner's
            # client refuses to sign other terms for a job id it signed (its own record),
            # and the host refuses them too, from a client with no record of the job.
            assert client.resume_job(job)["state"] == "created"
            with pytest.raises(IntegrityError, match="another job"):
                owner.start_only(client, job, Plan(seed=4))
            records = owner.home / signed_jobs.FOLDER
            kept = {path.name: path.read_bytes() for path in records.iterdir()}
            shutil.rmtree(records)
            with pytest.raises(InputError, match="job binding"):
                owner.start_only(client, job, Plan(seed=4))
            assert client.job(job)["state"] == "created"
            for name, terms in kept.items():  # the owner's machine again
                (records / name).write_bytes(terms)

        # The owner's command attests the fresh enclave and continues the job.
        summary = owner.resume_command(second.url, alice, job, tmp_path / "resumed.chm")
        assert summary["resumed_from_step"] > 0
        with ServiceClient(second.url, alice) as client:
            assert client.job(job)["state"] == "done"
        assert not (state / "checkpoints" / job).exists()
        weights = [
            open_model(tmp_path / name, owner.key, owner.provider_key).weights
            for name in ("reference.chm", "resumed.chm")
        ]
        assert weights[0] == weights[1]
    finally:
        for running in services:
            running.stop()


def _slow_recipe_and_owner(service: Service, url: str, owner: Owner) -> str:
    """Register the slow recipe on a running service; return a new owner account's token."""
    alice = create_account(service.db, service.pepper, name="alice", role="owner")
    operator = service.operator_token_path.read_text().strip()
    with ServiceClient(url, operator) as provider:
        statement = make_statement(SLOW_RECIPE, name="slow", version="1", provider=owner.provider)
        provider.register_recipe("slow", source=SLOW_RECIPE, statement=statement.to_bytes())
    return alice


def _job_that_lost_its_enclave(service: Service, client: ServiceClient, owner: Owner) -> str:
    """Start a job (its client gone at once), and SIGKILL its enclave after a checkpoint."""
    dataset = client.upload_dataset(owner.dataset, progress=False)["id"]
    job = client.create_job(recipe="slow", dataset=dataset)["id"]
    owner.start_only(client, job)
    _wait_for_checkpoint(client, service.config.state_dir, job)
    enclave = service.jobs._enclaves[job]
    os.kill(enclave._process._process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while client.job(job)["state"] != "interrupted" and time.monotonic() < deadline:
        time.sleep(0.05)
    return job


@pytest.mark.slow
def test_training_again_on_a_service_continues_its_interrupted_job(tmp_path):
    """The same `chiron train --url` run again after its job lost its enclave resumes it."""
    owner = Owner(tmp_path)
    with running_service(ServiceConfig(state_dir=tmp_path / "service")) as (service, url):
        alice = _slow_recipe_and_owner(service, url, owner)
        with ServiceClient(url, alice) as client:
            job = _job_that_lost_its_enclave(service, client, owner)
        with targets.open_target(
            local=False,
            url=url,
            token=alice,
            allow_simulation=True,
            policy_file=None,
            state_dir=owner.home,
        ) as target:
            trained = targets.train(
                target,
                recipe="slow",
                statement_path=None,
                dataset=owner.dataset,
                data_key_path=owner.data_key_path,
                owner_key=owner.key,
                provider=owner.provider.public,
                plan=PLAN,
            )
        assert trained.outcome.manifest.manifest.job_id == job
        assert trained.outcome.report["resumed_from_step"] > 0
        with ServiceClient(url, alice) as client:
            assert [j["state"] for j in client.jobs()] == ["done"]


def test_one_process_at_a_time_runs_a_local_host_and_others_only_look(tmp_path):
    """`--local` jobs: while one process runs the host, another may only list its jobs."""
    with targets.local_host(tmp_path) as host:
        assert host.jobs() == []
        with pytest.raises(ServiceError, match="another chiron command running local jobs"):
            targets.local_host(tmp_path)
        with targets.local_host(tmp_path, view_only=True) as viewer:
            assert viewer.jobs() == []
            with pytest.raises(ServiceError, match="another chiron command running local jobs"):
                viewer.create_job(recipe="slow", dataset="0" * 32)
        assert host.jobs() == []
    with targets.local_host(tmp_path) as host:
        assert host.jobs() == []


@pytest.mark.slow
def test_a_lost_enclave_and_a_lost_client_resume_too(tmp_path):
    """The enclave process dies mid-job: interrupted; a resumed job's client dies: attach."""
    owner = Owner(tmp_path)
    config = ServiceConfig(state_dir=tmp_path / "service")
    with running_service(config) as (service, url):
        alice = _slow_recipe_and_owner(service, url, owner)
        with ServiceClient(url, alice) as client:
            job = _job_that_lost_its_enclave(service, client, owner)
            interrupted = client.job(job)
            assert (interrupted["state"], interrupted["reason"]) == ("interrupted", "enclave_error")
            assert (config.state_dir / "checkpoints" / job / "checkpoint.sealed").exists()
            # Waiting on an interrupted job says how to continue it.
            with pytest.raises(Conflict, match="service jobs resume"):
                client.wait_job(job)

            # The owner resumes, and its client dies as soon as the job is started again.
            client.resume_job(job)
            owner.start_only(client, job)
            # A new client run of the same command waits for it and checks its result.
            outcome = resume_job(
                client,
                job,
                owner=owner.identity,
                dataset=owner.dataset,
                data_key_path=owner.data_key_path,
                policy=owner.policy,
                state_dir=owner.home,
                sim_roots=service_sim_roots(client, owner.home, owner.policy),
                poll_seconds=0.2,
            )
            assert outcome.report["resumed_from_step"] > 0
            assert client.job(job)["state"] == "done"
            # Done means ended: it does not resume again.
            with pytest.raises(Conflict):
                client.resume_job(job)
