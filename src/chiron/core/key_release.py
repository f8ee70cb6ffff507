"""The key-release protocol: how a provider's share reaches an attested query enclave.

A model's key is split into an owner's and a provider's share (`enclave.escrow`). The
owner's client re-seals the owner's share itself; the provider's share is released by
the provider's *key-release agent* (`chiron keys serve`), which holds the provider's
private key on the provider's own machine and hands the share out only in one form:
sealed to the key of a query enclave whose evidence satisfies the provider's release
policy (`core.release_policy`). The owner's client only relays: it never holds the
provider's key nor anything it could open with its own.

Conversation (O = the owner's client, A = the provider's agent, E = the query enclave
the owner attested and loaded the model into), JSON over HTTP, bytes base64:

    O→A GET  /v1/info        → {"provider": base64 64-byte public identity,
                                 "challenge_seconds": int}
                               (O checks it is the provider named in the model file)
    O→A POST /v1/challenge   {} → {"challenge": base64 32 bytes, "expires_at": unix time}
                               A remembers it; it is good for one release request and
                               expires after `challenge_seconds`
    O→E attest(challenge)    → evidence over the challenge, made after `load_model`: its
                               role is `query` and its binding is the model id
    O→A POST /v1/release     {"challenge", "model_id", "header": the model file's public
                              header metadata (`ModelHeader.to_metadata`), "evidence",
                              "owner_signature": the owner's signature (purpose
                              key-release-request) over `ReleaseRequest.signed_message`}
        → 200 {"model_id", "sealed_share": the provider's share, HPKE-sealed to the key
               the evidence authenticates (purpose model-share, context
               {"model_id", "party": "provider"})}
        → 403 {"error": one line, "failures": [{"name", "reason"}, ...]}: every failed
               check of the release policy, never only the first
        → 400 {"error": one line}: a malformed request
    O→E provision_share(party="provider", sealed_share)

Why each piece:
- The challenge comes from the agent, so the evidence is fresh for *this* release: a
  recorded piece of evidence (an enclave that has since been restarted, or one the
  host wants to replay) does not verify against a new challenge. A challenge is removed
  when it is first presented, whether the release succeeds or not.
- The evidence is requested after `load_model`, so its binding names the model the
  enclave serves for the rest of its life: the share goes to an enclave that can use it
  for this model and no other.
- The escrowed share opens only under its model id (the HPKE context), so the model id
  the agent checks against the evidence is the one the share belongs to.
- The owner signs the request, so nobody without the owner's key (the host relaying
  the enclave's traffic, another client of the agent) can draw on that owner's release
  limit; the agent counts releases under the owner the header names and remembers the
  first owner named for each model.
- Other header fields (the owner, the query policy) are as the header states: they are
  authenticated by the model key, which the agent never sees. A client that edits them
  gets a share for an enclave loaded with the real file, whose own checks then fail
  (the shares' digests and the whole file are authenticated when both shares arrive);
  see docs/key-release.md for what that leaves open.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from chiron.core import modelfile, purposes
from chiron.core.attestation.report import CheckResult
from chiron.core.crypto import open_sealed, seal
from chiron.core.encoding import b64decode, b64encode, canonical_json
from chiron.core.errors import InputError, KeyFileError
from chiron.core.identifiers import check_model_id
from chiron.core.keys import Identity, PublicIdentity
from chiron.core.limits import MAX_EVIDENCE_BYTES, MAX_SIGNATURE_BYTES

PROTOCOL_VERSION = 1
INFO_PATH = "/v1/info"
CHALLENGE_PATH = "/v1/challenge"
RELEASE_PATH = "/v1/release"

CHALLENGE_BYTES = 32
DEFAULT_CHALLENGE_SECONDS = 120
# A release request carries evidence (at most 256 KiB) and a model header (a schema,
# a query policy, two sealed shares): a generous bound that still stops a flood.
MAX_REQUEST_BYTES = 1024 * 1024
MAX_SEALED_SHARE_BYTES = 4096
PARTY = "provider"


def _field(document: Any, key: str, what: str) -> Any:
    if not isinstance(document, dict) or key not in document:
        raise InputError(f"malformed {what}: {key} is missing")
    return document[key]


def _bytes_field(document: Any, key: str, what: str, limit: int) -> bytes:
    value = _field(document, key, what)
    try:
        raw = b64decode(value) if isinstance(value, str) else None
    except ValueError:
        raw = None
    if raw is None or len(raw) > limit:
        raise InputError(f"malformed {what}: {key} must be base64 of at most {limit} bytes")
    return raw


def _model_id_field(document: Any, what: str) -> str:
    value = _field(document, "model_id", what)
    try:
        return check_model_id(value)
    except InputError:
        raise InputError(f"malformed {what}: model_id is not a model id") from None


def header_digest(header: modelfile.ModelHeader) -> str:
    """SHA-256 of a model header's canonical public form (what the owner signs)."""
    return hashlib.sha256(
        b"chiron/model-header/v1\x00"
        + canonical_json({"model_id": header.model_id, "metadata": header.to_metadata()})
    ).hexdigest()


def share_context(model_id: str) -> dict[str, str]:
    """The sealing context of the provider's share, to the escrow and to an enclave."""
    return {"model_id": model_id, "party": PARTY}


def open_escrowed_share(identity: Identity, header: modelfile.ModelHeader, party: str) -> bytes:
    """A party's share as the training enclave sealed it to that party's key."""
    return open_sealed(
        identity.hpke_key,
        header.share_for(party),
        purpose=purposes.MODEL_SHARE_ESCROW,
        context={"model_id": header.model_id, "party": party},
        what=f"the {party}'s key share",
    )


