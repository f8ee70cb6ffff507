"""Model escrow and receipts: what the training enclave hands out at the end of a job.

The weights (and the recipe needed to run them) are encrypted under a fresh model key
that exists only in enclave memory. The key is split into two XOR shares, one sealed to
the owner and one to the provider, so neither party alone can read or use the model:
a query enclave rebuilds the key only when both have released their share to it.
"""

from __future__ import annotations

import json
import struct
import time
import uuid
from dataclasses import dataclass
from typing import Any

from chiron.core import modelfile, purposes
from chiron.core.crypto import random_key, seal, sign
from chiron.core.encoding import b64encode, canonical_json
from chiron.core.keys import PublicIdentity
from chiron.core.recipe_protocol import ReasonClass
from chiron.core.schema import DatasetSchema
from chiron.enclave.context import EnclaveContext
from chiron.enclave.sandbox import SandboxFailure

_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_ALLOWED_DTYPES = _FLOAT_DTYPES | {"I64", "I32", "I16", "I8", "U8", "BOOL"}


@dataclass(frozen=True)
class EscrowedModel:
    model_id: str
    file_bytes: bytes


def check_weights(weights: bytes) -> None:
    """Refuse a final model that is not a well-formed safetensors file.

    The size was already fixed by the declaration; this makes sure the bytes are
    really weights a query enclave can load, not an arbitrary blob.
    """
    try:
        (header_len,) = struct.unpack("<Q", weights[:8])
        header = json.loads(weights[8 : 8 + header_len].decode("utf-8"))
        end = 0
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            start, stop = entry["data_offsets"]
            if entry["dtype"] not in _ALLOWED_DTYPES or start != end or stop < start:
                raise ValueError("bad tensor entry")
            end = stop
        if 8 + header_len + end != len(weights):
            raise ValueError("trailing or missing bytes")
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise SandboxFailure(ReasonClass.BAD_OUTPUT) from None


def split_key(model_key: bytes) -> tuple[bytes, bytes]:
    """XOR secret sharing: each share alone is uniformly random and reveals nothing."""
    owner_share = random_key()
    return owner_share, bytes(a ^ b for a, b in zip(model_key, owner_share, strict=True))


def seal_model(
    context: EnclaveContext,
    *,
    schema: DatasetSchema,
    recipe_name: str,
    recipe_source: bytes,
    weights: bytes,
    query_policy: dict[str, Any],
    owner: PublicIdentity,
    provider: PublicIdentity,
) -> EscrowedModel:
    model_id = uuid.uuid4().hex
    model_key = random_key()
    owner_share, provider_share = split_key(model_key)
    header = modelfile.ModelHeader(
        model_id=model_id,
        schema=schema,
        query_policy=query_policy,
        owner=owner,
        provider=provider,
        owner_share=seal(
            owner.hpke_key,
            owner_share,
            purpose=purposes.MODEL_SHARE_ESCROW,
            context={"model_id": model_id, "party": "owner"},
        ),
        provider_share=seal(
            provider.hpke_key,
            provider_share,
            purpose=purposes.MODEL_SHARE_ESCROW,
            context={"model_id": model_id, "party": "provider"},
        ),
        owner_share_sha256=modelfile.share_digest(owner_share),
        provider_share_sha256=modelfile.share_digest(provider_share),
        measurement=context.measurement,
        created=int(time.time()),
    )
    payload = modelfile.ModelPayload(recipe_name, recipe_source, weights)
    return EscrowedModel(model_id, modelfile.encrypt_model(header, payload, model_key))


def sign_receipt(context: EnclaveContext, body: dict[str, Any]) -> bytes:
    """A receipt verifiable offline: signed by this enclave, and attested over its hash.

    The evidence's nonce is the SHA-256 of the receipt body, so the platform itself
    vouches that an enclave with this measurement and this signing key issued it.
    """
    statement = {
        **body,
        "measurement": context.measurement,
        "platform": context.platform_name,
        "enclave_identity": b64encode(context.identity.public.to_bytes()),
        "issued_at": int(time.time()),
    }
    message = canonical_json(statement)
    signature = sign(context.identity.signing_key, message, purpose=purposes.TRAINING_RECEIPT)
    evidence = context.evidence(modelfile.receipt_nonce(message))
    document = {
        "type": "chiron.receipt",
        "version": 1,
        "statement": statement,
        "signature": b64encode(signature),
        "evidence": b64encode(evidence),
    }
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")
