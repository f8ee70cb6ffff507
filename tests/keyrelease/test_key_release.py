"""Issue 12, the two-party part: the provider's share comes only from its key-release agent.

The owner's client holds the owner's key and nothing of the provider's; the agent (the
real `KeyReleaseAgent` behind its real HTTP server) checks a real query enclave's
evidence against the provider's release policy. Each refusal names its reason, and the
provider's share never exists anywhere the owner could open it.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import socket
import time

import numpy as np
import pytest

from chiron.client.key_release import AgentShareSource, KeyReleaseClient
from chiron.client.querying import query, unlock_model
from chiron.client.sessions import LocalEnclaveSession
from chiron.core import modelfile, purposes
from chiron.core.crypto import open_sealed, sign
from chiron.core.errors import InputError, IntegrityError, KeyReleaseRefused
from chiron.core.key_release import (
    ReleaseGranted,
    ReleaseRefusal,
    ReleaseRequest,
    open_escrowed_share,
)
from chiron.core.keys import Identity

from .conftest import Scene, escrow

pytestmark = pytest.mark.slow


def inputs(count: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, size=(count, 1, 4, 4)).astype(np.uint8)


def started(scene: Scene):
    """A fresh query enclave whose simulation root exists (the agent may then pin it)."""
    enclave = scene.enclave()
    enclave.evidence(os.urandom(32))
    return enclave


def unlock(scene: Scene, enclave, url: str):
    return unlock_model(
        enclave,
        model=scene.model,
        owner=scene.owner,
        provider=AgentShareSource(url),
        policy=scene.policy,
        state_dir=scene.enclave_state,
    )


def loaded(scene: Scene, enclave) -> modelfile.ModelHeader:
    """What the owner's client does before asking the agent: load the model."""
    enclave.call("load_model", {"model": scene.model})
    return modelfile.read_model_header(scene.model)


def signed_request(
    scene: Scene,
    agent,
    header: modelfile.ModelHeader,
    evidence: bytes,
    challenge: bytes,
    signer: Identity | None = None,
) -> ReleaseRequest:
    message = ReleaseRequest.signed_message(challenge, header, evidence, agent.info.provider)
    signature = sign(
        (signer or scene.owner).signing_key, message, purpose=purposes.KEY_RELEASE_REQUEST
    )
    return ReleaseRequest(challenge, header, evidence, signature)


def refused_checks(outcome: ReleaseGranted | ReleaseRefusal) -> set[str]:
    assert isinstance(outcome, ReleaseRefusal), "the agent released the share"
    return {check.name for check in outcome.failures}


# -- the one way that works ---------------------------------------------------------------


def test_the_owner_key_and_a_running_agent_unlock_the_model(scene, serve):
    enclave = started(scene)
    url = serve(scene.agent())
    unlocked = unlock(scene, enclave, url)
    answers, budget_left = query(unlocked, inputs())
    assert len(answers) == 3 and budget_left == 997


def test_the_agent_logs_decisions_never_a_share(scene, serve):
    lines: list[str] = []
    enclave = started(scene)
    agent = scene.agent(log=lines.append)
    shares = []
    source = AgentShareSource(serve(agent))
    original = source.sealed_share

    def recording(*args, **kwargs):
        shares.append(original(*args, **kwargs))
        return shares[-1]

    source.sealed_share = recording  # type: ignore[method-assign]
    unlock_model(
        enclave,
        model=scene.model,
        owner=scene.owner,
        provider=source,
        policy=scene.policy,
        state_dir=scene.enclave_state,
    )
    (line,) = lines
    assert line.startswith(f"released model {scene.model_id}")
    share = open_escrowed_share(
        scene.provider, modelfile.read_model_header(scene.model), "provider"
    )
    for text in lines:
        for form in (
            share.hex(),
            base64.b64encode(share).decode(),
            base64.b64encode(shares[0]).decode(),
        ):
            assert form not in text


# -- refusals, each with its reason ---------------------------------------------------------


def test_without_a_running_agent_the_query_is_refused(scene):
    enclave = started(scene)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(KeyReleaseRefused, match=r"cannot be reached.*chiron keys serve"):
        unlock(scene, enclave, f"http://127.0.0.1:{port}")


def test_a_revoked_model_opens_in_no_new_enclave(scene, serve):
    agent = scene.agent()
    url = serve(agent)
    unlock(scene, started(scene), url)
    assert agent.state.revoke(scene.model_id) is True
    with pytest.raises(KeyReleaseRefused, match=f"revocation: model {scene.model_id} is revoked"):
        unlock(scene, started(scene), url)


def test_an_enclave_whose_measurement_the_policy_does_not_list_is_refused(scene, serve):
    enclave = started(scene)
    policy = dataclasses.replace(scene.release_policy(), measurements=("ab" * 32,))
    url = serve(scene.agent(policy))
    with pytest.raises(KeyReleaseRefused, match=r"measurement: runtime .* is not the expected"):
        unlock(scene, enclave, url)


