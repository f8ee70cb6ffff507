"""What an enclave signs over what it returns, so a client believes only the enclave.

Answers, evaluation reports and the owner's training report are HPKE-sealed to the
owner (or to a reply key only the owner's client holds), which keeps them secret but
does not say who sealed them: anyone who knows the public key can seal. So the enclave
also signs, with the key its evidence authenticated, the digest of the sealed bytes
together with the request they answer. A client verifies that signature against the
enclave it attested before it opens anything: a host that forges or swaps a reply is
caught, and one reply cannot pass for the answer to another request.
"""

from __future__ import annotations

import hashlib

from chiron.core import purposes
from chiron.core.crypto import sign, verify_signature
from chiron.core.encoding import canonical_json
from chiron.core.keys import Identity, PublicIdentity


def _query_answers(
    model_id: str, request_id: str, sealed_answers: bytes, budget_left: int | None
) -> bytes:
    return canonical_json(
        {
            "model_id": model_id,
            "request_id": request_id,
            "sealed_sha256": hashlib.sha256(sealed_answers).hexdigest(),
            "budget_left": budget_left,
        }
    )


def _evaluation_report(model_id: str, request_id: str, sealed_report: bytes) -> bytes:
    return canonical_json(
        {
            "model_id": model_id,
            "request_id": request_id,
            "sealed_sha256": hashlib.sha256(sealed_report).hexdigest(),
        }
    )


def _owner_report(manifest_digest: str, sealed_report: bytes) -> bytes:
    return canonical_json(
        {"manifest": manifest_digest, "sealed_sha256": hashlib.sha256(sealed_report).hexdigest()}
    )


def sign_query_answers(
    enclave: Identity, model_id: str, request_id: str, sealed: bytes, budget_left: int | None
) -> bytes:
    message = _query_answers(model_id, request_id, sealed, budget_left)
    return sign(enclave.signing_key, message, purpose=purposes.QUERY_ANSWERS_SIGNATURE)


def verify_query_answers(
    enclave: PublicIdentity,
    signature: bytes,
    model_id: str,
    request_id: str,
    sealed: bytes,
    budget_left: int | None,
) -> None:
    verify_signature(
        enclave.signing_key,
        signature,
        _query_answers(model_id, request_id, sealed, budget_left),
        purpose=purposes.QUERY_ANSWERS_SIGNATURE,
        what="the query enclave's signature on its answers",
    )


def sign_evaluation_report(
    enclave: Identity, model_id: str, request_id: str, sealed: bytes
) -> bytes:
    message = _evaluation_report(model_id, request_id, sealed)
    return sign(enclave.signing_key, message, purpose=purposes.EVALUATION_REPORT_SIGNATURE)


def verify_evaluation_report(
    enclave: PublicIdentity, signature: bytes, model_id: str, request_id: str, sealed: bytes
) -> None:
    verify_signature(
        enclave.signing_key,
        signature,
        _evaluation_report(model_id, request_id, sealed),
        purpose=purposes.EVALUATION_REPORT_SIGNATURE,
        what="the query enclave's signature on the evaluation report",
    )


def sign_owner_report(enclave: Identity, manifest_digest: str, sealed: bytes) -> bytes:
    message = _owner_report(manifest_digest, sealed)
    return sign(enclave.signing_key, message, purpose=purposes.OWNER_REPORT_SIGNATURE)


def verify_owner_report(
    enclave: PublicIdentity, signature: bytes, manifest_digest: str, sealed: bytes
) -> None:
    verify_signature(
        enclave.signing_key,
        signature,
        _owner_report(manifest_digest, sealed),
        purpose=purposes.OWNER_REPORT_SIGNATURE,
        what="the training enclave's signature on the owner's report",
    )
