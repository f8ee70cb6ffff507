"""Issue 11, the training side: a malicious host gains nothing.

A scripted hostile host (tests/security/hostile_host.py) runs REAL training enclave
processes as the real host does, relays the owner's calls, and otherwise calls `attest`
and `train` with whatever it likes: replayed, edited or re-signed manifests, its own
recipe and statement, other datasets, other enclaves, forged results. The owner is the
real client code (`authorize`, `seal_data_key`, `run_training`, `check_training_result`,
the `chiron train` command).

Each test plays one attack and shows both halves: it is refused with a named error, and
its effect is absent: nothing came back, the enclave serves nothing (so it never opened
the data key: it binds itself before it opens one) or it serves only the owner's job,
no model opens with the attacker's keys, and no plaintext record (every record carries
`MARKER`) is in anything the host received or stores.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chiron.client import cli, targets, training
from chiron.client.attestation import verify_enclave
from chiron.client.sessions import LocalEnclaveSession
from chiron.client.training import authorize, check_training_result
from chiron.core import modelfile, purposes, query_protocol, replies
from chiron.core.contract import TrainAuthorization, TrainMaterials, TrainResult
from chiron.core.crypto import open_sealed, random_key, seal, sign
from chiron.core.encoding import b64encode, canonical_json, sha256_hex
from chiron.core.errors import (
    AttestationError,
    ChironError,
    EnclaveError,
    InputError,
    IntegrityError,
)
from chiron.core.identifiers import check_model_id
from chiron.core.keys import DataKey, Identity, PublicIdentity
from chiron.core.manifest import Plan, new_manifest, training_data_key_context
from chiron.core.roles import Role

from .hostile_host import (
    COPYING_RECIPE,
    MARKER,
    PLAN,
    RECIPE,
    HostileHost,
    Owner,
    RecordingSession,
    edit_manifest,
    encrypt_records,
    escrowed_model,
    flatten,
    leaked,
    marked_records,
    policy,
    provider_statement,
    resign_manifest,
)

# -- the world -----------------------------------------------------------------------------


@pytest.fixture
def host(tmp_path: Path) -> Iterator[HostileHost]:
    hostile = HostileHost(tmp_path)
    try:
        yield hostile
    finally:
        hostile.close()


@pytest.fixture
def provider() -> Identity:
    return Identity.generate()


@pytest.fixture
def owner(tmp_path: Path) -> Owner:
    key = random_key()
    path = tmp_path / "owner-data" / "train.chd"
    path.parent.mkdir()
    dataset = encrypt_records(path, key)
    return Owner(Identity.generate(), DataKey(dataset.dataset_id, key), dataset, path)


def b64(identity: PublicIdentity) -> str:
    return b64encode(identity.to_bytes())


def assert_host_got_nothing(host: HostileHost) -> None:
    """No result came back from any `train` call, and no plaintext reached the host."""
    assert host.calls and all(call.result is None for call in host.calls)
    assert not host.holds_plaintext()


def test_the_marker_is_found_wherever_a_record_hides(owner):
    """The leak detector itself: raw, hex, base64 at every offset, numbers; not in ciphertext."""
    assert leaked(marked_records()[0].tobytes())
    assert not leaked(owner.dataset_path.read_bytes())
    for prefix in (b"", b"a", b"ab", b"abc"):
        blob = prefix + MARKER + b"tail"
        assert leaked(blob)
        assert leaked(base64.b64encode(blob))
        assert leaked(blob.hex().encode())
    assert leaked(flatten({"events": [{"x": MARKER.decode("latin-1")}]}))
    assert leaked(flatten(["record: " + str(list(MARKER))]))
    assert not leaked(b"PLAINTEXT-RE")


def test_control_a_copying_recipe_really_copies_records_into_the_weights(host, owner):
    """Why the attacks below matter: COPYING_RECIPE, once run, puts records in the model.

    Here the owner knowingly authorizes it (signed by the host as its provider); whoever
    holds both shares reads the owner's records out of the weights. Even so, the host
    alone holds nothing in plaintext.
    """
    statement = provider_statement(host.identity, COPYING_RECIPE)
    enclave = host.start()
    materials = host.materials(statement, owner.dataset_path, recipe=COPYING_RECIPE)
    outcome = owner.run(host.relay(enclave, materials), host, statement)
    header = modelfile.read_model_header(outcome.model)
    shares = [
        open_sealed(
            identity.hpke_key,
            header.share_for(party),
            purpose=purposes.MODEL_SHARE_ESCROW,
            context={"model_id": header.model_id, "party": party},
        )
        for party, identity in (("owner", owner.identity), ("provider", host.identity))
    ]
    key = bytes(a ^ b for a, b in zip(*shares, strict=True))
    assert MARKER in modelfile.decrypt_model(outcome.model, key)[1].weights
    assert not host.holds_plaintext()


# -- 1. the owner's sealed key and manifest, replayed with other materials ------------------


@dataclass
class Replay:
    """What the host holds once the owner authorized a job on `enclave`."""

    host: HostileHost
    owner: Owner
    provider: Identity
    authorization: TrainAuthorization
    materials: TrainMaterials

    @property
    def body(self) -> dict[str, Any]:
        return self.authorization.manifest.manifest.body()

    def args(self, manifest: bytes | None = None, **materials: Any) -> dict[str, Any]:
        owner_half = self.authorization.to_wire()
        if manifest is not None:
            owner_half["manifest"] = manifest
        host_half = self.materials.to_wire()
        host_half.update(materials)
        return {**host_half, **owner_half}


def another_recipe(r: Replay) -> dict[str, Any]:
    return r.args(recipe_source=COPYING_RECIPE)


def another_recipe_with_the_hosts_statement(r: Replay) -> dict[str, Any]:
    statement = provider_statement(r.host.identity, COPYING_RECIPE)
    return r.args(recipe_source=COPYING_RECIPE, recipe_statement=statement.to_bytes())


def the_host_names_itself_provider(r: Replay) -> dict[str, Any]:
    return r.args(recipe_statement=provider_statement(r.host.identity).to_bytes())


def another_owner_edited(r: Replay) -> dict[str, Any]:
    wire = r.authorization.manifest.to_wire()
    return r.args(edit_manifest(wire, owner=b64(r.host.identity.public)))


def another_plan_epochs(r: Replay) -> dict[str, Any]:
    return r.args(edit_manifest(r.authorization.manifest.to_wire(), plan={"epochs": 3}))


def another_plan_seed(r: Replay) -> dict[str, Any]:
    return r.args(edit_manifest(r.authorization.manifest.to_wire(), plan={"seed": 8}))


def another_provider_edited(r: Replay) -> dict[str, Any]:
    wire = r.authorization.manifest.to_wire()
    return r.args(edit_manifest(wire, provider=b64(r.host.identity.public)))


def another_owner_resigned(r: Replay) -> dict[str, Any]:
    """The host's own manifest, the owner's everything else: it names this very enclave."""
    body = {**r.body, "owner": b64(r.host.identity.public)}
    return r.args(resign_manifest(body, r.host.identity))


def the_hosts_whole_job(r: Replay) -> dict[str, Any]:
    """The host as owner, an accomplice as provider of the copying recipe, the owner's key."""
    accomplice = Identity.generate()
    statement = provider_statement(accomplice, COPYING_RECIPE)
    body = {
        **r.body,
        "owner": b64(r.host.identity.public),
        "provider": b64(accomplice.public),
        "recipe_sha256": statement.statement.recipe_sha256,
        "recipe_statement_sha256": statement.sha256,
    }
    return r.args(
        resign_manifest(body, r.host.identity),
        recipe_source=COPYING_RECIPE,
        recipe_statement=statement.to_bytes(),
    )


