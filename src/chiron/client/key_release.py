"""The owner's side of key release: relay the provider's share from its agent to the enclave.

The owner's client never holds the provider's key. It asks the provider's key-release
agent (`chiron keys serve`, see `core.key_release`) for a challenge, has the query
enclave it attested and loaded the model into make evidence over it, signs the request
and passes the agent's answer (the provider's share sealed to that enclave) straight to
the enclave. Nothing of it is written to disk, and nothing in it opens with the
owner's key.
"""

from __future__ import annotations

from typing import Any

import httpx

from chiron.client.sessions import EnclaveSession
from chiron.core import modelfile, purposes
from chiron.core.attestation import Evidence
from chiron.core.crypto import sign
from chiron.core.errors import InputError, IntegrityError, KeyReleaseRefused, UsageError
from chiron.core.key_release import (
    CHALLENGE_PATH,
    INFO_PATH,
    RELEASE_PATH,
    AgentInfo,
    Challenge,
    ReleaseGranted,
    ReleaseRefusal,
    ReleaseRequest,
)
from chiron.core.keys import Identity, PublicIdentity

MAX_ANSWER_BYTES = 1024 * 1024


class KeyReleaseClient:
    """HTTP client of one provider's key-release agent."""

    def __init__(self, url: str, *, timeout: float = 60.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(
                f"--provider takes the URL of the provider's key-release agent "
                f"(http://HOST:PORT, from `chiron keys serve`), not {url!r}"
            )
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KeyReleaseClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise KeyReleaseRefused(
                f"the provider's key-release agent at {self.url} cannot be reached "
                f"({type(exc).__name__}): the provider must run `chiron keys serve`"
            ) from None
        if len(response.content) > MAX_ANSWER_BYTES:
            raise KeyReleaseRefused(f"the key-release agent at {self.url} answered too much")
        try:
            document = response.json()
        except ValueError:
            document = None
        if response.status_code == 403 and isinstance(document, dict):
            raise KeyReleaseRefused(ReleaseRefusal.from_wire(document).message)
        if response.status_code != 200 or not isinstance(document, dict):
            error = document.get("error") if isinstance(document, dict) else None
            detail = str(error)[:300] if error else f"HTTP {response.status_code}"
            raise KeyReleaseRefused(f"the key-release agent at {self.url} failed: {detail}")
        return document

    def info(self) -> AgentInfo:
        return AgentInfo.from_wire(self._request("GET", INFO_PATH))

    def challenge(self) -> Challenge:
        return Challenge.from_wire(self._request("POST", CHALLENGE_PATH, {}))

    def release(self, request: ReleaseRequest) -> ReleaseGranted:
        return ReleaseGranted.from_wire(self._request("POST", RELEASE_PATH, request.to_wire()))


class AgentShareSource:
    """The provider's share, released by the provider's agent to an attested enclave."""

    def __init__(self, url: str, *, timeout: float = 60.0) -> None:
        self._client = KeyReleaseClient(url, timeout=timeout)

    @property
    def url(self) -> str:
        return self._client.url

    def close(self) -> None:
        self._client.close()

    def sealed_share(
        self,
        session: EnclaveSession,
        header: modelfile.ModelHeader,
        enclave: PublicIdentity,
        owner: Identity,
    ) -> bytes:
        """Ask the agent to seal the provider's share to `enclave` (already attested)."""
        info = self._client.info()
        if info.provider != header.provider:
            raise InputError(
                f"the key-release agent at {self.url} releases for provider "
                f"{info.provider.fingerprint[:16]}…, not for this model's provider "
                f"{header.provider.fingerprint[:16]}…"
            )
        challenge = self._client.challenge()
        # Asked after load_model: the evidence names the model this enclave now serves.
        evidence = session.evidence(challenge.nonce)
        # The agent seals to whatever key this evidence authenticates; the owner's share
        # went to the key attested before. Both must be the same enclave, or the host
        # swapped it in between (and neither share would be of use there anyway).
        if Evidence.from_bytes(evidence).identity != enclave:
            raise IntegrityError(
                "the query enclave answering now is not the one the owner attested"
            )
        signature = sign(
            owner.signing_key,
            ReleaseRequest.signed_message(challenge.nonce, header, evidence, info.provider),
            purpose=purposes.KEY_RELEASE_REQUEST,
        )
        granted = self._client.release(
            ReleaseRequest(challenge.nonce, header, evidence, signature)
        )
        if granted.model_id != header.model_id:
            raise IntegrityError("the key-release agent answered for another model")
        return granted.sealed_share
