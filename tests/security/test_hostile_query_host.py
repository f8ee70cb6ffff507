"""Issue 11, the query side: a malicious host gains nothing.

A scripted hostile host sits between the owner's client and a REAL query enclave
process (`LocalEnclaveSession`): it relays every call and rewrites, replays or forges
what it likes. Each test plays one attack and shows both halves: the attack is refused
with a clear error, and nothing it aimed at (an answer, a report, a share, a data key, a
file outside the enclave's state) leaks or lands.

The model is built here rather than trained (training is covered by tests/e2e): a tiny
recipe, its weights from the recipe SDK's own probe run, escrowed exactly as the
training enclave escrows them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.security.escrowed import QUERY_POLICY, SCHEMA, escrow, probe_weights

from chiron.client import querying
from chiron.client.attestation import load_policy
from chiron.client.querying import UnlockedModel, evaluate, query, unlock_model
from chiron.client.sessions import LocalEnclaveSession
from chiron.core import dataset as container
from chiron.core import modelfile, purposes, query_channel, query_protocol
from chiron.core.attestation import Policy
from chiron.core.crypto import (
    open_sealed,
    random_key,
    reply_key_pair,
    seal,
    sign,
)
from chiron.core.errors import AttestationError, EnclaveError, InputError, IntegrityError
from chiron.core.keys import DataKey, Identity

POLICY = QUERY_POLICY


# -- a cheap escrowed model -------------------------------------------------------------


@pytest.fixture(scope="module")
def weights() -> bytes:
    """Safetensors weights of the tiny recipe, as the sandbox's query mode expects them."""
    return probe_weights()


# -- the hostile host -------------------------------------------------------------------

Rewrite = Callable[[str, dict[str, Any], dict[str, Any]], dict[str, Any]]


class HostileHost:
    """Relays a client's calls to a real enclave, and may rewrite any result.

    `rewrite(name, args, result)` returns what the client gets instead of `result`;
    `calls` records every call the client made through this host.
    """

    def __init__(self, enclave: LocalEnclaveSession) -> None:
        self.enclave = enclave
        self.rewrite: Rewrite | None = None
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def evidence(self, nonce: bytes) -> bytes:
        return self.enclave.evidence(nonce)

    def call(self, name: str, args: dict[str, Any], on_event: Any = None) -> dict[str, Any]:
        self.calls.append((name, dict(args)))
        result = self.enclave.call(name, args, on_event)
        return result if self.rewrite is None else self.rewrite(name, args, result)

    def close(self) -> None:
        self.enclave.close()


@dataclass
class Scene:
    root: Path
    state: Path
    policy: Policy
    owner: Identity
    provider: Identity
    model: bytes
    model_id: str
    weights: bytes

    def unlock(self, host: HostileHost, model: bytes | None = None) -> UnlockedModel:
        return unlock_model(
            host,
            model=self.model if model is None else model,
            owner=self.owner,
            provider=self.provider,
            policy=self.policy,
            state_dir=self.state,
        )


@pytest.fixture
def scene(tmp_path: Path, weights: bytes) -> Scene:
    owner, provider = Identity.generate(), Identity.generate()
    model_id = os.urandom(16).hex()
    return Scene(
        root=tmp_path,
        state=tmp_path / "enclave-state",
        policy=load_policy(None, allow_simulation=True),
        owner=owner,
        provider=provider,
        model=escrow(owner, provider, weights, model_id),
        model_id=model_id,
        weights=weights,
    )


@pytest.fixture
def host(scene: Scene) -> Iterator[HostileHost]:
    hostile = HostileHost(LocalEnclaveSession("query", scene.state))
    try:
        yield hostile
    finally:
        hostile.close()


def inputs(count: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(count, *SCHEMA.input_shape), dtype=np.uint8)