def a_group_the_plan_does_not_have(r: Replay) -> dict[str, Any]:
    """The host makes the enclave one worker of a group it runs itself."""
    members = [r.host.identity.public.to_bytes(), Identity.generate().public.to_bytes()]
    return {**r.args(), "group": {"rank": 1, "members": members}}


SIGNATURE = "the owner's signature on the job manifest is not valid"
STATEMENT = "the recipe statement is not the one the owner's manifest names"
KEY = "data key does not open"
REPLAYS: list[tuple[Callable[[Replay], dict[str, Any]], type[Exception], str, bool]] = [
    # (attack, the error, its words, whether the enclave got as far as binding itself)
    (another_recipe, IntegrityError, "the recipe is not the one its provider's statement", False),
    (another_recipe_with_the_hosts_statement, IntegrityError, STATEMENT, False),
    (the_host_names_itself_provider, IntegrityError, STATEMENT, False),
    (another_owner_edited, IntegrityError, SIGNATURE, False),
    (another_plan_epochs, IntegrityError, SIGNATURE, False),
    (another_plan_seed, IntegrityError, SIGNATURE, False),
    (another_provider_edited, IntegrityError, SIGNATURE, False),
    (a_group_the_plan_does_not_have, InputError, "disagree on the number of workers", False),
    (another_owner_resigned, IntegrityError, KEY, True),
    (the_hosts_whole_job, IntegrityError, KEY, True),
]


