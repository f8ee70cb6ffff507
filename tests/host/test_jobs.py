"""Jobs and attestation through a live service: real enclaves, the runner, the relay."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest

from chiron.client.attestation import load_policy, service_sim_roots, verify_enclave
from chiron.client.remote import ServiceClient
from chiron.core.contract import TrainAuthorization
from chiron.core.errors import (
    AccessDenied,
    AttestationError,
    Conflict,
    InputError,
    IntegrityError,
    JobFailed,
    NotFound,
)
from chiron.core.keys import Identity
from chiron.core.manifest import DatasetRef, Plan
from chiron.core.roles import Role
from chiron.host.accounts import create_account
from chiron.host.config import ServiceConfig
from chiron.host.server import running_service

from .helpers import (
    PROVIDER,
    RECIPE_SOURCE,
    make_dataset,
    make_model_file,
    sign_manifest,
    signed_statement,
)

OTHER_SOURCE = b"HYPERPARAMETERS = {'epochs': 2}\n"


@pytest.fixture
def live(tmp_path) -> Iterator[tuple[str, ServiceClient, ServiceClient]]:
    """A service running two jobs at once, with a provider's and an owner's client."""
    config = ServiceConfig(state_dir=tmp_path / "service", concurrency=2)
    with running_service(config) as (service, url):
        owner = create_account(service.db, service.pepper, name="alice", role="owner")
        operator = service.operator_token_path.read_text().strip()
        with ServiceClient(url, operator) as provider, ServiceClient(url, owner) as client:
            provider.register_recipe("mlp", source=RECIPE_SOURCE, statement=signed_statement())
            yield url, provider, client


def _attest(url: str, get_evidence, state_dir, role: Role | None = None):
    policy = load_policy(None, allow_simulation=True)
    with ServiceClient(url) as service:
        roots = service_sim_roots(service, state_dir, policy)
        return verify_enclave(get_evidence, policy, state_dir=state_dir, sim_roots=roots, role=role)


def _job_enclave(url: str, client: ServiceClient, job_id: str, state_dir):
    """The job's training enclave, attested as unbound (it serves no job yet)."""
    return _attest(
        url, lambda nonce: client.job_evidence(job_id, nonce), state_dir, role=Role.TRAIN
    ).identity


def _authorization(job_id: str, enclave, dataset, **changes) -> TrainAuthorization:
    owner = changes.pop("owner", Identity.generate())
    sealed = changes.pop("sealed_data_key", os.urandom(80))
    statement = changes.pop("statement", signed_statement())
    manifest = sign_manifest(
        job_id=job_id,
        owner=owner,
        statement=statement,
        dataset=dataset,
        enclaves=changes.pop("enclaves", (enclave,)),
        **changes,
    )
    return TrainAuthorization(manifest, sealed)


def test_service_and_job_enclaves_attest_with_their_own_keys(tmp_path, live):
    url, _, client = live
    service_enclave = _attest(url, client.attestation_evidence, tmp_path / "client")
    with ServiceClient(url) as anonymous:
        # Both attestation endpoints are public.
        assert anonymous.sim_root()["fingerprint"] == client.sim_root()["fingerprint"]
        assert anonymous.attestation_evidence(os.urandom(32))
    dataset = tmp_path / "data.chd"
    make_dataset(dataset)
    job = client.create_job(
        recipe="mlp", dataset=client.upload_dataset(dataset, progress=False)["id"]
    )
    job_enclave = _attest(
        url, lambda nonce: client.job_evidence(job["id"], nonce), tmp_path / "client"
    )
    assert job_enclave.identity != service_enclave.identity
    # Without --allow-simulation the same evidence is refused.
    with pytest.raises(AttestationError, match="simulated"):
        verify_enclave(
            lambda nonce: client.job_evidence(job["id"], nonce),
            load_policy(None, allow_simulation=False),
            state_dir=tmp_path / "client",
        )
    with pytest.raises(InputError, match="nonce"):
        client.job_evidence(job["id"], b"short")


