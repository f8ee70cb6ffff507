"""A whole owner/provider story through the service: train, fetch, unlock, query.

The client flows are the same as with --local; only the sessions are the SDK's remote
ones, so this proves the relay adds nothing and loses nothing.
"""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from chiron.client.attestation import load_policy
from chiron.client.key_release import AgentShareSource
from chiron.client.key_release_agent import AgentState, KeyReleaseAgent, running_agent
from chiron.client.querying import query, unlock_model
from chiron.client.remote import RemoteJobSession, RemoteQuerySession, ServiceClient
from chiron.client.training import run_training
from chiron.core.attestation import load_sim_root
from chiron.core.dataset import encrypt_dataset, read_dataset_header_and_digest
from chiron.core.keys import DataKey, Identity
from chiron.core.manifest import DatasetRef, Plan
from chiron.core.measurement import measure_runtime
from chiron.core.recipe_statement import SignedRecipeStatement, make_statement
from chiron.core.release_policy import ReleasePolicy
from chiron.core.schema import DatasetSchema
from chiron.host.accounts import create_account
from chiron.host.config import ServiceConfig
from chiron.host.server import running_service

TINY_RECIPE = textwrap.dedent(
    """
    import torch.nn as nn

    HYPERPARAMETERS = {"epochs": 2, "batch_size": 16, "lr": 0.01}

    def build_model(schema):
        c, h, w = schema.input_shape
        return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 16), nn.ReLU(), nn.Linear(16, 3))
    """
).encode()


def _images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=count)
    x = rng.integers(0, 60, size=(count, 1, 8, 8)).astype(np.uint8)
    for i, label in enumerate(y):
        x[i, 0, :, label * 2 : label * 2 + 3] += 180
    return x, y.astype(np.int64)


@pytest.mark.slow
def test_train_and_query_through_the_service(tmp_path):
    owner, provider = Identity.generate(), Identity.generate()
    schema = DatasetSchema((1, 8, 8), "uint8", 3)
    x, y = _images(240, seed=1)
    key = bytes(range(32))
    header = encrypt_dataset([(x, y)], tmp_path / "train.chd", key, schema=schema, record_count=240)
    _, header_sha256 = read_dataset_header_and_digest(tmp_path / "train.chd")
    policy = load_policy(None, allow_simulation=True)
    with running_service(ServiceConfig(state_dir=tmp_path / "service")) as (service, url):
        # Simulation: the client trusts the service's sim root, here read from its folder.
        roots = service.config.enclave_state_dir
        owner_token = create_account(service.db, service.pepper, name="alice", role="owner")
        operator = service.operator_token_path.read_text().strip()
        with (
            ServiceClient(url, operator) as provider_client,
            ServiceClient(url, owner_token) as client,
        ):
            provider_client.register_recipe(
                "tiny",
                source=TINY_RECIPE,
                statement=make_statement(
                    TINY_RECIPE, name="tiny", version="1", provider=provider
                ).to_bytes(),
                input_schema=schema.to_dict(),
            )
            # The owner's client believes the statement only once it verifies.
            statement = SignedRecipeStatement.from_bytes(client.recipe_statement("tiny"))
            assert statement.provider == provider.public
            dataset = client.upload_dataset(tmp_path / "train.chd", progress=False)
            job = client.create_job(recipe="tiny", dataset=dataset["id"])
            events: list[dict] = []
            outcome = run_training(
                RemoteJobSession(client, job["id"], poll_seconds=0.2),
                job_id=job["id"],
                data_key=DataKey(header.dataset_id, key),
                dataset=DatasetRef(header.dataset_id, header_sha256),
                owner=owner,
                statement=statement,
                plan=Plan(seed=3),
                policy=policy,
                state_dir=roots,
                on_event=events.append,
            )
            assert outcome.report["final_holdout_accuracy"] > 0.8
            assert events and events[-1]["step"] == events[-1]["total"]
            finished = provider_client.job(job["id"])
            assert finished["status"] == "done" and finished["message"] is None
            model = client.model(finished["model"])
            assert client.model_file(model["id"]) == outcome.model

            # The provider's share comes from its own agent, which trusts the service's
            # simulation root; the owner relays it and holds only its own key.
            state = AgentState(tmp_path / "provider-agent")
            sim_root = load_sim_root(roots)
            assert sim_root is not None
            state.trust_sim_root(sim_root)
            release_policy = ReleasePolicy(
                measurements=(measure_runtime().hex,), UNSAFE_allow_simulation=True
            )
            agent = KeyReleaseAgent(provider, release_policy, state, log=lambda line: None)
            with (
                running_agent(agent) as agent_url,
                RemoteQuerySession(client, model["id"]) as session,
            ):
                unlocked = unlock_model(
                    session,
                    model=outcome.model,
                    owner=owner,
                    provider=AgentShareSource(agent_url),
                    policy=policy,
                    state_dir=roots,
                )
                answers, _ = query(unlocked, x[:12])
            assert answers.labels.tolist() == y[:12].tolist()