@pytest.mark.parametrize(
    ("attack", "error", "words", "binds"),
    REPLAYS,
    ids=[attack.__name__ for attack, *_ in REPLAYS],
)
def test_the_owners_key_and_manifest_replayed_with_other_materials(
    host, owner, provider, attack, error, words, binds
):
    statement = provider_statement(provider)
    enclave = host.start()
    materials = host.materials(statement, owner.dataset_path)
    _, authorization = owner.authorize(host.relay(enclave, materials), host, statement)
    args = attack(Replay(host, owner, provider, authorization, materials))

    with pytest.raises(error, match=words) as refused:
        host.train(enclave, args)
    assert type(refused.value) is error  # named, not an internal enclave error
    assert_host_got_nothing(host)
    _, binding = host.claims(enclave)
    if not binds:
        # Refused before the enclave committed to anything, so before the key opened.
        assert binding == ""
    else:
        # It committed to the host's manifest and found the key sealed for another: the
        # key did not open, and the owner's own job is now refused there too (the host
        # can deny service, which it always could, but gets nothing).
        assert binding == sha256_hex(canonical_json(json.loads(args["manifest"])["manifest"]))
        assert binding != authorization.manifest.digest
        with pytest.raises(EnclaveError, match="already serves another job"):
            host.train(enclave, Replay(host, owner, provider, authorization, materials).args())
        with pytest.raises(AttestationError, match="already serves"):
            owner.attest(host.relay(enclave, materials), host)
        assert_host_got_nothing(host)


# -- 2. a second train on one enclave --------------------------------------------------------


def test_a_second_train_after_a_successful_one_is_refused(host, owner, provider):
    statement = provider_statement(provider)
    enclave = host.start()
    relay = host.relay(enclave, host.materials(statement, owner.dataset_path))
    outcome = owner.run(relay, host, statement)
    (recorded,) = [call.args for call in host.calls]
    # The honest job, as the baseline: the owner's client accepted it, its progress
    # events are step counts and nothing else, its checkpoint is sealed, and the host
    # holds no plaintext record.
    assert outcome.report["dataset_id"] == owner.dataset.dataset_id
    for event in host.calls[0].events:
        assert set(event) <= {"event", "state", "step", "total"}
    assert (host.checkpoint_dir / "checkpoint.sealed").exists()
    assert not host.holds_plaintext()

    # The host's own job on this enclave with the owner's sealed key: its own manifest
    # (signed by a key of its own as "owner"), its copying recipe, signed by itself as
    # provider. Every check but the binding passes: it names this very enclave.
    copying = provider_statement(host.identity, COPYING_RECIPE)
    signer = Identity.generate()
    body = {
        **outcome.manifest.manifest.body(),
        "owner": b64(signer.public),
        "provider": b64(host.identity.public),
        "recipe_sha256": copying.statement.recipe_sha256,
        "recipe_statement_sha256": copying.sha256,
    }
    hosts_job = {
        **recorded,
        "manifest": resign_manifest(body, signer),
        "recipe_source": COPYING_RECIPE,
        "recipe_statement": copying.to_bytes(),
    }
    for args in (
        recorded,  # the very same call again
        {**recorded, "checkpoint_dir": str(host.root / "elsewhere")},
        hosts_job,
    ):
        with pytest.raises(EnclaveError, match="already serves another job"):
            host.train(enclave, args)
    # Only the owner's job ever returned anything, and the enclave still serves only it.
    assert len(host.results()) == 1
    assert host.claims(enclave) == ("train", outcome.manifest.digest)
    assert not host.holds_plaintext()
    assert not (host.root / "elsewhere").exists()
    # Its evidence says so: no owner's client seals another key to it.
    with pytest.raises(AttestationError, match="already serves"):
        owner.attest(relay, host)