def test_failed_jobs_report_a_reason_class_to_the_provider_and_a_message_to_the_owner(
    tmp_path, live
):
    url, provider, client = live
    dataset = tmp_path / "data.chd"
    make_dataset(dataset)
    dataset_id = client.upload_dataset(dataset, progress=False)["id"]
    jobs = [client.create_job(recipe="mlp", dataset=dataset_id) for _ in range(3)]
    for job in jobs:
        enclave = _job_enclave(url, client, job["id"], tmp_path / "client")
        # Garbage instead of a key sealed to the job's enclave: the enclave refuses it.
        started = client.start_job(job["id"], _authorization(job["id"], enclave, dataset))
        assert started["state"] == "queued"
    with pytest.raises(Conflict):
        client.start_job(jobs[0]["id"], _authorization(jobs[0]["id"], enclave, dataset))
    outcomes = []
    for job in jobs:
        with pytest.raises(JobFailed) as failed:
            client.wait_job(job["id"], poll_seconds=0.1)
        outcomes.append(failed.value.reason_class)
        seen_by_owner = client.job(job["id"])
        assert seen_by_owner["message"] and "\n" not in seen_by_owner["message"]
        seen_by_provider = provider.job(job["id"])
        assert seen_by_provider["message"] is None
        assert seen_by_provider["status"] == f"failed ({seen_by_owner['reason']})"
    assert set(outcomes) == {"integrity"}
    # A job's enclave is gone once it ended: it can no longer be attested.
    with pytest.raises(Conflict):
        client.job_evidence(jobs[0]["id"], os.urandom(32))


def test_the_service_hands_over_the_recipes_statement(live):
    _, _, client = live
    assert client.recipe_statement("mlp") == signed_statement()
    recipe = client.recipe("mlp")
    assert recipe["provider_fingerprint"] == PROVIDER.public.fingerprint
    with pytest.raises(NotFound):
        client.recipe_statement("nope")


def test_a_manifest_for_another_job_recipe_or_dataset_is_refused_before_the_enclave(tmp_path, live):
    url, provider, client = live
    dataset = tmp_path / "data.chd"
    make_dataset(dataset)
    other_dataset = tmp_path / "other.chd"
    make_dataset(other_dataset, seed=1)
    job = client.create_job(
        recipe="mlp", dataset=client.upload_dataset(dataset, progress=False)["id"]
    )
    job_id = job["id"]
    enclave = _job_enclave(url, client, job_id, tmp_path / "client")
    other_recipe = signed_statement(source=OTHER_SOURCE)
    workers = Plan(seed=0, workers=2, exchange_every=1)
    members = (enclave, Identity.generate().public, Identity.generate().public)
    owner = Identity.generate()
    mine = _authorization(job_id, enclave, dataset, owner=owner)
    refusals = {
        "for job": _authorization("0" * 32, enclave, dataset),
        "another recipe": _authorization(
            job_id, enclave, dataset, source=OTHER_SOURCE, statement=other_recipe
        ),
        "another provider statement": _authorization(
            job_id, enclave, dataset, statement=signed_statement(version="2")
        ),
        "another provider": TrainAuthorization(
            replace(mine.manifest.manifest, provider=Identity.generate().public).sign(owner),
            mine.sealed_data_key,
        ),
        "another dataset than": _authorization(job_id, enclave, other_dataset),
        "another file of dataset": _authorization(
            job_id,
            enclave,
            dataset,
            dataset_ref=DatasetRef(mine.manifest.manifest.dataset.dataset_id, "ab" * 32),
        ),
        "1 worker": _authorization(job_id, enclave, dataset, plan=workers, enclaves=members),
    }
    for words, authorization in refusals.items():
        with pytest.raises(InputError, match=words):
            client.start_job(job_id, authorization)
    # Not the job's owner, and a manifest whose owner signature does not verify.
    with pytest.raises(AccessDenied, match="owner"):
        provider.start_job(job_id, _authorization(job_id, enclave, dataset))
    genuine = mine
    altered = replace(genuine.manifest.manifest, plan=Plan(seed=1))
    forged = replace(genuine, manifest=replace(genuine.manifest, manifest=altered))
    with pytest.raises(IntegrityError, match="owner's signature"):
        client.start_job(job_id, forged)
    with pytest.raises(InputError, match="sealed_data_key"):
        client.start_job(job_id, replace(genuine, sealed_data_key=b""))
    # The job still waits, and its enclave never saw a train call: it is still attestable
    # as a fresh training enclave that serves no job.
    assert client.job(job_id)["state"] == "created"
    assert _job_enclave(url, client, job_id, tmp_path / "client") == enclave