def test_simulated_evidence_is_refused_unless_the_policy_allows_it(scene, serve):
    enclave = started(scene)
    policy = dataclasses.replace(scene.release_policy(), UNSAFE_allow_simulation=False)
    url = serve(scene.agent(policy))
    with pytest.raises(KeyReleaseRefused, match="simulation: the evidence is simulated"):
        unlock(scene, enclave, url)


def test_a_simulation_root_the_agent_has_not_pinned_is_refused(scene, serve):
    enclave = started(scene)
    agent = scene.agent()
    for path in (agent.state.directory / "sim-roots").glob("*.json"):
        path.unlink()
    with pytest.raises(KeyReleaseRefused, match="root of trust: unknown root"):
        unlock(scene, enclave, serve(agent))


def test_a_training_enclave_gets_no_share(scene):
    """Role: the evidence of a training enclave names another role and no model."""
    training = LocalEnclaveSession("train", scene.enclave_state)
    scene.sessions.append(training)
    agent = scene.agent()
    challenge = agent.challenge().nonce
    evidence = training.evidence(challenge)
    header = modelfile.read_model_header(scene.model)
    outcome = agent.release(signed_request(scene, agent, header, evidence, challenge))
    assert {"role", "model binding"} <= refused_checks(outcome)
    reasons = {check.name: check.reason for check in outcome.failures}
    assert "a train enclave, not a query enclave" in reasons["role"]


def test_evidence_of_an_enclave_that_has_not_loaded_the_model_is_refused(scene):
    enclave = started(scene)
    agent = scene.agent()
    challenge = agent.challenge().nonce
    evidence = enclave.evidence(challenge)
    header = modelfile.read_model_header(scene.model)
    outcome = agent.release(signed_request(scene, agent, header, evidence, challenge))
    assert refused_checks(outcome) == {"model binding"}
    assert "has loaded no model yet" in outcome.failures[0].reason


def test_a_replayed_challenge_is_refused(scene):
    enclave = started(scene)
    agent = scene.agent()
    header = loaded(scene, enclave)
    challenge = agent.challenge().nonce
    request = signed_request(scene, agent, header, enclave.evidence(challenge), challenge)
    assert isinstance(agent.release(request), ReleaseGranted)
    replayed = agent.release(request)
    assert refused_checks(replayed) == {"challenge"}
    assert "already used" in replayed.failures[0].reason


def test_a_challenge_the_agent_never_issued_is_refused(scene):
    enclave = started(scene)
    agent = scene.agent()
    header = loaded(scene, enclave)
    nonce = os.urandom(32)
    outcome = agent.release(signed_request(scene, agent, header, enclave.evidence(nonce), nonce))
    assert refused_checks(outcome) == {"challenge"}


def test_an_expired_challenge_is_refused(scene):
    enclave = started(scene)
    now = [time.time()]
    agent = scene.agent(clock=lambda: now[0], challenge_seconds=30)
    header = loaded(scene, enclave)
    challenge = agent.challenge().nonce
    evidence = enclave.evidence(challenge)
    now[0] += 31
    outcome = agent.release(signed_request(scene, agent, header, evidence, challenge))
    assert "challenge" in refused_checks(outcome)
    assert "expired" in outcome.failures[0].reason


def test_past_the_policy_expiry_nothing_is_released(scene, serve):
    enclave = started(scene)
    url = serve(scene.agent(scene.release_policy(not_after=int(time.time()) - 1)))
    with pytest.raises(KeyReleaseRefused, match="expiry: the release policy expired at"):
        unlock(scene, enclave, url)


def test_the_per_owner_limit_counts_releases_in_the_agent_state(scene, serve):
    agent = scene.agent(scene.release_policy(max_releases_per_owner=2))
    url = serve(agent)
    unlock(scene, started(scene), url)
    unlock(scene, started(scene), url)
    with pytest.raises(KeyReleaseRefused, match="release limit: this owner has had all 2"):
        unlock(scene, started(scene), url)
    # The count lives in the agent's state: a restarted agent remembers it.
    restarted = scene.agent(scene.release_policy(max_releases_per_owner=2))
    with pytest.raises(KeyReleaseRefused, match="release limit"):
        unlock(scene, started(scene), serve(restarted))


def test_a_request_not_signed_by_the_models_owner_is_refused(scene):
    enclave = started(scene)
    agent = scene.agent()
    header = loaded(scene, enclave)
    challenge = agent.challenge().nonce
    evidence = enclave.evidence(challenge)
    request = signed_request(scene, agent, header, evidence, challenge, signer=Identity.generate())
    assert refused_checks(agent.release(request)) == {"owner signature"}


def test_the_query_policy_must_be_one_the_provider_allows(scene, serve):
    enclave = started(scene)
    url = serve(scene.agent(scene.release_policy(query_policy_digests=("cd" * 32,))))
    with pytest.raises(KeyReleaseRefused, match=r"query policy: query policy .* is not one"):
        unlock(scene, enclave, url)


