"""Helpers for the host service tests: small artifacts and API shortcuts."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from chiron.core import container, modelfile
from chiron.core.encoding import b64encode
from chiron.core.keys import Identity
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
    container.encrypt_dataset([(x, y)], path, key, schema=SCHEMA, record_count=records)
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


def register_recipe(api: Api, name: str = "mlp", input_schema: dict | None = None) -> dict:
    provider = Identity.generate()

    response = api.http.post(
        "/v1/recipes",
        json={
            "name": name,
            "description": "a small MLP",
            "task": "classification",
            "input_schema": input_schema,
            "provider_public": b64encode(provider.public.to_bytes()),
            "source": b64encode(RECIPE_SOURCE),
        },
        headers=bearer(api.operator["token"]),
    )
    assert response.status_code == 201, response.text
    return response.json()


def model_bytes() -> bytes:
    return make_model_file(Identity.generate(), Identity.generate())