def test_query_sessions_relay_calls_and_enforce_who_may_make_them(tmp_path, live):
    url, provider, client = live
    model_path = tmp_path / "model.chm"
    # A query enclave refuses a model id that is not 32 hex digits (it names a file).
    model_id = "5" * 32
    model_path.write_bytes(make_model_file(Identity.generate(), Identity.generate(), model_id))
    model = client.upload_model(model_path, progress=False)
    session = client.open_query_session(model["id"])
    attested = _attest(
        url, lambda n: client.query_session_evidence(session["id"], n), tmp_path / "c"
    )
    assert attested.identity is not None
    # The service loads its own copy of the model; the enclave parses its header.
    loaded = client.query_session_call(session["id"], "load_model", {})
    assert loaded["model_id"] == model_id
    # A share that is not sealed to this enclave is refused by the enclave itself.
    with pytest.raises(IntegrityError, match="share"):
        client.query_session_call(
            session["id"], "provision_share", {"party": "owner", "sealed_share": b"junk"}
        )
    # The model was uploaded, not made by a job on this provider's recipe: the provider
    # does not see the session at all (test_isolation: what the model's provider may do).
    for party in ("owner", "provider"):
        with pytest.raises(NotFound, match="no query session"):
            provider.query_session_call(
                session["id"], "provision_share", {"party": party, "sealed_share": b"x"}
            )
    # A well-formed query (the enclave parses every call with its contract type), which
    # a model still waiting for its shares cannot answer.
    a_query = {"channel_id": "0" * 32, "sequence": 0, "sealed_inputs": b"x", "opening": None}
    with pytest.raises(NotFound, match="no query session"):
        provider.query_session_call(session["id"], "query", a_query)
    with pytest.raises(InputError, match="locked"):
        client.query_session_call(session["id"], "query", a_query)
    client.close_query_session(session["id"])
    with pytest.raises(NotFound, match="no query session"):
        client.query_session_evidence(session["id"], os.urandom(32))


def test_idle_enclaves_are_stopped_and_unstarted_jobs_abandoned(tmp_path):
    config = ServiceConfig(state_dir=tmp_path / "service")
    with running_service(config) as (service, url):
        token = create_account(service.db, service.pepper, name="alice", role="owner")
        operator = service.operator_token_path.read_text().strip()
        with ServiceClient(url, operator) as provider, ServiceClient(url, token) as client:
            provider.register_recipe("mlp", source=RECIPE_SOURCE, statement=signed_statement())
            dataset = tmp_path / "data.chd"
            make_dataset(dataset)
            job = client.create_job(
                recipe="mlp", dataset=client.upload_dataset(dataset, progress=False)["id"]
            )
            model_path = tmp_path / "model.chm"
            model_path.write_bytes(make_model_file(Identity.generate(), Identity.generate()))
            session = client.open_query_session(
                client.upload_model(model_path, progress=False)["id"]
            )
            later = time.monotonic() + 3600
            service.jobs.reap_idle(60, later)
            service.queries.reap_idle(60, later)
            assert client.job(job["id"])["status"] == "failed (abandoned)"
            with pytest.raises(NotFound):
                client.query_session(session["id"])
