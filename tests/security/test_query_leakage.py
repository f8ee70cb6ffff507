"""Issue 12: queries and evaluations leak only what the provider's policy allows.

Two adversaries meet at the query enclave. The owner wants to learn more about the
model than QUERY_POLICY grants (replay a request for a second answer, spend one budget
twice through two enclaves, evaluate on a handful of records to get per-record
answers). The provider's recipe wants to signal something about the owner's data
(answer a replayed request differently, steer an accuracy's digits so that the length
of a sealed report says something to the host, which sees every sealed size).

Every test runs REAL enclave processes: query enclaves over a model escrowed here as the
training enclave escrows one (as in tests/security/test_hostile_query_host.py), and
training enclaves through the owner's own client (`client.training.run_training`).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.security import escrowed

from chiron.client.attestation import load_policy
from chiron.client.inputs import load_query_inputs
from chiron.client.querying import UnlockedModel, evaluate, query, unlock_model
from chiron.client.sessions import LocalEnclaveSession
from chiron.client.training import local_job_id, run_training
from chiron.core import dataset as container
from chiron.core import purposes, query_protocol
from chiron.core.contract import TrainMaterials
from chiron.core.crypto import random_key, seal
from chiron.core.errors import ChironError, InputError, IntegrityError
from chiron.core.keys import DataKey, Identity
from chiron.core.manifest import DatasetRef, Plan
from chiron.core.recipe_protocol import encode_json
from chiron.core.recipe_statement import make_statement
from chiron.core.schema import DatasetSchema

SCHEMA = DatasetSchema((1, 4, 4), "uint8", 3)

_BUILD = """
import time

import torch
import torch.nn as nn

HYPERPARAMETERS = {"epochs": 1, "batch_size": 8, "lr": 0.01}

def build_model(schema):
    c, h, w = schema.input_shape
    return nn.Sequential(
        nn.Flatten(), nn.Linear(c * h * w, 8), nn.ReLU(), nn.Linear(8, schema.num_classes)
    )
"""
# An honest recipe whose predict takes a moment: it widens the window between a budget
# check and its write, where two enclaves could both spend the last unit.
SLOW_RECIPE = (
    _BUILD
    + """
def predict(model, x):
    time.sleep(0.05)
    return model(x)
"""
).encode()
# A recipe whose predict fails on an input whose first pixel is 255.
FAILING_RECIPE = (
    _BUILD
    + """
def predict(model, x):
    if bool((x[:, 0, 0, 0] == 1.0).any()):
        raise RuntimeError("no")
    return model(x)
"""
).encode()
# A malicious recipe: every call to predict answers "class k" for everything, k moving
# on with each call. A replayed evaluation would show the owner a second, different
# confusion matrix of the same records: a channel the policy never granted.
SHIFTING_RECIPE = (
    _BUILD
    + """
CALLS = [0]

def predict(model, x):
    CALLS[0] += 1
    logits = torch.zeros((x.shape[0], 3))
    logits[:, CALLS[0] % 3] = 1.0
    return logits
"""
).encode()


def escrow(
    owner: Identity, provider: Identity, recipe: bytes, policy: dict[str, Any], model_id: str
) -> bytes:
    """A model file of `recipe` under `policy`, as the training enclave writes one."""
    return escrowed.escrow(
        owner,
        provider,
        escrowed.probe_weights(recipe, SCHEMA),
        model_id,
        recipe=recipe,
        query_policy=policy,
        schema=SCHEMA,
    )


class Relay:
    """The host between the owner's client and one real query enclave: records calls."""

    def __init__(self, state: Path) -> None:
        self.enclave = LocalEnclaveSession("query", state)
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        self.sent: list[tuple[str, dict[str, Any]]] = []  # answered or not

    def evidence(self, nonce: bytes) -> bytes:
        return self.enclave.evidence(nonce)

    def call(self, name: str, args: dict[str, Any], on_event: Any = None) -> dict[str, Any]:
        self.sent.append((name, dict(args)))
        result = self.enclave.call(name, args, on_event)
        self.calls.append((name, dict(args), result))
        return result

    def recorded(self, name: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return [(args, result) for call, args, result in self.calls if call == name]

    def close(self) -> None:
        self.enclave.close()


@dataclass
class Model:
    root: Path
    state: Path
    owner: Identity
    provider: Identity
    file: bytes
    model_id: str

    def unlock(self, relay: Relay) -> UnlockedModel:
        return unlock_model(
            relay,
            model=self.file,
            owner=self.owner,
            provider=self.provider,
            policy=load_policy(None, allow_simulation=True),
            state_dir=self.state,
        )

    def labelled_set(self, count: int, seed: int = 1) -> tuple[str, DataKey]:
        """An encrypted labelled set of the owner's, as `chiron dataset encrypt` writes one."""
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 256, size=(count, *SCHEMA.input_shape), dtype=np.uint8)
        y = rng.integers(0, 3, size=count)
        path, key = self.root / f"eval-{count}-{seed}.chd", random_key()
        header = container.encrypt_dataset([(x, y)], path, key, schema=SCHEMA, record_count=count)
        return str(path), DataKey(header.dataset_id, key)


