"""`chiron train --local`: its enclave started first, its job awaited without polling.

The command starts its training enclave before it loads the policy, reads the recipe,
opens its host and uploads (the enclave measures itself and its sandbox imports torch
meanwhile); the job takes that enclave, and a command that stops before leaves none
behind. The job runs
on a thread of the same process (`LocalHost`): a record read there is a database query
taking CPU from the training it waits for, so the runner says when a job ended
(`StateChanges`) and the waiting client reads the record then.
"""

from __future__ import annotations

import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from tests.e2e.conftest import sign_recipe

from chiron.client import targets
from chiron.client.sessions import LocalEnclaveSession
from chiron.core.crypto import random_key
from chiron.core.dataset import encrypt_dataset
from chiron.core.errors import InputError, IntegrityError, UsageError
from chiron.core.keys import DataKey, Identity, load_public_identity
from chiron.core.manifest import Plan
from chiron.core.schema import DatasetSchema
from chiron.host import local
from chiron.host.local import LocalHost
from chiron.host.state_changes import StateChanges

RECIPE = """
import time
import torch.nn as nn

HYPERPARAMETERS = {"epochs": 2, "batch_size": 16, "lr": 0.01}

def build_model(schema):
    c, h, w = schema.input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, schema.num_classes))

def train_step(model, optimizer, x, y, hp):
    time.sleep(0.02)  # long enough for many of the old 50 ms looks
    optimizer.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
"""


def test_a_wait_returns_on_a_change_after_what_it_saw_and_not_before():
    changes = StateChanges()
    seen = changes.seen()
    changes.note()
    changes.wait(seen, timeout=600)  # noted after `seen` was read: returns at once
    late = changes.seen()
    woke = threading.Event()

    def waiter() -> None:
        changes.wait(late, timeout=600)
        woke.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert not woke.wait(0.2)
    changes.note()
    thread.join(timeout=60)
    assert woke.is_set()


def _inputs(tmp_path: Path) -> Path:
    """Keys, a small encrypted data set and the signed recipe; returns the recipe."""
    for name in ("owner", "provider"):
        Identity.generate().save(tmp_path / f"{name}.key")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(400, 1, 8, 8)).astype(np.uint8)
    y = rng.integers(0, 3, size=400).astype(np.int64)
    key = random_key()
    schema = DatasetSchema((1, 8, 8), "uint8", 3)
    header = encrypt_dataset([(x, y)], tmp_path / "d.chd", key, schema=schema, record_count=400)
    DataKey(header.dataset_id, key).save(tmp_path / "d.key")
    recipe = tmp_path / "slow.py"
    recipe.write_text(textwrap.dedent(RECIPE))
    sign_recipe(recipe, tmp_path / "provider.key")
    return recipe


def _train(
    tmp_path: Path, recipe: Path, provider: Path, *, train_ahead: bool = False
) -> targets.Trained:
    with _local_target(tmp_path, train_ahead=train_ahead) as target:
        return targets.train(
            target,
            recipe=str(recipe),
            statement_path=None,
            dataset=tmp_path / "d.chd",
            data_key_path=tmp_path / "d.key",
            owner_key=tmp_path / "owner.key",
            provider=load_public_identity(provider),
            plan=Plan(seed=1),
        )


def _local_target(
    tmp_path: Path, *, train_ahead: bool, policy_file: Path | None = None
) -> targets.Target:
    return targets.open_target(
        local=True, url=None, token=None, allow_simulation=True, policy_file=policy_file,
        state_dir=tmp_path / "state", train_ahead=train_ahead,
    )  # fmt: skip


def _enclaves() -> list[psutil.Process]:
    return [
        child
        for child in psutil.Process().children(recursive=True)
        if "chiron.enclave.main" in " ".join(child.cmdline())
    ]


def test_a_local_train_starts_one_enclave_first_and_its_job_takes_it(tmp_path, monkeypatch):
    recipe = _inputs(tmp_path)
    started: list[bool] = []
    session = targets.LocalEnclaveSession

    def counted(role: str, state_dir: Path, **options: Any) -> LocalEnclaveSession:
        started.append(bool(options.get("sandbox_at_start")))
        return session(role, state_dir, **options)

    monkeypatch.setattr(targets, "LocalEnclaveSession", counted)
    trained = _train(tmp_path, recipe, tmp_path / "provider.key.pub")
    assert trained.outcome.report["resumed_from_step"] == 0
    assert started == [True]  # the one started as the command began; no second one
    assert _enclaves() == []


def test_a_target_that_trains_ahead_starts_the_enclave_before_it_loads_the_policy(
    tmp_path, monkeypatch
):
    recipe = _inputs(tmp_path)
    started: list[bool] = []
    running_when_policy_loaded: list[int] = []
    session, load_policy = targets.LocalEnclaveSession, targets.load_policy

    def counted(role: str, state_dir: Path, **options: Any) -> LocalEnclaveSession:
        started.append(bool(options.get("sandbox_at_start")))
        return session(role, state_dir, **options)

    def observed(*args: Any, **options: Any) -> Any:
        running_when_policy_loaded.append(len(_enclaves()))
        return load_policy(*args, **options)

    monkeypatch.setattr(targets, "LocalEnclaveSession", counted)
    monkeypatch.setattr(targets, "load_policy", observed)
    trained = _train(tmp_path, recipe, tmp_path / "provider.key.pub", train_ahead=True)
    assert trained.outcome.report["resumed_from_step"] == 0
    assert running_when_policy_loaded == [1]
    assert started == [True]  # the job took the one started ahead; no second one
    assert _enclaves() == []