def test_a_second_train_after_a_failed_one_is_refused(host, owner, provider):
    """The host seals a key of its own for the owner's manifest: the enclave opens it,
    the dataset does not decrypt with it, and the owner's real key is then refused."""
    statement = provider_statement(provider)
    enclave = host.start()
    materials = host.materials(statement, owner.dataset_path)
    identity, authorization = owner.authorize(host.relay(enclave, materials), host, statement)
    manifest = authorization.manifest
    hosts_key = seal(
        identity.hpke_key,
        random_key(),
        purpose=purposes.TRAINING_DATA_KEY,
        context=training_data_key_context(manifest.digest, owner.dataset.dataset_id),
    )
    genuine = {**materials.to_wire(), **authorization.to_wire()}
    with pytest.raises(IntegrityError, match="wrong key for dataset"):
        host.train(enclave, {**genuine, "sealed_data_key": hosts_key})
    with pytest.raises(EnclaveError, match="already serves another job"):
        host.train(enclave, genuine)
    assert_host_got_nothing(host)
    assert host.claims(enclave) == ("train", manifest.digest)


def test_a_finished_job_run_again_from_its_last_checkpoint_gives_the_same_report(
    host, owner, provider
):
    """The host keeps a finished job's last checkpoint (sealed at its last step, after the
    last evaluation) and runs the job again on a fresh enclave: the enclave resumes at
    the end, predicts the held-out set once more at its finish, and reports what the
    first run did. The host learns nothing new; the owner gets the same figures."""
    statement = provider_statement(provider)
    first = owner.run(
        host.relay(host.start(), host.materials(statement, owner.dataset_path)), host, statement
    )
    assert first.report["resumed_from_step"] == 0
    assert (host.checkpoint_dir / "checkpoint.sealed").exists()
    again = owner.run(
        host.relay(host.start(), host.materials(statement, owner.dataset_path)), host, statement
    )
    assert again.report["resumed_from_step"] == again.report["steps"] == first.report["steps"]
    for field in ("epoch_accuracy", "final_holdout_accuracy", "confusion_matrix"):
        assert again.report[field] == first.report[field], field
    # The final accuracy is the last epoch's: the same logits, asked once in each run.
    assert first.report["final_holdout_accuracy"] == first.report["epoch_accuracy"][-1]
    assert not host.holds_plaintext()


# -- 3. the owner as its own provider ----------------------------------------------------------


def test_the_owners_client_refuses_to_name_the_owner_provider(host, owner):
    """A recipe statement signed by the owner itself: no manifest, no key, no call."""
    statement = provider_statement(owner.identity)
    with pytest.raises(InputError, match="owner cannot also be the recipe's provider"):
        authorize(
            job_id=owner.job_id(statement),
            owner=owner.identity,
            statement=statement,
            dataset=owner.dataset,
            plan=PLAN,
            enclaves=(Identity.generate().public,),
        )
    enclave = host.start()
    session = RecordingSession(host, enclave)
    with pytest.raises(InputError, match="owner cannot also be the recipe's provider"):
        owner.run(session, host, statement)  # type: ignore[arg-type]
    assert session.calls == []
    assert host.calls == []


def test_an_enclave_refuses_a_provider_the_statement_does_not_name(host, owner, provider):
    """The owner signs manifests naming itself, or a key of its own, as the provider."""
    statement = provider_statement(provider)
    enclave = host.start()
    materials = host.materials(statement, owner.dataset_path)
    identity, authorization = owner.authorize(host.relay(enclave, materials), host, statement)
    body = authorization.manifest.manifest.body()

    # Itself: the manifest does not even parse.
    itself = resign_manifest({**body, "provider": b64(owner.identity.public)}, owner.identity)
    with pytest.raises(InputError, match="owner cannot also be the provider"):
        host.train(enclave, {**materials.to_wire(), **authorization.to_wire(), "manifest": itself})

    # A second key of its own: a valid manifest, but the recipe's provider did not sign it.
    puppet = Identity.generate()
    manifest = new_manifest(
        job_id=body["job_id"],
        owner=owner.identity,
        provider=puppet.public,
        recipe_sha256=statement.statement.recipe_sha256,
        recipe_statement_sha256=statement.sha256,
        dataset=owner.dataset,
        plan=PLAN,
        enclaves=(identity,),
    )
    sealed = training.seal_data_key(identity, owner.data_key, manifest)
    with pytest.raises(IntegrityError, match="provider is not the one who signed the recipe"):
        host.train(
            enclave, {**materials.to_wire(), **TrainAuthorization(manifest, sealed).to_wire()}
        )
    assert_host_got_nothing(host)
    assert host.claims(enclave) == ("train", "")


# -- 4. the wrong role, the wrong purpose -----------------------------------------------------