@pytest.fixture
def make_model(tmp_path: Path) -> Iterator[Any]:
    relays: list[Relay] = []

    def make(recipe: bytes, policy: dict[str, Any]) -> tuple[Model, Any]:
        owner, provider, model_id = Identity.generate(), Identity.generate(), os.urandom(16).hex()
        model = Model(
            tmp_path,
            tmp_path / "enclave-state",
            owner,
            provider,
            escrow(owner, provider, recipe, policy, model_id),
            model_id,
        )

        def relay() -> Relay:
            relays.append(Relay(model.state))
            return relays[-1]

        return model, relay

    try:
        yield make
    finally:
        for relay in relays:
            relay.close()


def inputs(count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, *SCHEMA.input_shape), dtype=np.uint8)


# -- replays: one answer, then a refusal, in this enclave and in any other ---------------


def test_a_replayed_evaluation_gets_one_answer_then_a_refusal_in_every_enclave(make_model):
    model, new_relay = make_model(SHIFTING_RECIPE, {"min_evaluation_records": 100})
    first = new_relay()
    unlocked = model.unlock(first)
    dataset, key = model.labelled_set(120)
    report = evaluate(unlocked, dataset_path=dataset, data_key=key)
    assert report["records"] == 120
    ((recorded, _),) = first.recorded("evaluate")

    # The same signed request again, to the same enclave: refused before any work.
    with pytest.raises(InputError, match="replayed"):
        first.enclave.call("evaluate", recorded)
    # The recipe does vary: a fresh evaluation of the same records gets another matrix.
    # A replay that had gone through would have shown the owner exactly that.
    again = evaluate(unlocked, dataset_path=dataset, data_key=key)
    assert again["confusion_matrix"] != report["confusion_matrix"]
    assert again["records"] == 120

    # To a second query enclave of the same model, unlocked by both parties: refused
    # too, from the sealed ledger, before the recipe could answer it differently.
    second = new_relay()
    model.unlock(second)
    with pytest.raises(InputError, match="replayed"):
        second.enclave.call("evaluate", recorded)
    # And after the first enclave is gone, to a third one: the ledger is sealed state.
    first.close()
    third = new_relay()
    model.unlock(third)
    with pytest.raises(InputError, match="replayed"):
        third.enclave.call("evaluate", recorded)


def test_a_replayed_query_is_refused_by_another_enclave_of_the_model(make_model):
    model, new_relay = make_model(SHIFTING_RECIPE, {"budget": 100})
    first = new_relay()
    answers, left = query(model.unlock(first), inputs(3))
    assert len(answers) == 3 and left == 97
    ((recorded, _),) = first.recorded("query")
    second = new_relay()
    unlocked = model.unlock(second)
    with pytest.raises(InputError, match="replayed"):
        second.enclave.call("query", recorded)
    # Nothing was charged for the refused replay.
    assert query(unlocked, inputs(1))[1] == 96


# -- the evaluation report: fixed size, charged, a minimum size --------------------------


def test_the_sealed_evaluation_report_has_one_size(make_model):
    model, new_relay = make_model(SHIFTING_RECIPE, {"min_evaluation_records": 1})
    relay = new_relay()
    unlocked = model.unlock(relay)
    reports = [
        evaluate(unlocked, dataset_path=dataset, data_key=key)
        for dataset, key in (model.labelled_set(1), model.labelled_set(3000, seed=2))
    ]
    sizes = {len(result["sealed_report"]) for _, result in relay.recorded("evaluate")}
    # Whatever the records, their number, or what the recipe answered: one size, that of
    # the fixed header and the 3 x 3 matrix (plus the seal's constant overhead).
    assert len(sizes) == 1
    (size,) = sizes
    assert size - query_protocol.evaluation_report_size(3) == len(
        seal(model.owner.public.hpke_key, b"", purpose=purposes.EVALUATION_REPORT, context={})
    )
    assert [r["records"] for r in reports] == [1, 3000]
    assert sum(map(sum, reports[1]["confusion_matrix"])) == 3000
    per_class = reports[1]["per_class"]
    assert sum(row["support"] for row in per_class) == 3000
    assert reports[1]["accuracy"] == pytest.approx(
        np.trace(np.array(reports[1]["confusion_matrix"])) / 3000
    )


