"""A scripted hostile host for training enclaves, and the owner it plays against.

In the spirit of python-tuf's repository simulator: `HostileHost` starts REAL training
(and query) enclave processes exactly as the real host does (`EnclaveProcess.start`),
relays the owner's calls to them, and may instead call `attest` and `train` with any
arguments it likes, record every blob and replay it. Everything the enclaves send back
(results, events, error messages), every file they leave in the host's state and
checkpoint folders and the enclaves' own log is kept, so a test can show that no
plaintext record ever reached the host.

`Owner` is the data owner played by the real client code: `client.training.authorize`,
`seal_data_key`, `check_training_result` and `run_training`.

Every record of the owner's dataset carries `MARKER`, a byte pattern found nowhere
else, so `leaked(...)` can look for plaintext in anything the host holds.
"""

from __future__ import annotations

import base64
import json
import os
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from chiron.client.attestation import appraise_evidence, load_policy, verify_enclave
from chiron.client.training import (
    TrainOutcome,
    authorize,
    local_job_id,
    run_training,
    seal_data_key,
)
from chiron.core import dataset as dataset_format
from chiron.core import modelfile, purposes
from chiron.core.attestation import Policy
from chiron.core.contract import TrainAuthorization, TrainMaterials
from chiron.core.crypto import random_key, seal, sign
from chiron.core.encoding import canonical_json
from chiron.core.errors import ChironError
from chiron.core.keys import DataKey, Identity, PublicIdentity
from chiron.core.manifest import DatasetRef, Plan
from chiron.core.recipe_statement import SignedRecipeStatement, make_statement
from chiron.core.roles import Role
from chiron.core.schema import DatasetSchema
from chiron.enclave.boundary import EnclaveProcess

SCHEMA = DatasetSchema((1, 8, 8), "uint8", 3)
RECORDS = 48
# 16 bytes found in every plaintext record (its last two rows of pixels), and nowhere else.
MARKER = bytes.fromhex("c3a5") + b"PLAINTEXT-REC" + bytes.fromhex("5a")
assert len(MARKER) == 16

# The provider's recipe: a tiny MLP (tests/e2e's TINY_RECIPE, smaller).
RECIPE = textwrap.dedent(
    """
    import torch.nn as nn

    HYPERPARAMETERS = {"epochs": 1, "batch_size": 16, "lr": 0.01}

    def build_model(schema):
        c, h, w = schema.input_shape
        return nn.Sequential(
            nn.Flatten(), nn.Linear(c * h * w, 16), nn.ReLU(), nn.Linear(16, schema.num_classes)
        )
    """
).encode()

# The host's own recipe: it copies the raw bytes of the records it trains on into a
# uint8 buffer that is saved with the weights, so whoever opens the model reads them.
COPYING_RECIPE = textwrap.dedent(
    """
    import torch
    import torch.nn as nn

    HYPERPARAMETERS = {"epochs": 1, "batch_size": 16, "lr": 0.01}

    def build_model(schema):
        c, h, w = schema.input_shape
        model = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, schema.num_classes))
        model.register_buffer("stash", torch.zeros((16, c * h * w), dtype=torch.uint8))
        return model

    def train_step(model, optimizer, x, y, hp):
        with torch.no_grad():
            rows = x.reshape(x.shape[0], -1)[:16]
            model.stash[: rows.shape[0]] = (rows * 255).round().to(torch.uint8)
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()
    """
).encode()


def policy() -> Policy:
    """What the owner's client verifies against: this installation's runtime, measured now
    (as `chiron train` does when it starts), simulation allowed."""
    return load_policy(None, allow_simulation=True)


PLAN = Plan(seed=7, epochs=1)


# -- the owner's data --------------------------------------------------------------------