def test_a_policy_that_does_not_load_stops_the_enclave_started_ahead(tmp_path, monkeypatch):
    (tmp_path / "policy.toml").write_text("no_such_key = 1\n")
    running_when_policy_loaded: list[int] = []
    load_policy = targets.load_policy

    def observed(*args: Any, **options: Any) -> Any:
        running_when_policy_loaded.append(len(_enclaves()))
        return load_policy(*args, **options)

    monkeypatch.setattr(targets, "load_policy", observed)
    with pytest.raises(InputError):
        _local_target(tmp_path, train_ahead=True, policy_file=tmp_path / "policy.toml")
    assert running_when_policy_loaded == [1]  # it had been started...
    assert _enclaves() == []  # ...and was stopped with the failure


def test_a_group_stops_an_enclave_started_ahead_for_a_single_job(tmp_path):
    target = _local_target(tmp_path, train_ahead=True)
    assert len(_enclaves()) == 1
    with target:
        with pytest.raises(InputError):  # no such key: the group stops before it starts
            targets.train(
                target, recipe=str(tmp_path / "r.py"), statement_path=None,
                dataset=tmp_path / "d.chd", data_key_path=tmp_path / "d.key",
                owner_key=tmp_path / "owner.key", provider=None,
                plan=Plan(seed=1, workers=2, exchange_every=1),
            )  # fmt: skip
        assert _enclaves() == []  # before the target closes


@pytest.mark.parametrize(("workers", "ahead"), [("1", True), ("2", False)])
def test_chiron_train_local_starts_its_enclave_ahead_for_a_single_job_only(
    tmp_path, monkeypatch, workers, ahead
):
    from chiron.client import cli_train
    from chiron.client.cli import main

    asked: list[bool] = []

    def recorded(**options: Any) -> targets.Target:
        asked.append(options["train_ahead"])
        raise UsageError("stopped here")

    monkeypatch.setattr(cli_train, "open_target", recorded)
    monkeypatch.setattr(
        sys, "argv",
        ["chiron", "train", "--local", "--recipe", "r.py", "--dataset", "d.chd",
         "--data-key", "d.key", "--owner", "o.key", "--out", str(tmp_path / "m.chm"),
         "--workers", workers],
    )  # fmt: skip
    with pytest.raises(SystemExit):
        main()
    assert asked == [ahead]


def test_an_enclave_started_ahead_and_never_taken_is_closed_with_the_target(tmp_path):
    target = _local_target(tmp_path, train_ahead=True)
    assert len(_enclaves()) == 1
    target.close()
    assert _enclaves() == []
    assert target.take_training_enclave() is None


def test_a_local_train_that_stops_early_leaves_no_enclave(tmp_path):
    recipe = _inputs(tmp_path)
    Identity.generate().save(tmp_path / "someone.key")
    # The enclave is started before the recipe is read; the recipe's provider is then
    # not the one the owner named, and the command stops.
    with pytest.raises(IntegrityError, match="signed by provider"):
        _train(tmp_path, recipe, tmp_path / "someone.key.pub")
    assert _enclaves() == []


def test_a_local_job_is_awaited_with_a_few_reads_of_its_record(tmp_path, monkeypatch):
    recipe = _inputs(tmp_path)

    # Were the end not said, the wait would last the whole (very long) fallback.
    monkeypatch.setattr(local, "POLL_SECONDS", 3600.0)
    reads: list[str] = []
    waiting = threading.Event()
    job, wait_job = LocalHost.job, LocalHost.wait_job

    def counted(self: LocalHost, job_id: str) -> dict[str, object]:
        if waiting.is_set():
            reads.append(job_id)
        return job(self, job_id)

    def wait(self: LocalHost, job_id: str, **options: object) -> dict[str, object]:
        waiting.set()
        try:
            return wait_job(self, job_id, **{**options, "poll_seconds": 3600.0})
        finally:
            waiting.clear()

    monkeypatch.setattr(LocalHost, "job", counted)
    monkeypatch.setattr(LocalHost, "wait_job", wait)
    outcome: list[object] = []

    def train() -> None:
        outcome.append(_train(tmp_path, recipe, tmp_path / "provider.key.pub"))

    runner = threading.Thread(target=train, daemon=True)
    runner.start()
    runner.join(timeout=120)
    assert not runner.is_alive(), "the wait did not end with the job"
    (trained,) = outcome
    steps = trained.outcome.report["steps"]  # type: ignore[attr-defined]
    assert steps >= 40  # 40 steps of 20 ms: 16 looks, at the old rate
    # One look before the job ends, one after it ended.
    assert len(reads) <= 2, reads