def test_an_evaluation_needs_the_minimum_and_is_charged_by_its_records(make_model):
    model, new_relay = make_model(SLOW_RECIPE, {"budget": 300, "min_evaluation_records": 100})
    unlocked = model.unlock(new_relay())
    small, small_key = model.labelled_set(99)
    with pytest.raises(InputError, match="at least 100 records"):
        evaluate(unlocked, dataset_path=small, data_key=small_key)
    dataset, key = model.labelled_set(150)
    report = evaluate(unlocked, dataset_path=dataset, data_key=key)
    assert report["budget_left"] == 150  # the refused evaluation cost nothing
    bigger, bigger_key = model.labelled_set(151, seed=3)
    with pytest.raises(InputError, match="budget exhausted: 150 of 300 left"):
        evaluate(unlocked, dataset_path=bigger, data_key=bigger_key)
    # Queries and evaluations draw on the same budget.
    assert query(unlocked, inputs(150))[1] == 0
    with pytest.raises(InputError, match="budget exhausted"):
        query(unlocked, inputs(1))


def test_the_minimum_evaluation_size_is_part_of_the_signed_policy():
    default = query_protocol.normalize_query_policy({})
    assert default["min_evaluation_records"] == query_protocol.DEFAULT_MIN_EVALUATION_RECORDS
    assert default["min_evaluation_records"] == 100
    stricter = query_protocol.normalize_query_policy({"min_evaluation_records": 1000})
    assert query_protocol.query_policy_sha256(default) != query_protocol.query_policy_sha256(
        stricter
    )
    for bad in (0, -1, True, 1.5, "100"):
        with pytest.raises(ValueError):
            query_protocol.normalize_query_policy({"min_evaluation_records": bad})
    # The provider signs it with the rest of the policy, read from the recipe file.
    provider = Identity.generate()
    signed = make_statement(
        b"QUERY_POLICY = {'min_evaluation_records': 1000}\n",
        name="tiny",
        version="1",
        provider=provider,
    )
    assert signed.statement.query_policy_sha256 == query_protocol.query_policy_sha256(stricter)


def test_a_malformed_or_foreign_evaluation_report_is_refused():
    model_id, dataset_id = os.urandom(16).hex(), os.urandom(16).hex()
    data = query_protocol.encode_evaluation_report(
        model_id, dataset_id, np.arange(9).reshape(3, 3), None
    )
    decoded = query_protocol.decode_evaluation_report(
        data, model_id=model_id, dataset_id=dataset_id, schema=SCHEMA
    )
    assert decoded["records"] == 36 and decoded["budget_left"] is None
    with pytest.raises(IntegrityError, match="malformed"):
        query_protocol.decode_evaluation_report(
            data + b" ", model_id=model_id, dataset_id=dataset_id, schema=SCHEMA
        )
    with pytest.raises(IntegrityError, match="another model or dataset"):
        query_protocol.decode_evaluation_report(
            data, model_id=model_id, dataset_id=os.urandom(16).hex(), schema=SCHEMA
        )


# -- the budget is exact under concurrency -----------------------------------------------


def test_several_enclaves_spend_a_budget_of_n_exactly_once(make_model):
    budget, enclaves, attempts = 12, 4, 6
    model, new_relay = make_model(SLOW_RECIPE, {"budget": budget})
    sessions = [model.unlock(new_relay()) for _ in range(enclaves)]
    start = threading.Barrier(enclaves)
    answered: list[int | None] = []
    refused: list[str] = []
    lock = threading.Lock()

    def spend(unlocked: UnlockedModel) -> None:
        start.wait()
        for _ in range(attempts):
            try:
                answers, left = query(unlocked, inputs(1))
            except InputError as error:
                with lock:
                    refused.append(str(error))
                continue
            assert len(answers) == 1
            with lock:
                answered.append(left)

    threads = [threading.Thread(target=spend, args=(s,)) for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answered) == budget
    assert len(refused) == enclaves * attempts - budget
    assert all("budget exhausted" in message for message in refused)
    # Every answer was given on its own unit: the budgets left are all different.
    assert sorted(answered) == list(range(budget))


