"""Helpers for the host service tests: small artifacts and API shortcuts."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from chiron.core import modelfile
from chiron.core.dataset import encrypt_dataset, read_dataset_header_and_digest
from chiron.core.encoding import b64encode
from chiron.core.keys import Identity, PublicIdentity
from chiron.core.manifest import DatasetRef, Plan, SignedManifest, new_manifest
from chiron.core.recipe_statement import SignedRecipeStatement, make_statement
from chiron.core.schema import DatasetSchema
from chiron.host.service import Service

SCHEMA = DatasetSchema((4,), "float32", 3, ("a", "b", "c"))
RECIPE_SOURCE = b"HYPERPARAMETERS = {'epochs': 1}\n"


@dataclass
class Api:
    """A TestClient on a fresh service plus the tokens of its accounts."""

    service: Service
    http: TestClient
    operator: dict[str, str]
    owner: dict[str, str]
    other_owner: dict[str, str]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def make_dataset(path: Path, records: int = 40, seed: int = 0) -> bytes:
    """Write a small encrypted dataset; return its data key."""
    rng = np.random.default_rng(seed)
    x = rng.random((records, 4), dtype=np.float32)
    y = np.arange(records) % 3
    key = os.urandom(32)
    encrypt_dataset([(x, y)], path, key, schema=SCHEMA, record_count=records)
    return key


def make_model_file(owner: Identity, provider: Identity, model_id: str = "m" * 32) -> bytes:
    """An escrowed model file with a valid public header (its payload is never opened here)."""
    share = os.urandom(32)
    header = modelfile.ModelHeader(
        model_id=model_id,
        schema=SCHEMA,
        query_policy={"answers": "labels", "budget": None},
        owner=owner.public,
        provider=provider.public,
        owner_share=share,
        provider_share=share,
        owner_share_sha256=modelfile.share_digest(share),
        provider_share_sha256=modelfile.share_digest(share),
        measurement="0" * 64,
        created=0,
    )
    payload = modelfile.ModelPayload("recipe.py", RECIPE_SOURCE, b"\0" * 16)
    return modelfile.encrypt_model(header, payload, os.urandom(32))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def upload_bytes(
    api: Api, token: str, data: bytes, kind: str = "dataset", chunk: int = 1000
) -> dict:
    """Upload `data` in chunks through the API and complete it."""
    created = api.http.post(
        "/v1/uploads",
        json={"kind": kind, "size": len(data), "sha256": sha256(data)},
        headers=bearer(token),
    )
    assert created.status_code == 201, created.text
    upload_id = created.json()["id"]
    for offset in range(0, len(data), chunk):
        piece = data[offset : offset + chunk]
        response = api.http.put(
            f"/v1/uploads/{upload_id}/chunks",
            params={"offset": offset, "sha256": sha256(piece)},
            content=piece,
            headers=bearer(token),
        )
        assert response.status_code == 200, response.text
    done = api.http.post(f"/v1/uploads/{upload_id}/complete", headers=bearer(token))
    assert done.status_code == 200, done.text
    return done.json()


# One provider identity for the operator account: an account registers under one identity.
PROVIDER = Identity.generate()


def signed_statement(
    name: str = "mlp",
    source: bytes = RECIPE_SOURCE,
    provider: Identity = PROVIDER,
    version: str = "1",
) -> bytes:
    """The provider's signed statement over `source` (what registration requires)."""
    return make_statement(source, name=name, version=version, provider=provider).to_bytes()


def recipe_body(
    name: str = "mlp",
    source: bytes = RECIPE_SOURCE,
    provider: Identity = PROVIDER,
    input_schema: dict | None = None,
) -> dict:
    return {
        "name": name,
        "description": "a small MLP",
        "task": "classification",
        "input_schema": input_schema,
        "source": b64encode(source),
        "statement": b64encode(signed_statement(name, source, provider)),
    }


def register_recipe(
    api: Api,
    name: str = "mlp",
    input_schema: dict | None = None,
    provider: Identity = PROVIDER,
    source: bytes = RECIPE_SOURCE,
) -> dict:
    response = api.http.post(
        "/v1/recipes",
        json=recipe_body(name, source, provider, input_schema),
        headers=bearer(api.operator["token"]),
    )
    assert response.status_code == 201, response.text
    return response.json()


def sign_manifest(
    *,
    job_id: str,
    owner: Identity,
    statement: bytes,
    dataset: Path,
    enclaves: tuple[PublicIdentity, ...],
    source: bytes = RECIPE_SOURCE,
    plan: Plan | None = None,
    dataset_ref: DatasetRef | None = None,
) -> SignedManifest:
    """The owner's signed manifest for a job on `source` and the dataset file `dataset`."""
    signed = SignedRecipeStatement.from_bytes(statement)
    header, header_sha256 = read_dataset_header_and_digest(dataset)
    return new_manifest(
        job_id=job_id,
        owner=owner,
        provider=signed.provider,
        recipe_sha256=sha256(source),
        recipe_statement_sha256=signed.sha256,
        dataset=dataset_ref or DatasetRef(header.dataset_id, header_sha256),
        plan=plan or Plan(seed=0),
        enclaves=enclaves,
    )


def model_bytes() -> bytes:
    return make_model_file(Identity.generate(), Identity.generate())