def marked_records(count: int = RECORDS, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Three easy classes (a bright band in rows 0-5), and MARKER in rows 6-7 of each."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=count)
    x = rng.integers(0, 60, size=(count, 1, 8, 8)).astype(np.uint8)
    for i, label in enumerate(y):
        x[i, 0, :6, label * 2 : label * 2 + 3] += 180
    x[:, 0, 6:, :] = np.frombuffer(MARKER, np.uint8).reshape(2, 8)
    return x, y.astype(np.int64)


def encrypt_records(
    path: Path, key: bytes, *, seed: int = 1, dataset_id: str | None = None
) -> DatasetRef:
    """Encrypt marked records to `path`; `dataset_id` forces an id (as a re-encryption would)."""
    x, y = marked_records(seed=seed)
    original = dataset_format.new_dataset_id
    if dataset_id is not None:
        dataset_format.new_dataset_id = lambda: dataset_id  # type: ignore[assignment]
    try:
        header = dataset_format.encrypt_dataset(
            [(x, y)], path, key, schema=SCHEMA, record_count=len(y)
        )
    finally:
        dataset_format.new_dataset_id = original  # type: ignore[assignment]
    _, digest = dataset_format.read_dataset_header_and_digest(path)
    return DatasetRef(header.dataset_id, digest)


def _base64_forms(pattern: bytes) -> list[bytes]:
    # Whatever its offset in a larger blob, the blob's base64 contains one of these.
    forms = []
    for skip in range(3):
        usable = (len(pattern) - skip) // 3 * 3
        forms.append(base64.b64encode(pattern[skip : skip + usable]))
    return forms


def _decimal_forms(pattern: bytes) -> list[bytes]:
    # A record printed as numbers, e.g. in an error message: "195, 165, 80, ..." or "[195,165".
    return [sep.join(str(byte).encode() for byte in pattern[:8]) for sep in (b", ", b",", b" ")]


def leaked(blob: bytes) -> bool:
    """Whether `blob` holds a plaintext record's MARKER: raw, hex, base64 or as numbers."""
    forms = [
        MARKER,
        MARKER.hex().encode(),
        MARKER.hex().upper().encode(),
        *_base64_forms(MARKER),
        *_decimal_forms(MARKER),
    ]
    return any(form in blob for form in forms)


def flatten(value: Any) -> bytes:
    """Every byte and character of a JSON-like value, concatenated, for `leaked`."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        # Both ways a string could carry raw bytes.
        return value.encode("utf-8", "surrogateescape") + value.encode("latin-1", "replace")
    if isinstance(value, dict):
        return b"".join(flatten(k) + flatten(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return b"".join(flatten(v) for v in value)
    return repr(value).encode()


# -- manifests and models as the host forges them -----------------------------------------


def edit_manifest(wire: bytes, **changes: Any) -> bytes:
    """The owner's manifest with fields changed and the owner's signature kept.

    `plan=` takes a dict of plan fields to change; other keys replace manifest fields.
    """
    document = json.loads(wire)
    body = document["manifest"]
    for name, value in changes.items():
        if name == "plan":
            body["plan"] = {**body["plan"], **value}
        else:
            body[name] = value
    return canonical_json(document)


def resign_manifest(body: dict[str, Any], signer: Identity) -> bytes:
    """A manifest body signed by `signer` as if it were its owner (no field is checked)."""
    signature = sign(signer.signing_key, canonical_json(body), purpose=purposes.JOB_MANIFEST)
    return canonical_json(
        {
            "type": "chiron.job-manifest",
            "version": 1,
            "manifest": body,
            "signature": base64.b64encode(signature).decode(),
        }
    )


def escrowed_model(
    owner: PublicIdentity,
    provider: PublicIdentity,
    *,
    model_id: str | None = None,
    weights: bytes = b"\0" * 64,
) -> bytes:
    """A well-formed model file escrowed to `owner` and `provider` (what a host can make)."""
    model_id = model_id or os.urandom(16).hex()
    model_key, owner_share = random_key(), random_key()
    provider_share = bytes(a ^ b for a, b in zip(model_key, owner_share, strict=True))
    sealed = {
        party: seal(
            identity.hpke_key,
            share,
            purpose=purposes.MODEL_SHARE_ESCROW,
            context={"model_id": model_id, "party": party},
        )
        for party, identity, share in (
            ("owner", owner, owner_share),
            ("provider", provider, provider_share),
        )
    }
    header = modelfile.ModelHeader(
        model_id=model_id,
        schema=SCHEMA,
        query_policy={},
        owner=owner,
        provider=provider,
        owner_share=sealed["owner"],
        provider_share=sealed["provider"],
        owner_share_sha256=modelfile.share_digest(owner_share),
        provider_share_sha256=modelfile.share_digest(provider_share),
        measurement="0" * 64,
        created=0,
    )
    payload = modelfile.ModelPayload("tiny.py", COPYING_RECIPE, weights)
    return modelfile.encrypt_model(header, payload, model_key)


# -- the host ----------------------------------------------------------------------------

Answer = Callable[[dict[str, Any]], Any]


@dataclass
class TrainCall:
    """One `train` call the host made: what it sent, and what came back."""

    args: dict[str, Any]
    result: dict[str, Any] | None = None
    error: ChironError | None = None
    events: list[dict[str, Any]] = field(default_factory=list)


class HostileHost:
    """Runs training enclaves for an owner, and attacks it with everything it holds."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state_dir = root / "host-state"
        self.checkpoint_dir = root / "host-checkpoints"
        self.log = root / "enclaves.log"
        self.identity = Identity.generate()  # the host's own key, for re-signing
        self.enclaves: list[EnclaveProcess] = []
        self.calls: list[TrainCall] = []
        self.received: list[Any] = []

    # What the real host does.

    def start(self, role: str = "train") -> EnclaveProcess:
        enclave = EnclaveProcess.start(role=role, state_dir=self.state_dir, log_path=self.log)
        self.enclaves.append(enclave)
        return enclave

    def attest(self, enclave: EnclaveProcess, nonce: bytes) -> bytes:
        evidence = enclave.call("attest", {"nonce": nonce})["evidence"]
        self.received.append(evidence)
        return evidence

    def train(self, enclave: EnclaveProcess, args: dict[str, Any]) -> dict[str, Any]:
        """One `train` call with exactly `args`; every answer is recorded."""
        call = TrainCall(dict(args))
        self.calls.append(call)
        try:
            call.result = enclave.call("train", args, on_event=call.events.append, timeout=300)
        except ChironError as exc:
            call.error = exc
            self.received.append(str(exc))
            raise
        finally:
            self.received.extend(call.events)
        self.received.append(call.result)
        return call.result

    def relay(
        self,
        enclave: EnclaveProcess,
        materials: TrainMaterials | dict[str, Any],
        *,
        answer: Answer | None = None,
    ) -> Relay:
        """A session the owner's client talks to; the host adds its half of `train`.

        With `answer`, the host keeps the owner's call from the enclave and answers it
        itself: `answer(args)` is what the owner's client gets.
        """
        wire = materials.to_wire() if isinstance(materials, TrainMaterials) else materials
        return Relay(self, enclave, wire, answer)

    def materials(
        self, statement: SignedRecipeStatement, dataset: Path, *, recipe: bytes = RECIPE
    ) -> TrainMaterials:
        return TrainMaterials(
            recipe_name="tiny.py",
            recipe_source=recipe,
            recipe_statement=statement,
            dataset_path=str(dataset),
            checkpoint_dir=str(self.checkpoint_dir),
        )

    # What the tests look at.

    def claims(self, enclave: EnclaveProcess) -> tuple[str, str]:
        """The role and binding the enclave attests to now (binding "": serves nothing)."""
        nonce = os.urandom(32)
        report = appraise_evidence(
            self.attest(enclave, nonce), nonce, policy(), state_dir=self.state_dir
        )
        assert report.ok, report.failures
        return report.claims.role, report.claims.binding

    def results(self) -> list[dict[str, Any]]:
        return [call.result for call in self.calls if call.result is not None]

    def files(self) -> dict[Path, bytes]:
        """Every file in the host's state and checkpoint folders, and the enclaves' log."""
        found = {}
        for folder in (self.state_dir, self.checkpoint_dir):
            if folder.is_dir():
                for path in folder.rglob("*"):
                    if path.is_file():
                        found[path] = path.read_bytes()
        if self.log.exists():
            found[self.log] = self.log.read_bytes()
        return found

    def holds_plaintext(self) -> bool:
        """Whether anything the host received or stores carries a plaintext record."""
        return leaked(flatten(self.received)) or any(map(leaked, self.files().values()))

    def close(self) -> None:
        for enclave in self.enclaves:
            enclave.kill()
            enclave.close()


class Relay:
    """The host's side of an `EnclaveSession`: the host's arguments win over the owner's."""

    def __init__(
        self,
        host: HostileHost,
        enclave: EnclaveProcess,
        materials: dict[str, Any],
        answer: Answer | None,
    ) -> None:
        self.host, self.enclave, self.materials, self.answer = host, enclave, materials, answer
        self.owner_sent: list[dict[str, Any]] = []

    def evidence(self, nonce: bytes) -> bytes:
        return self.host.attest(self.enclave, nonce)

    def call(self, name: str, args: dict[str, Any], on_event: Any = None) -> dict[str, Any]:
        assert name == "train", name
        self.owner_sent.append(dict(args))
        if self.answer is not None:
            return self.answer(dict(args))
        return self.host.train(self.enclave, {**args, **self.materials})

    def close(self) -> None:
        pass


class RecordingSession:
    """A 'training enclave' whose evidence comes from `evidence_from`; records every call."""

    def __init__(self, host: HostileHost, evidence_from: EnclaveProcess) -> None:
        self.host, self.evidence_from = host, evidence_from
        self.calls: list[str] = []

    def evidence(self, nonce: bytes) -> bytes:
        return self.host.attest(self.evidence_from, nonce)

    def call(self, name: str, args: dict[str, Any], on_event: Any = None) -> dict[str, Any]:
        self.calls.append(name)
        raise AssertionError(f"the owner's client made a {name!r} call")

    def close(self) -> None:
        pass


# -- the owner ---------------------------------------------------------------------------


@dataclass
class Owner:
    """The data owner, played by the real client code."""

    identity: Identity
    data_key: DataKey
    dataset: DatasetRef
    dataset_path: Path

    def job_id(self, statement: SignedRecipeStatement, plan: Plan = PLAN) -> str:
        return local_job_id(
            statement=statement, dataset=self.dataset, owner=self.identity.public, plan=plan
        )

    def attest(self, session: Relay | RecordingSession, host: HostileHost) -> PublicIdentity:
        return verify_enclave(
            session.evidence, policy(), state_dir=host.state_dir, role=Role.TRAIN
        ).identity

    def authorize(
        self, session: Relay, host: HostileHost, statement: SignedRecipeStatement, plan: Plan = PLAN
    ) -> tuple[PublicIdentity, TrainAuthorization]:
        """Attest the enclave behind `session`, sign a manifest for it, seal the key to it."""
        enclave = self.attest(session, host)
        manifest = authorize(
            job_id=self.job_id(statement, plan),
            owner=self.identity,
            statement=statement,
            dataset=self.dataset,
            plan=plan,
            enclaves=(enclave,),
        )
        return enclave, TrainAuthorization(
            manifest, seal_data_key(enclave, self.data_key, manifest)
        )

    def run(
        self,
        session: Relay | RecordingSession,
        host: HostileHost,
        statement: SignedRecipeStatement,
        plan: Plan = PLAN,
    ) -> TrainOutcome:
        return run_training(
            session,  # type: ignore[arg-type]
            job_id=self.job_id(statement, plan),
            data_key=self.data_key,
            dataset=self.dataset,
            owner=self.identity,
            statement=statement,
            plan=plan,
            policy=policy(),
            state_dir=host.state_dir,
        )


def provider_statement(provider: Identity, recipe: bytes = RECIPE) -> SignedRecipeStatement:
    return make_statement(recipe, name="tiny", version="1", provider=provider)