def test_a_failed_prediction_refunds_its_units_but_not_its_request_id(make_model):
    model, new_relay = make_model(FAILING_RECIPE, {"budget": 10})
    first = new_relay()
    unlocked = model.unlock(first)
    poisoned = inputs(3)
    poisoned[0, 0, 0, 0] = 255
    with pytest.raises(ChironError):
        query(unlocked, poisoned)
    # The units reserved for the failed batch came back: another enclave of the model
    # has all 10 left before this query of 2.
    second = new_relay()
    again = model.unlock(second)
    clean = inputs(2)
    clean[:, 0, 0, 0] = 0
    assert query(again, clean)[1] == 8
    # The failed request's id is spent all the same.
    (recorded,) = [args for name, args in first.sent if name == "query"]
    with pytest.raises(InputError, match="replayed"):
        second.enclave.call("query", recorded)


# -- the sealed ledger: one record size, refused when tampered with --------------------


def _ledger(model: Model) -> Path:
    return model.state / "query-budget" / f"{model.model_id}.sealed"


def test_the_ledger_grows_by_one_record_of_one_size_per_charged_query(make_model):
    model, new_relay = make_model(SHIFTING_RECIPE, {"budget": 1000})
    unlocked = model.unlock(new_relay())
    sizes = []
    for count in (1, 1, 100, 7):  # the first query also opens the channel
        query(unlocked, inputs(count))
        sizes.append(_ledger(model).stat().st_size)
    # The host sees that a query was charged (it relayed it), never how many units.
    steps = {b - a for a, b in itertools.pairwise(sizes)}
    assert len(steps) == 1 and steps.pop() > 0
    assert sizes[0] == 2 * (sizes[1] - sizes[0])


@pytest.mark.parametrize("tamper", ["cut_short", "replaced", "record_edited"])
def test_a_tampered_ledger_is_refused(make_model, tamper):
    model, new_relay = make_model(SHIFTING_RECIPE, {"budget": 100})
    unlocked = model.unlock(new_relay())
    for _ in range(3):
        query(unlocked, inputs(2))
    path = _ledger(model)
    data = path.read_bytes()
    record = len(data) // 4  # the opening and three charges
    if tamper == "cut_short":
        path.write_bytes(data[: 2 * record])
    elif tamper == "replaced":
        copy = path.with_suffix(".copy")
        copy.write_bytes(data)
        os.replace(copy, path)
    else:
        edited = bytearray(data)
        edited[2 * record - 1] ^= 1
        path.write_bytes(bytes(edited))
    if tamper != "record_edited":
        # Rolled back or swapped under a running enclave, which knows better: it
        # refuses to go on rather than forget what it knows.
        with pytest.raises(IntegrityError, match="replaced or rolled back"):
            query(unlocked, inputs(1))
    else:
        # The running enclave read that record long ago; one reading the file from the
        # start refuses it.
        assert query(unlocked, inputs(1))[1] == 100 - 7
        with pytest.raises(IntegrityError, match="sealed state"):
            query(model.unlock(new_relay()), inputs(1))


# -- bare grayscale inputs ----------------------------------------------------------------


def test_bare_grayscale_inputs_are_accepted_and_a_wrong_shape_is_one_line(make_model, tmp_path):
    bare = inputs(5)[:, 0]  # (5, 4, 4)

    # The owner's client and loader agree: (N, H, W) is N images; the enclave reads the
    # records the client sealed as the model's input shape.
    sent = query_protocol.encode_query_inputs(bare, SCHEMA)
    assert query_protocol.decode_query_inputs(sent, SCHEMA).shape == (5, 1, 4, 4)
    # The enclave checks what it decrypted all the same: whole records, 1 to 1024.
    for bad, words in ((sent[:-1], "whole number"), (b"", "empty"), (bytes(16 * 1025), "at most")):
        with pytest.raises(InputError, match=words):
            query_protocol.decode_query_inputs(bad, SCHEMA)
    np.save(tmp_path / "bare.npy", bare)
    assert load_query_inputs(tmp_path / "bare.npy", SCHEMA).shape == (5, 1, 4, 4)
    np.savez(tmp_path / "bare.npz", x=bare)
    assert load_query_inputs(tmp_path / "bare.npz", SCHEMA).shape == (5, 1, 4, 4)
    assert np.array_equal(load_query_inputs(tmp_path / "bare.npy", SCHEMA)[:, 0], bare)

    # A truly wrong shape: one line, naming both shapes, from either side.
    for wrong in (
        inputs(5)[:, :, :3],
        np.zeros((5, 3, 4, 4), np.uint8),
        np.zeros((5, 16), np.uint8),
    ):
        with pytest.raises(InputError) as refused:
            query_protocol.encode_query_inputs(wrong, SCHEMA)
        message = str(refused.value)
        assert "\n" not in message and "this model takes (N, 1, 4, 4) or (N, 4, 4)" in message
        np.save(tmp_path / "wrong.npy", wrong)
        with pytest.raises(InputError, match=r"this model takes \(N, 1, 4, 4\)"):
            load_query_inputs(tmp_path / "wrong.npy", SCHEMA)

    # And end to end: a real enclave answers bare grayscale images.
    model, new_relay = make_model(SLOW_RECIPE, {})
    answers, _ = query(model.unlock(new_relay()), bare)
    assert len(answers) == 5