def evaluation_set(scene: Scene) -> tuple[Path, DataKey]:
    x, y = inputs(120, seed=1), np.random.default_rng(2).integers(0, 3, size=120)
    key = random_key()
    header = container.encrypt_dataset(
        [(x, y)], scene.root / "eval.chd", key, schema=SCHEMA, record_count=120
    )
    return scene.root / "eval.chd", DataKey(header.dataset_id, key)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every sealed reply the client's query code opened (and so believed), in order."""
    seen: list[bytes] = []
    open_answers = query_channel.ChannelKeys.open_answers

    def spy(private_key: Any, ciphertext: bytes, **kwargs: Any) -> bytes:
        plaintext = open_sealed(private_key, ciphertext, **kwargs)
        seen.append(ciphertext)
        return plaintext

    def spy_answers(keys: Any, sequence: int, budget_left: int | None, sealed: bytes) -> bytes:
        plaintext = open_answers(keys, sequence, budget_left, sealed)
        seen.append(sealed)
        return plaintext

    monkeypatch.setattr(querying, "open_sealed", spy)
    monkeypatch.setattr(query_channel.ChannelKeys, "open_answers", spy_answers)
    return seen


def sealed_query(keys: query_channel.ChannelKeys, sequence: int, batch: np.ndarray) -> dict:
    """A query on an open channel, made with its keys (as only the owner's client can)."""
    plaintext = query_protocol.encode_query_inputs(batch, SCHEMA)
    return {
        "channel_id": keys.channel_id,
        "sequence": sequence,
        "sealed_inputs": keys.seal_inputs(sequence, plaintext),
        "opening": None,
    }


def channel_keys(unlocked: UnlockedModel) -> query_channel.ChannelKeys:
    assert unlocked._channel is not None
    return unlocked._channel.keys


# -- forged and swapped replies ---------------------------------------------------------


