"""A cheap escrowed model for tests that need one without training: a tiny recipe's
initial weights, escrowed exactly as the training enclave does (`enclave.escrow`)."""

from __future__ import annotations

import textwrap
from typing import Any

from chiron.core import modelfile, purposes, query_protocol
from chiron.core.crypto import random_key, seal
from chiron.core.keys import Identity
from chiron.core.schema import DatasetSchema

SCHEMA = DatasetSchema((1, 4, 4), "uint8", 3)
QUERY_POLICY = {"output": "probabilities", "rounding": 3, "budget": 1000}
RECIPE = textwrap.dedent(
    """
    import torch.nn as nn

    HYPERPARAMETERS = {"epochs": 1, "batch_size": 8, "lr": 0.01}

    def build_model(schema):
        c, h, w = schema.input_shape
        return nn.Sequential(
            nn.Flatten(), nn.Linear(c * h * w, 8), nn.ReLU(), nn.Linear(8, schema.num_classes)
        )
    """
).encode()


def probe_weights(recipe: bytes = RECIPE, schema: DatasetSchema = SCHEMA) -> bytes:
    """Safetensors weights of `recipe` on `schema`, as the sandbox's query mode expects."""
    from chiron.recipes.hooks import load_recipe
    from chiron.recipes.loop import declare

    _, probe = declare(load_recipe(recipe, filename="tiny.py"), schema)
    return probe.model_weights()


def escrow(
    owner: Identity,
    provider: Identity,
    weights: bytes,
    model_id: str,
    *,
    recipe: bytes = RECIPE,
    query_policy: dict[str, Any] | None = None,
    schema: DatasetSchema = SCHEMA,
) -> bytes:
    """A model file as the training enclave writes one (`enclave.escrow.seal_model`)."""
    model_key, owner_share = random_key(), random_key()
    shares = {
        "owner": owner_share,
        "provider": bytes(a ^ b for a, b in zip(model_key, owner_share, strict=True)),
    }
    sealed = {
        party: seal(
            identity.public.hpke_key,
            shares[party],
            purpose=purposes.MODEL_SHARE_ESCROW,
            context={"model_id": model_id, "party": party},
        )
        for party, identity in (("owner", owner), ("provider", provider))
    }
    header = modelfile.ModelHeader(
        model_id=model_id,
        schema=schema,
        query_policy=query_protocol.normalize_query_policy(query_policy or QUERY_POLICY),
        owner=owner.public,
        provider=provider.public,
        owner_share=sealed["owner"],
        provider_share=sealed["provider"],
        owner_share_sha256=modelfile.share_digest(shares["owner"]),
        provider_share_sha256=modelfile.share_digest(shares["provider"]),
        measurement="0" * 64,
        created=0,
    )
    payload = modelfile.ModelPayload("tiny.py", recipe, weights)
    return modelfile.encrypt_model(header, payload, model_key)