@pytest.mark.parametrize("role", ["query", "paramserver"])
def test_another_roles_evidence_gets_no_training_key(host, owner, provider, role):
    other = host.start(role)
    session = RecordingSession(host, other)
    with pytest.raises(AttestationError, match=f"it is a {role} enclave, not a train enclave"):
        verify_enclave(session.evidence, policy(), state_dir=host.state_dir, role=Role.TRAIN)
    with pytest.raises(AttestationError, match=f"it is a {role} enclave, not a train enclave"):
        owner.run(session, host, provider_statement(provider))  # type: ignore[arg-type]
    # Refused at attestation: no manifest was sent, no data key sealed, no call made.
    assert session.calls == []
    assert host.calls == []


@pytest.mark.parametrize("context", ["evaluation", "training"])
def test_an_evaluation_data_key_does_not_open_in_a_training_enclave(host, owner, provider, context):
    """A key the owner sealed for an evaluation, to this enclave's key, handed to train."""
    statement = provider_statement(provider)
    enclave = host.start()
    materials = host.materials(statement, owner.dataset_path)
    identity, authorization = owner.authorize(host.relay(enclave, materials), host, statement)
    dataset_id = owner.dataset.dataset_id
    evaluation_key = seal(
        identity.hpke_key,
        owner.data_key.key,
        purpose=purposes.EVALUATION_DATA_KEY,
        context=(
            query_protocol.evaluation_data_key_context(
                check_model_id("ab" * 16), "cd" * 16, dataset_id
            )
            if context == "evaluation"
            else training_data_key_context(authorization.manifest.digest, dataset_id)
        ),
    )
    args = {**materials.to_wire(), **authorization.to_wire(), "sealed_data_key": evaluation_key}
    with pytest.raises(IntegrityError, match="data key does not open"):
        host.train(enclave, args)
    assert_host_got_nothing(host)


# -- 5. forged results ------------------------------------------------------------------------


@dataclass
class Genuine:
    """An honest job's result, everything to check it as the owner does, and the result
    of an earlier job of the same owner on another enclave (which the host recorded)."""

    owner: Owner
    provider: Identity
    host: HostileHost
    enclave: PublicIdentity
    authorization: TrainAuthorization
    result: dict[str, Any]
    earlier: dict[str, Any]

    def check(self, result: dict[str, Any]) -> Any:
        return check_training_result(
            TrainResult.from_wire(result),
            self.authorization.manifest,
            self.enclave,
            self.owner.identity,
        )


@pytest.fixture(scope="module")
def genuine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Genuine]:
    root = tmp_path_factory.mktemp("genuine")
    key = random_key()
    path = root / "train.chd"
    dataset = encrypt_records(path, key)
    owner = Owner(Identity.generate(), DataKey(dataset.dataset_id, key), dataset, path)
    provider = Identity.generate()
    statement = provider_statement(provider)
    host = HostileHost(root)
    try:
        jobs = []
        for seed in (1, 2):  # the earlier job, then this one
            plan = Plan(seed=seed, epochs=1)
            enclave = host.start()
            relay = host.relay(enclave, host.materials(statement, path))
            identity, authorization = owner.authorize(relay, host, statement, plan)
            result = host.train(enclave, {**relay.materials, **authorization.to_wire()})
            jobs.append((identity, authorization, result))
        (_, _, earlier), (identity, authorization, result) = jobs
        yield Genuine(owner, provider, host, identity, authorization, result, earlier)
    finally:
        host.close()


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every ciphertext the owner's training client opens, as it opens it."""
    seen: list[bytes] = []

    def spy(private_key: Any, ciphertext: bytes, **kwargs: Any) -> bytes:
        seen.append(ciphertext)
        return open_sealed(private_key, ciphertext, **kwargs)

    monkeypatch.setattr(training, "open_sealed", spy)
    return seen


def _receipt(result: dict[str, Any]) -> dict[str, Any]:
    return json.loads(result["receipt"])


def _resigned_receipt(statement: dict[str, Any], signer: Identity) -> bytes:
    statement = {**statement, "enclave_identity": b64(signer.public)}
    signature = sign(
        signer.signing_key, canonical_json(statement), purpose=purposes.TRAINING_RECEIPT
    )
    return json.dumps(
        {
            "type": "chiron.receipt",
            "version": 1,
            "statement": statement,
            "signature": b64encode(signature),
            "evidence": "",
        }
    ).encode()


def _hosts_report(g: Genuine, result: dict[str, Any]) -> bytes:
    report = {
        "manifest_sha256": g.authorization.manifest.digest,
        "epoch_accuracy": [1.0],
        "final_holdout_accuracy": 1.0,
        "model_id": _receipt(result)["statement"]["model_id"],
    }
    return seal(
        g.owner.identity.public.hpke_key,
        json.dumps(report).encode(),
        purpose=purposes.OWNER_REPORT,
        context={"manifest": g.authorization.manifest.digest},
    )