def test_a_forged_answer_is_refused_before_it_is_opened(scene, host, opened):
    unlocked = scene.unlock(host)
    honest, _ = query(unlocked, inputs())
    assert honest.probabilities is not None and honest.probabilities.shape == (4, 3)

    forged: list[bytes] = []

    def forge(name: str, args: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        if name != "query":
            return result
        # The host knows the channel id, the sequence number and the answers' size, so
        # it can make well-formed answers (every input "is" class 2, with certainty)
        # under a key of its own; or flip one bit of the enclave's genuine answers.
        count = 4
        answers = (
            np.full(count, 2, "<i4").tobytes()
            + np.tile(np.array([0, 0, 1], "<f4"), count).tobytes()
        )
        own_keys = query_channel.ChannelKeys.derive(
            random_key(), scene.model_id, args["channel_id"]
        )
        genuine = bytearray(result["sealed_answers"])
        genuine[5] ^= 1
        blob = (
            own_keys.seal_answers(args["sequence"], result["budget_left"], answers)
            if not forged
            else bytes(genuine)
        )
        assert len(blob) == len(result["sealed_answers"])
        forged.append(blob)
        return {**result, "sealed_answers": blob}

    host.rewrite = forge
    for _ in range(2):
        with pytest.raises(IntegrityError, match="the answers"):
            query(unlocked, inputs())
    assert len(forged) == 2
    assert not set(forged) & set(opened)


def test_an_answer_swapped_between_two_requests_is_refused(scene, host, opened):
    unlocked = scene.unlock(host)
    opened.clear()  # the shares the client opened to unlock
    kept: list[dict[str, Any]] = []

    def swap(name: str, args: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        if name != "query":
            return result
        kept.append(result)
        return kept[0]  # every later request gets the first request's (genuine) answer

    host.rewrite = swap
    first, _ = query(unlocked, inputs(seed=1))
    with pytest.raises(IntegrityError, match="the answers"):
        query(unlocked, inputs(seed=2))
    # Only the first (genuine, its own) answer was ever opened.
    assert opened == [kept[0]["sealed_answers"]]
    assert len(first) == 4


def test_a_lie_about_the_budget_left_is_refused(scene, host):
    unlocked = scene.unlock(host)
    host.rewrite = lambda name, args, result: (
        {**result, "budget_left": 10**6} if name == "query" else result
    )
    with pytest.raises(IntegrityError, match="the answers"):
        query(unlocked, inputs())
    # Nor can the host hide the budget: "no budget" is bound as much as a number.
    host.rewrite = lambda name, args, result: (
        {**result, "budget_left": None} if name == "query" else result
    )
    with pytest.raises(IntegrityError, match="the answers"):
        query(unlocked, inputs())


def test_no_budget_and_every_budget_left_are_distinct_bindings():
    """A host cannot turn "no budget" into a number, nor one number into another."""
    keys = query_channel.ChannelKeys.derive(random_key(), os.urandom(16).hex(), "0" * 32)
    unbudgeted = keys.seal_answers(0, None, b"answers!")
    assert keys.open_answers(0, None, unbudgeted) == b"answers!"
    for lie in (-1, 0, 7, 2**63 - 1, 2**64, True):
        with pytest.raises(IntegrityError):
            keys.open_answers(0, lie, unbudgeted)
    budgeted = keys.seal_answers(0, 7, b"answers!")
    for lie in (None, -1, 6, 8):
        with pytest.raises(IntegrityError):
            keys.open_answers(0, lie, budgeted)
    # Nor move an answer to another sequence number.
    with pytest.raises(IntegrityError):
        keys.open_answers(1, 7, budgeted)


# -- replays -----------------------------------------------------------------------------


def test_a_replayed_evaluation_is_refused_and_yields_nothing(scene, host):
    unlocked = scene.unlock(host)
    dataset, data_key = evaluation_set(scene)
    report = evaluate(unlocked, dataset_path=str(dataset), data_key=data_key)
    assert report["records"] == 120 and report["dataset_id"] == data_key.dataset_id

    (recorded,) = [args for name, args in host.calls if name == "evaluate"]
    with pytest.raises(InputError, match="replayed"):
        host.enclave.call("evaluate", recorded)
    # Nor with the dataset path rewritten (the path is the host's to choose).
    copy = scene.root / "copy.chd"
    copy.write_bytes(dataset.read_bytes())
    with pytest.raises(InputError, match="replayed"):
        host.enclave.call("evaluate", {**recorded, "dataset_path": str(copy)})
    # The enclave keeps serving the owner: a fresh evaluation works.
    again = evaluate(unlocked, dataset_path=str(dataset), data_key=data_key)
    assert again["confusion_matrix"] == report["confusion_matrix"]


def test_a_replayed_query_is_refused(scene, host):
    unlocked = scene.unlock(host)
    for _ in range(3):
        query(unlocked, inputs())
    opening, *later = [args for name, args in host.calls if name == "query"]
    assert opening["opening"] is not None and all(args["opening"] is None for args in later)
    # The query that opened the channel, and the queries made on it: each refused.
    for recorded in (opening, *later):
        with pytest.raises(InputError, match="replayed"):
            host.enclave.call("query", recorded)
    # Opening the same channel again with a fresh query is refused too: an opening is
    # accepted once per model.
    again = {**sealed_query(channel_keys(unlocked), 9, inputs()), "opening": opening["opening"]}
    with pytest.raises(InputError, match="replayed"):
        host.enclave.call("query", again)
    # The refusals cost nothing, and the owner's channel still works.
    assert query(unlocked, inputs())[1] == POLICY["budget"] - 4 * 4


def test_a_reordered_query_is_refused(scene, host):
    """A host holding back a query and delivering it after a later one gets a refusal."""
    unlocked = scene.unlock(host)
    query(unlocked, inputs())
    keys = channel_keys(unlocked)
    held_back, later = sealed_query(keys, 1, inputs(seed=1)), sealed_query(keys, 2, inputs(seed=2))
    result = host.enclave.call("query", later)
    assert result["budget_left"] == POLICY["budget"] - 8
    with pytest.raises(InputError, match="reordered"):
        host.enclave.call("query", held_back)


def test_the_host_cannot_query_a_model_the_owner_unlocked(scene, host):
    unlocked = scene.unlock(host)
    query(unlocked, inputs())
    (opening,) = [args for name, args in host.calls if name == "query"]
    # On the owner's channel, under a key of its own: refused, unopened.
    guessed = query_channel.ChannelKeys.derive(random_key(), scene.model_id, opening["channel_id"])
    with pytest.raises(IntegrityError, match="not the owner's"):
        host.enclave.call("query", sealed_query(guessed, 5, inputs()))
    # On a channel of its own: the opening must be signed by the model's owner.
    channel_id, secret = os.urandom(16).hex(), random_key()
    sealed_secret = seal(
        unlocked.enclave.hpke_key,
        secret,
        purpose=purposes.QUERY_CHANNEL_SECRET,
        context=query_channel.channel_secret_context(scene.model_id, channel_id),
    )
    own = query_channel.ChannelKeys.derive(secret, scene.model_id, channel_id)
    for signer in (Identity.generate(), scene.provider):
        signature = sign(
            signer.signing_key,
            query_channel.channel_opening_message(scene.model_id, channel_id, sealed_secret),
            purpose=purposes.QUERY_CHANNEL_OPENING,
        )
        request = {
            **sealed_query(own, 0, inputs()),
            "opening": {"sealed_secret": sealed_secret, "signature": signature},
        }
        with pytest.raises(IntegrityError, match="owner's signature on this query channel"):
            host.enclave.call("query", request)
    # Nothing was charged for any of it.
    assert query(unlocked, inputs())[1] == POLICY["budget"] - 8


def test_a_channel_id_cannot_be_reused_for_an_evaluation(scene, host):
    """Channel ids and evaluation request ids are one set of spent ids."""
    unlocked = scene.unlock(host)
    query(unlocked, inputs())
    (recorded,) = [args for name, args in host.calls if name == "query"]
    dataset, data_key = evaluation_set(scene)
    _, reply_public = reply_key_pair()
    request_id = recorded["channel_id"]
    sealed_key = seal(
        unlocked.enclave.hpke_key,
        data_key.key,
        purpose=purposes.EVALUATION_DATA_KEY,
        context=query_protocol.evaluation_data_key_context(
            scene.model_id, request_id, data_key.dataset_id
        ),
    )
    signature = sign(
        scene.owner.signing_key,
        query_protocol.evaluation_request_message(
            scene.model_id, request_id, sealed_key, reply_public
        ),
        purpose=purposes.EVALUATION_REQUEST,
    )
    with pytest.raises(InputError, match="replayed"):
        host.enclave.call(
            "evaluate",
            {
                "request_id": request_id,
                "dataset_path": str(dataset),
                "sealed_data_key": sealed_key,
                "reply_key": reply_public,
                "signature": signature,
            },
        )


# -- the wrong enclave -------------------------------------------------------------------


class RecordingEnclave:
    """A 'query enclave' whose evidence is really a training enclave's; records calls."""

    def __init__(self, evidence_from: LocalEnclaveSession) -> None:
        self._evidence_from = evidence_from
        self.calls: list[str] = []

    def evidence(self, nonce: bytes) -> bytes:
        return self._evidence_from.evidence(nonce)

    def call(self, name: str, args: dict[str, Any], on_event: Any = None) -> dict[str, Any]:
        self.calls.append(name)
        raise AssertionError(f"the client made the {name!r} call to a training enclave")

    def close(self) -> None:
        pass


def test_a_training_enclaves_evidence_gets_no_share(scene):
    with LocalEnclaveSession("train", scene.state) as training:
        fake = RecordingEnclave(training)
        with pytest.raises(AttestationError, match="it is a train enclave, not a query enclave"):
            scene.unlock(fake)  # type: ignore[arg-type]
    # Refused at attestation: no model, no share (and so never a data key) was sent.
    assert "provision_share" not in fake.calls
    assert fake.calls == []


def test_the_enclave_serves_one_model_only(scene, host):
    unlocked = scene.unlock(host)
    other = escrow(scene.owner, scene.provider, scene.weights, os.urandom(16).hex())
    with pytest.raises(EnclaveError, match="already serves another model"):
        host.enclave.call("load_model", {"model": other})
    with pytest.raises(EnclaveError, match="already serves another model"):
        host.enclave.call("load_model", {"model": scene.model})
    # Its evidence now states the model it serves, so no client releases another
    # model's shares to it...
    with pytest.raises(AttestationError, match="already serves"):
        scene.unlock(host, other)
    assert [name for name, _ in host.calls].count("provision_share") == 2
    # ...and it still answers for the model it holds.
    answers, budget_left = query(unlocked, inputs())
    assert len(answers) == 4 and budget_left == POLICY["budget"] - 4


def _files(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file()}


def test_a_model_id_naming_a_path_is_refused_before_any_file_is_written(scene, host):
    evil = escrow(scene.owner, scene.provider, scene.weights, "../x")
    assert modelfile.read_model_header(evil).model_id == "../x"
    host.evidence(os.urandom(32))  # the enclave's own state (the sim root) exists now
    before = _files(scene.root)
    with pytest.raises(InputError, match="model id"):
        host.enclave.call("load_model", {"model": evil})
    # Nothing is loaded, so nothing can be unlocked or charged to a budget file...
    with pytest.raises(InputError, match="no model is loaded"):
        host.enclave.call("provision_share", {"party": "owner", "sealed_share": b"s" * 64})
    # ...and no file appeared anywhere, inside the state directory or beside it.
    assert _files(scene.root) == before
    assert not list(scene.root.rglob("x.sealed"))
    # The owner's client refuses such a file before it attests anything.
    with pytest.raises(InputError, match="model id"):
        scene.unlock(host, evil)


def test_budget_files_are_named_by_the_model_id(scene, host):
    unlocked = scene.unlock(host)
    query(unlocked, inputs())
    budget_files = sorted(path.relative_to(scene.state) for path in _files(scene.state))
    assert Path("query-budget") / f"{scene.model_id}.sealed" in budget_files


# -- the evaluation data key -------------------------------------------------------------


def test_an_evaluation_data_key_does_not_open_for_training_or_another_request():
    enclave = Identity.generate()
    model_id, request_id, dataset_id = (os.urandom(16).hex() for _ in range(3))
    data_key = random_key()
    context = query_protocol.evaluation_data_key_context(model_id, request_id, dataset_id)
    sealed = seal(
        enclave.public.hpke_key, data_key, purpose=purposes.EVALUATION_DATA_KEY, context=context
    )
    # A training enclave opens data keys under the training purpose, for a manifest and
    # in the train role (core.manifest): nothing it tries opens this key.
    for purpose, attempt in (
        (purposes.TRAINING_DATA_KEY, context),
        (purposes.TRAINING_DATA_KEY, {**context, "role": "train"}),
        (
            purposes.TRAINING_DATA_KEY,
            {"manifest": "0" * 64, "dataset_id": dataset_id, "role": "train"},
        ),
        (purposes.EVALUATION_DATA_KEY, {**context, "role": "train"}),
        # Nor for another evaluation (another request id) or another model.
        (purposes.EVALUATION_DATA_KEY, {**context, "request_id": os.urandom(16).hex()}),
        (purposes.EVALUATION_DATA_KEY, {**context, "model_id": os.urandom(16).hex()}),
    ):
        with pytest.raises(IntegrityError, match="does not open"):
            open_sealed(enclave.hpke_key, sealed, purpose=purpose, context=attempt)
    assert (
        open_sealed(enclave.hpke_key, sealed, purpose=purposes.EVALUATION_DATA_KEY, context=context)
        == data_key
    )
