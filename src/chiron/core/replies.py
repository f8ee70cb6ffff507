"""What an enclave signs over what it returns, so a client believes only the enclave.

Evaluation reports and the owner's training report are HPKE-sealed to the owner (or to
a reply key only the owner's client holds), which keeps them secret but does not say
who sealed them: anyone who knows the public key can seal. So the enclave also signs,
with the key its evidence authenticated, the digest of the sealed bytes together with
the request they answer. A client verifies that signature against the enclave it
attested before it opens anything: a host that forges or swaps a reply is caught, and
one reply cannot pass for the answer to another request.

Query answers need no signature: they travel under a query channel's answer key
(`core.query_channel.ChannelKeys`), which only the owner's client and the attested
enclave it sealed the channel's secret to hold, so the key itself authenticates them.
"""

from __future__ import annotations

import hashlib

from chiron.core import purposes
from chiron.core.crypto import sign, verify_signature
from chiron.core.encoding import canonical_json
from chiron.core.keys import Identity, PublicIdentity


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