def report_sealed_by_the_host(g: Genuine, r: dict[str, Any]) -> dict[str, Any]:
    return {**r, "owner_report": _hosts_report(g, r)}


def report_sealed_and_signed_by_the_host(g: Genuine, r: dict[str, Any]) -> dict[str, Any]:
    sealed = _hosts_report(g, r)
    signature = replies.sign_owner_report(g.host.identity, g.authorization.manifest.digest, sealed)
    return {**r, "owner_report": sealed, "owner_report_signature": signature}


def the_earlier_jobs_report(g: Genuine, r: dict[str, Any]) -> dict[str, Any]:
    """A genuine report, signed by a genuine enclave: of the owner's earlier job."""
    return {
        **r,
        "owner_report": g.earlier["owner_report"],
        "owner_report_signature": g.earlier["owner_report_signature"],
    }


def the_earlier_jobs_result(g: Genuine, r: dict[str, Any]) -> dict[str, Any]:
    return dict(g.earlier)


def the_earlier_jobs_model_and_receipt(g: Genuine, r: dict[str, Any]) -> dict[str, Any]:
    return {**r, "model": g.earlier["model"], "receipt": g.earlier["receipt"]}


def receipt_field_edited(g: Genuine, r: dict[str, Any]) -> dict[str, Any]:
    document = _receipt(r)
    document["statement"]["provider_fingerprint"] = g.host.identity.public.fingerprint
    return {**r, "receipt": json.dumps(document).encode()}


def receipt_plan_edited(g: Genuine, r: dict[str, Any]) -> dict[str, Any]:
    document = _receipt(r)
    document["statement"]["plan"]["epochs"] = 5
    return {**r, "receipt": json.dumps(document).encode()}


def receipt_resigned_by_the_host(g: Genuine, r: dict[str, Any]) -> dict[str, Any]:
    return {**r, "receipt": _resigned_receipt(_receipt(r)["statement"], g.host.identity)}


def model_escrowed_to_the_host(g: Genuine, r: dict[str, Any]) -> dict[str, Any]:
    model = escrowed_model(g.owner.identity.public, g.host.identity.public)
    return {**r, "model": model}


def model_and_receipt_of_the_host(g: Genuine, r: dict[str, Any]) -> dict[str, Any]:
    model = escrowed_model(g.host.identity.public, g.host.identity.public, weights=MARKER)
    statement = {
        **_receipt(r)["statement"],
        "model_sha256": hashlib.sha256(model).hexdigest(),
        "model_id": modelfile.read_model_header(model).model_id,
    }
    return {**r, "model": model, "receipt": _resigned_receipt(statement, g.host.identity)}


def model_named_by_a_path(g: Genuine, r: dict[str, Any]) -> dict[str, Any]:
    model = escrowed_model(g.owner.identity.public, g.provider.public, model_id="../evil")
    return {**r, "model": model}


def incomplete(g: Genuine, r: dict[str, Any]) -> dict[str, Any]:
    return {**r, "owner_report_signature": None}


FORGERIES: list[tuple[Callable[[Genuine, dict[str, Any]], dict[str, Any]], str]] = [
    (report_sealed_by_the_host, "signature on the owner's report is not valid"),
    (report_sealed_and_signed_by_the_host, "signature on the owner's report is not valid"),
    (the_earlier_jobs_report, "signature on the owner's report is not valid"),
    (the_earlier_jobs_result, "the receipt was not signed by the attested enclave"),
    (the_earlier_jobs_model_and_receipt, "the receipt was not signed by the attested enclave"),
    (receipt_field_edited, "the receipt's signature is not valid"),
    (receipt_plan_edited, "the receipt's signature is not valid"),
    (receipt_resigned_by_the_host, "the receipt was not signed by the attested enclave"),
    (model_escrowed_to_the_host, "the receipt does not describe this model file"),
    (model_and_receipt_of_the_host, "the receipt was not signed by the attested enclave"),
    (model_named_by_a_path, "the receipt does not describe this model file"),
    (incomplete, "incomplete"),
]