# -- training: the owner's report and checkpoints have sizes fixed by public facts -------

TRAIN_SCHEMA = DatasetSchema((1, 8, 8), "uint8", 3)
TRAIN_RECORDS = 64
TRAIN_BUILD = """
import torch
import torch.nn as nn

HYPERPARAMETERS = {"epochs": 2, "batch_size": 16, "lr": 0.01}

def build_model(schema):
    c, h, w = schema.input_shape
    return nn.Sequential(
        nn.Flatten(), nn.Linear(c * h * w, 16), nn.ReLU(), nn.Linear(16, schema.num_classes)
    )
"""
# Two recipes of one architecture. The second steers its held-out accuracy (it answers
# class 0 for everything but the first record), so that the figure prints in as many
# digits as it likes: were the report not padded, its length would carry the signal.
TRAIN_RECIPES = {
    "honest": TRAIN_BUILD.encode(),
    "signalling": (
        TRAIN_BUILD
        + """
def predict(model, x):
    logits = torch.zeros((x.shape[0], 3))
    logits[:, 0] = 1.0
    logits[:1, 0] = -1.0
    return logits
"""
    ).encode(),
}


@dataclass(frozen=True)
class Trained:
    sealed_report_size: int
    report: dict[str, Any]
    checkpoint_size: int


def _train(root: Path, recipe: bytes, seed: int) -> Trained:
    owner, provider = Identity.generate(), Identity.generate()
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(TRAIN_RECORDS, *TRAIN_SCHEMA.input_shape), dtype=np.uint8)
    y = rng.integers(0, 3, size=TRAIN_RECORDS)
    key, path = random_key(), root / "data.chd"
    header = container.encrypt_dataset(
        [(x, y)], path, key, schema=TRAIN_SCHEMA, record_count=TRAIN_RECORDS
    )
    _, digest = container.read_dataset_header_and_digest(path)
    dataset = DatasetRef(header.dataset_id, digest)
    statement = make_statement(recipe, name="tiny", version="1", provider=provider)
    plan = Plan(seed=7)
    materials = TrainMaterials(
        recipe_name="tiny.py",
        recipe_source=recipe,
        recipe_statement=statement,
        dataset_path=str(path),
        checkpoint_dir=str(root / "checkpoints"),
    )
    replies: list[dict[str, Any]] = []

    class Recording(LocalEnclaveSession):
        def call(self, name: str, args: dict[str, Any], on_event: Any = None) -> dict[str, Any]:
            result = super().call(name, args, on_event)
            replies.append(result)
            return result

    with Recording("train", root / "state", extra_args={"train": materials.to_wire()}) as session:
        outcome = run_training(
            session,
            job_id=local_job_id(
                statement=statement, dataset=dataset, owner=owner.public, plan=plan
            ),
            data_key=DataKey(header.dataset_id, key),
            dataset=dataset,
            owner=owner,
            statement=statement,
            plan=plan,
            policy=load_policy(None, allow_simulation=True),
            state_dir=root / "state",
        )
    (reply,) = replies
    (checkpoint,) = (root / "checkpoints").iterdir()
    return Trained(len(reply["owner_report"]), outcome.report, checkpoint.stat().st_size)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Trained]:
    runs = {}
    for name, recipe in TRAIN_RECIPES.items():
        for seed in (1, 2):
            runs[name, seed] = _train(tmp_path_factory.mktemp(f"{name}-{seed}"), recipe, seed)
    return runs


def test_owner_reports_and_checkpoints_have_one_size_across_recipes_and_datasets(trained):
    # What the figures say differs from run to run, and so does its plain JSON length...
    lengths = {len(encode_json(run.report)) for run in trained.values()}
    accuracies = {run.report["final_holdout_accuracy"] for run in trained.values()}
    assert len(accuracies) > 1 and len(lengths) > 1
    # ...but what the host sees of the report and of the checkpoints does not.
    assert len({run.sealed_report_size for run in trained.values()}) == 1
    assert len({run.checkpoint_size for run in trained.values()}) == 1
    for run in trained.values():
        assert len(run.report["epoch_accuracy"]) == 2
        assert sum(map(sum, run.report["confusion_matrix"])) == run.report["holdout_records"]