def test_every_failed_check_is_reported_not_only_the_first(scene):
    enclave = started(scene)
    policy = scene.release_policy(not_after=0, max_releases_per_owner=1)
    agent = scene.agent(dataclasses.replace(policy, measurements=("ab" * 32,)))
    agent.state.revoke(scene.model_id)
    challenge = agent.challenge().nonce
    evidence = enclave.evidence(challenge)  # before load_model: no binding
    header = modelfile.read_model_header(scene.model)
    outcome = agent.release(
        signed_request(scene, agent, header, evidence, challenge, signer=Identity.generate())
    )
    assert {"measurement", "model binding", "revocation", "expiry", "owner signature"} <= (
        refused_checks(outcome)
    )
    assert outcome.message.count(";") >= 4 and "\n" not in outcome.message


def test_the_agent_rejects_a_model_escrowed_to_another_provider(scene, serve, weights):
    other = Identity.generate()
    model = escrow(scene.owner, other, weights, os.urandom(16).hex())
    enclave = started(scene)
    agent = scene.agent()
    enclave.call("load_model", {"model": model})
    header = modelfile.read_model_header(model)
    challenge = agent.challenge().nonce
    outcome = agent.release(
        signed_request(scene, agent, header, enclave.evidence(challenge), challenge)
    )
    assert refused_checks(outcome) == {"escrow"}
    assert "escrowed to provider" in outcome.failures[0].reason
    # The owner's client notices before it asks: the agent serves another provider.
    with pytest.raises(InputError, match=r"releases for provider .* not for this model.s provider"):
        unlock_model(
            started(scene),
            model=model,
            owner=scene.owner,
            provider=AgentShareSource(serve(agent)),
            policy=scene.policy,
            state_dir=scene.enclave_state,
        )


def test_a_header_whose_provider_share_was_swapped_is_refused(scene, weights):
    """A share sealed to the provider for another model id does not open under this one."""
    enclave = started(scene)
    agent = scene.agent()
    header = loaded(scene, enclave)
    foreign = modelfile.read_model_header(
        escrow(scene.owner, scene.provider, weights, os.urandom(16).hex())
    )
    forged = dataclasses.replace(header, provider_share=foreign.provider_share)
    challenge = agent.challenge().nonce
    outcome = agent.release(
        signed_request(scene, agent, forged, enclave.evidence(challenge), challenge)
    )
    assert refused_checks(outcome) == {"escrow"}


def test_a_malformed_request_gets_one_line(scene, serve):
    url = serve(scene.agent())
    client = KeyReleaseClient(url)
    response = client._http.post("/v1/release", json={"model_id": "x"})
    assert response.status_code == 400
    assert "\n" not in response.json()["error"]
    response = client._http.post("/v1/release", content=b"\xff" * 10)
    assert response.status_code == 400


# -- the provider's share, never in a form the owner can open ----------------------------


def test_the_provider_share_never_opens_with_the_owners_key(scene, serve):
    enclave = started(scene)
    source = AgentShareSource(serve(scene.agent()))
    released: list[bytes] = []
    original = source.sealed_share

    def recording(*args, **kwargs):
        released.append(original(*args, **kwargs))
        return released[-1]

    source.sealed_share = recording  # type: ignore[method-assign]
    unlocked = unlock_model(
        enclave,
        model=scene.model,
        owner=scene.owner,
        provider=source,
        policy=scene.policy,
        state_dir=scene.enclave_state,
    )
    query(unlocked, inputs())
    header = modelfile.read_model_header(scene.model)
    share = open_escrowed_share(scene.provider, header, "provider")
    context = {"model_id": scene.model_id, "party": "provider"}
    (sealed,) = released
    # What the agent returned opens with no key of the owner's, under any purpose.
    for purpose in (purposes.MODEL_SHARE_PROVISION, purposes.MODEL_SHARE_ESCROW):
        for blob in (sealed, header.provider_share):
            with pytest.raises(IntegrityError):
                open_sealed(scene.owner.hpke_key, blob, purpose=purpose, context=context)
    # Nothing in the owner's folder holds the share in the clear or opens to it.
    forms = (share, share.hex().encode(), base64.b64encode(share))
    files = [path for path in scene.owner_dir.rglob("*") if path.is_file()]
    assert {path.name for path in files} >= {"owner.key", "model.chm"}
    for path in files:
        data = path.read_bytes()
        assert not any(form in data for form in forms), path
        assert sealed not in data and base64.b64encode(sealed) not in data
    assert not (scene.owner_dir / "provider.key").exists()


def test_an_enclave_swapped_after_attestation_gets_nothing(scene, serve):
    """The host answers the agent's challenge with another enclave than the one attested."""
    attested, other = started(scene), started(scene)
    other.call("load_model", {"model": scene.model})

    class Swapping:
        def evidence(self, nonce: bytes) -> bytes:
            return (attested if not calls else other).evidence(nonce)

        def call(self, name, args, on_event=None):
            calls.append(name)
            return attested.call(name, args, on_event)

        def close(self) -> None:
            pass

    calls: list[str] = []
    with pytest.raises(IntegrityError, match="not the one the owner attested"):
        unlock(scene, Swapping(), serve(scene.agent()))