@pytest.mark.parametrize(
    ("forge", "words"), FORGERIES, ids=[forge.__name__ for forge, _ in FORGERIES]
)
def test_a_forged_result_is_refused_before_anything_is_opened(genuine, opened, forge, words):
    assert genuine.check(genuine.result).report["dataset_id"]  # the honest one passes
    opened.clear()
    forged = forge(genuine, dict(genuine.result))
    with pytest.raises(IntegrityError, match=words):
        genuine.check(forged)
    # The owner opened nothing the host made (its report is never unsealed).
    assert opened == []
    if forge is model_named_by_a_path:
        header = modelfile.read_model_header(forged["model"])
        with pytest.raises(InputError, match="model id"):
            check_model_id(header.model_id)


MALFORMED: list[Any] = [
    {"timings": {"train": "fast"}},
    {"timings": {"train": None}},
    {"timings": ["train"]},
    {"wire_trace": "none"},
    {"model": "not bytes"},
    {},
    [],
]


@pytest.mark.parametrize("answer", MALFORMED, ids=[repr(a) for a in MALFORMED])
def test_a_malformed_result_is_a_named_error(host, owner, provider, answer):
    """The host answers the owner's `train` itself, with something that is not a result."""
    statement = provider_statement(provider)
    enclave = host.start()
    relay = host.relay(
        enclave, host.materials(statement, owner.dataset_path), answer=lambda _: answer
    )
    with pytest.raises(ChironError) as refused:
        owner.run(relay, host, statement)
    assert type(refused.value) in (InputError, IntegrityError)
    assert len(relay.owner_sent) == 1 and host.calls == []


def test_the_owner_cannot_open_the_providers_share(genuine):
    """Escrow is to the manifest's two parties, and each key opens its own share only."""
    outcome = genuine.check(genuine.result)
    header = modelfile.read_model_header(outcome.model)
    assert (header.owner, header.provider) == (
        genuine.owner.identity.public,
        genuine.provider.public,
    )

    def share(party: str, identity: Identity) -> bytes:
        return open_sealed(
            identity.hpke_key,
            header.share_for(party),
            purpose=purposes.MODEL_SHARE_ESCROW,
            context={"model_id": header.model_id, "party": party},
        )

    for party, wrong in (
        ("provider", genuine.owner.identity),
        ("provider", genuine.host.identity),
        ("owner", genuine.provider),
        ("owner", genuine.host.identity),
    ):
        with pytest.raises(IntegrityError, match="does not open"):
            share(party, wrong)
    # Nor under the other party's label with its own key.
    with pytest.raises(IntegrityError, match="does not open"):
        open_sealed(
            genuine.owner.identity.hpke_key,
            header.share_for("provider"),
            purpose=purposes.MODEL_SHARE_ESCROW,
            context={"model_id": header.model_id, "party": "owner"},
        )
    owner_share = share("owner", genuine.owner.identity)
    with pytest.raises(IntegrityError):
        modelfile.decrypt_model(outcome.model, owner_share)
    # Both together (no real party holds both) open it: the shares are the real ones.
    key = bytes(
        a ^ b for a, b in zip(owner_share, share("provider", genuine.provider), strict=True)
    )
    assert modelfile.decrypt_model(outcome.model, key)[1].recipe_source == RECIPE
    assert not genuine.host.holds_plaintext()


def test_chiron_train_writes_nothing_when_the_host_swaps_the_model(
    tmp_path, owner, provider, monkeypatch, capsys
):
    """Through the `chiron train` command: the model comes back escrowed to the host."""
    hosts = Identity.generate()

    class SwappingSession(LocalEnclaveSession):
        def call(self, name: str, args: dict[str, Any], on_event: Any = None) -> dict[str, Any]:
            result = super().call(name, args, on_event)
            if name == "train":
                assert result["model"]
                result["model"] = escrowed_model(owner.identity.public, hosts.public)
            return result

    # The command builds its enclave session where the CLI and the SDK share it.
    monkeypatch.setattr(targets, "LocalEnclaveSession", SwappingSession)
    files = tmp_path / "cli"
    files.mkdir()
    recipe = files / "tiny.py"
    recipe.write_bytes(RECIPE)
    (files / "tiny.statement.json").write_bytes(provider_statement(provider).to_bytes())
    owner.identity.save(files / "owner.key")
    owner.data_key.save(files / "train.key")
    out = files / "model.chm"
    before = set(files.iterdir())
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "chiron",
            "train",
            "--local",
            "--allow-simulation",
            "--recipe",
            str(recipe),
            "--dataset",
            str(owner.dataset_path),
            "--data-key",
            str(files / "train.key"),
            "--owner",
            str(files / "owner.key"),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--state-dir",
            str(tmp_path / "state"),
        ],
    )
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 1
    assert "the receipt does not describe this model file" in capsys.readouterr().err
    # Not the model, not its receipt, report or plots, not a temporary file.
    assert set(files.iterdir()) == before
    assert not out.exists()