def seal_share_to_enclave(
    enclave: PublicIdentity, share: bytes, model_id: str, party: str
) -> bytes:
    """A share sealed to an attested query enclave: the only form it ever leaves in."""
    return seal(
        enclave.hpke_key,
        share,
        purpose=purposes.MODEL_SHARE_PROVISION,
        context={"model_id": model_id, "party": party},
    )


@dataclass(frozen=True)
class AgentInfo:
    """Who an agent releases for: the provider's public identity."""

    provider: PublicIdentity
    challenge_seconds: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "version": PROTOCOL_VERSION,
            "provider": b64encode(self.provider.to_bytes()),
            "challenge_seconds": self.challenge_seconds,
        }

    @classmethod
    def from_wire(cls, document: Any) -> AgentInfo:
        what = "key-release agent info"
        if _field(document, "version", what) != PROTOCOL_VERSION:
            raise InputError("the key-release agent speaks another protocol version")
        seconds = _field(document, "challenge_seconds", what)
        if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds <= 0:
            raise InputError(f"malformed {what}: challenge_seconds")
        try:
            provider = PublicIdentity.from_bytes(_bytes_field(document, "provider", what, 64))
        except KeyFileError:
            raise InputError(f"malformed {what}: provider is not a public identity") from None
        return cls(provider, seconds)


@dataclass(frozen=True)
class Challenge:
    """A fresh, single-use nonce the enclave's evidence must be made over."""

    nonce: bytes
    expires_at: int

    def to_wire(self) -> dict[str, Any]:
        return {"challenge": b64encode(self.nonce), "expires_at": self.expires_at}

    @classmethod
    def from_wire(cls, document: Any) -> Challenge:
        what = "key-release challenge"
        nonce = _bytes_field(document, "challenge", what, CHALLENGE_BYTES)
        expires_at = _field(document, "expires_at", what)
        if len(nonce) != CHALLENGE_BYTES or not isinstance(expires_at, int):
            raise InputError(f"malformed {what}")
        return cls(nonce, expires_at)


@dataclass(frozen=True)
class ReleaseRequest:
    """The owner's client asking for the provider's share for one attested enclave."""

    challenge: bytes
    header: modelfile.ModelHeader
    evidence: bytes
    owner_signature: bytes

    @property
    def model_id(self) -> str:
        return self.header.model_id

    @staticmethod
    def signed_message(
        challenge: bytes, header: modelfile.ModelHeader, evidence: bytes, provider: PublicIdentity
    ) -> bytes:
        """What the owner signs: this challenge, this model, this evidence, this agent."""
        return canonical_json(
            {
                "challenge": challenge.hex(),
                "model_id": header.model_id,
                "header_sha256": header_digest(header),
                "evidence_sha256": hashlib.sha256(evidence).hexdigest(),
                "provider": provider.fingerprint,
            }
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "challenge": b64encode(self.challenge),
            "model_id": self.header.model_id,
            "header": self.header.to_metadata(),
            "evidence": b64encode(self.evidence),
            "owner_signature": b64encode(self.owner_signature),
        }

    @classmethod
    def from_wire(cls, document: Any) -> ReleaseRequest:
        what = "release request"
        model_id = _model_id_field(document, what)
        metadata = _field(document, "header", what)
        if not isinstance(metadata, dict):
            raise InputError(f"malformed {what}: header must be the model's header metadata")
        try:
            header = modelfile.ModelHeader.from_metadata(model_id, metadata)
        except InputError:
            raise InputError(f"malformed {what}: header is not a model header") from None
        return cls(
            challenge=_bytes_field(document, "challenge", what, CHALLENGE_BYTES),
            header=header,
            evidence=_bytes_field(document, "evidence", what, MAX_EVIDENCE_BYTES),
            owner_signature=_bytes_field(document, "owner_signature", what, MAX_SIGNATURE_BYTES),
        )


@dataclass(frozen=True)
class ReleaseGranted:
    """The provider's share, sealed to the attested enclave (opaque to the owner)."""

    model_id: str
    sealed_share: bytes

    def to_wire(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "sealed_share": b64encode(self.sealed_share)}

    @classmethod
    def from_wire(cls, document: Any) -> ReleaseGranted:
        what = "key-release answer"
        return cls(
            _model_id_field(document, what),
            _bytes_field(document, "sealed_share", what, MAX_SEALED_SHARE_BYTES),
        )


@dataclass(frozen=True)
class ReleaseRefusal:
    """Every check of the provider's release policy that failed, with its reason."""

    failures: tuple[CheckResult, ...]

    @property
    def message(self) -> str:
        reasons = "; ".join(f"{check.name}: {check.reason}" for check in self.failures)
        return f"the provider's key-release agent refused: {reasons or 'no reason given'}"

    def to_wire(self) -> dict[str, Any]:
        return {"error": self.message, "failures": [c.to_dict() for c in self.failures]}

    @classmethod
    def from_wire(cls, document: Any) -> ReleaseRefusal:
        failures = document.get("failures") if isinstance(document, dict) else None
        if not isinstance(failures, list):
            raise InputError("malformed key-release refusal")
        parsed = []
        for item in failures[:64]:
            if not isinstance(item, dict):
                raise InputError("malformed key-release refusal")
            name, reason = item.get("name"), item.get("reason")
            if not isinstance(name, str) or not isinstance(reason, str):
                raise InputError("malformed key-release refusal")
            # Text from the network: bounded, one line (ChironError flattens it too).
            parsed.append(CheckResult(name[:64], False, reason[:300]))
        return cls(tuple(parsed))