# -- 6. another dataset -----------------------------------------------------------------------


def reencrypted_by_the_owner(owner: Owner, path: Path) -> None:
    encrypt_records(path, owner.data_key.key, dataset_id=owner.dataset.dataset_id)


def same_id_under_the_hosts_key(owner: Owner, path: Path) -> None:
    encrypt_records(path, random_key(), seed=2, dataset_id=owner.dataset.dataset_id)


def another_dataset(owner: Owner, path: Path) -> None:
    encrypt_records(path, random_key(), seed=3)


def header_byte_flipped(owner: Owner, path: Path) -> None:
    data = bytearray(owner.dataset_path.read_bytes())
    data[10] ^= 1  # inside the salt: the header still parses, its digest differs
    path.write_bytes(bytes(data))


SWAPS = [
    reencrypted_by_the_owner,
    same_id_under_the_hosts_key,
    another_dataset,
    header_byte_flipped,
]


@pytest.mark.parametrize("swap", SWAPS, ids=[swap.__name__ for swap in SWAPS])
def test_another_ciphertext_is_refused_before_the_key_opens(host, owner, provider, swap):
    statement = provider_statement(provider)
    enclave = host.start()
    materials = host.materials(statement, owner.dataset_path)
    _, authorization = owner.authorize(host.relay(enclave, materials), host, statement)
    swapped = host.root / "swapped.chd"
    swap(owner, swapped)
    args = {**materials.to_wire(), **authorization.to_wire(), "dataset_path": str(swapped)}
    with pytest.raises(IntegrityError, match="the dataset is not the one the owner's manifest"):
        host.train(enclave, args)
    assert_host_got_nothing(host)
    # Unbound: the enclave binds itself before it opens a key, so this one never did.
    assert host.claims(enclave) == ("train", "")


# -- 7. identifiers that name paths -----------------------------------------------------------


def _files(root: Path) -> dict[Path, bytes]:
    return {path: path.read_bytes() for path in root.rglob("*") if path.is_file()}


@pytest.mark.parametrize("job_id", ["../x", "a/b", "..", "/tmp/x", "job/../../x", "x\x00y"])
def test_a_job_id_naming_a_path_is_refused_at_the_boundary(host, owner, provider, job_id):
    statement = provider_statement(provider)
    enclave = host.start()
    materials = host.materials(statement, owner.dataset_path)
    _, authorization = owner.authorize(host.relay(enclave, materials), host, statement)
    # Signed by the owner itself: only the job id is wrong.
    body = {**authorization.manifest.manifest.body(), "job_id": job_id}
    args = {
        **materials.to_wire(),
        **authorization.to_wire(),
        "manifest": resign_manifest(body, owner.identity),
    }
    log = host.log.read_bytes() if host.log.exists() else b""
    before = _files(host.root)
    with pytest.raises(InputError, match="malformed job id"):
        host.train(enclave, args)
    assert_host_got_nothing(host)
    assert host.claims(enclave) == ("train", "")
    after = _files(host.root)
    after.pop(host.log, None), before.pop(host.log, None)
    assert after == before  # no file written or changed anywhere
    assert job_id.encode() not in host.log.read_bytes()[len(log) :]
    # The owner's client refuses such an id too (a service chooses job ids).
    with pytest.raises(InputError, match="malformed job id"):
        authorize(
            job_id=job_id,
            owner=owner.identity,
            statement=statement,
            dataset=owner.dataset,
            plan=PLAN,
            enclaves=(Identity.generate().public,),
        )


# -- 8. another enclave -----------------------------------------------------------------------


def test_a_manifest_for_enclave_a_is_refused_by_enclave_b(host, owner, provider):
    statement = provider_statement(provider)
    a, b = host.start(), host.start()
    materials = host.materials(statement, owner.dataset_path)
    identity, authorization = owner.authorize(host.relay(a, materials), host, statement)
    assert authorization.manifest.manifest.enclaves == (identity.fingerprint,)
    args = {**materials.to_wire(), **authorization.to_wire()}
    with pytest.raises(IntegrityError, match="this enclave is not the one the owner's manifest"):
        host.train(b, args)
    assert_host_got_nothing(host)
    # Neither enclave serves anything: B refused before it opened the key (sealed to A's
    # key anyway), and A is untouched.
    assert host.claims(b) == ("train", "")
    assert host.claims(a) == ("train", "")
