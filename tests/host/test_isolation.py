"""Isolation between accounts: two providers and two owners, each with its own records.

Every list shows a party exactly its own records; every lookup of another party's record
is a 404 worded as for an id that exists nowhere (never a 403 that would confirm it
exists); actions on a record one can see but not act on are 403. A provider follows the
jobs on its recipes and the models they made, and never learns an owner's datasets,
uploads, job messages or results. The enclaves are stand-ins: what is tested here is the
service's authorization, which decides before any enclave is called.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from chiron.core.encoding import b64encode
from chiron.core.keys import Identity
from chiron.host import jobs as jobs_module
from chiron.host import queries as queries_module
from chiron.host.accounts import create_account
from chiron.host.api import create_app
from chiron.host.config import ServiceConfig
from chiron.host.db import Job, Model, now
from chiron.host.service import Service

from .helpers import (
    SCHEMA,
    bearer,
    make_dataset,
    make_model_file,
    recipe_body,
    sha256,
    sign_manifest,
    signed_statement,
)

NONCE = "00" * 16


class StandInEnclave:
    """Replaces an enclave process: records the calls relayed to it, answers each one."""

    started: list[StandInEnclave] = []

    def __init__(self, role: str, state_dir: Path, *, platform: str, log_path: Path) -> None:
        self.role = role
        self.log_path = log_path
        StandInEnclave.started.append(self)
        self.calls: list[str] = []
        self.busy = False
        self.last_used = 0.0

    def call(self, name: str, args: dict[str, Any] | None = None, **_: Any) -> dict[str, Any]:
        self.calls.append(name)
        return {"relayed": name}

    def evidence(self, nonce: bytes) -> bytes:
        return b"evidence over " + nonce

    def close(self) -> None:
        pass


@dataclass
class Party:
    name: str
    role: str
    token: str
    # What this party must see, by kind: ids (recipe names for recipes). Lists show these;
    # `gets` adds what a lookup by id answers besides (an owner's completed uploads).
    sees: dict[str, set[str]] = field(default_factory=dict)
    gets: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class World:
    service: Service
    http: TestClient
    parties: dict[str, Party]
    ids: dict[str, str]  # a name for each record -> its id
    owner_private: list[str]  # strings no provider may ever read in an answer
    dataset_file: Path

    def get(self, party: str, path: str) -> Any:
        return self.http.get(path, headers=bearer(self.parties[party].token))

    def send(self, party: str, method: str, path: str, **kwargs: Any) -> Any:
        return self.http.request(method, path, headers=bearer(self.parties[party].token), **kwargs)


def _upload(http: TestClient, token: str, data: bytes, kind: str, *, complete: bool = True) -> dict:
    created = http.post(
        "/v1/uploads",
        json={"kind": kind, "size": len(data), "sha256": sha256(data)},
        headers=bearer(token),
    )
    assert created.status_code == 201, created.text
    upload = created.json()
    if not complete:
        return upload
    put = http.put(
        f"/v1/uploads/{upload['id']}/chunks",
        params={"offset": 0, "sha256": sha256(data)},
        content=data,
        headers=bearer(token),
    )
    assert put.status_code == 200, put.text
    done = http.post(f"/v1/uploads/{upload['id']}/complete", headers=bearer(token))
    assert done.status_code == 200, done.text
    return done.json()


def _job(http: TestClient, token: str, recipe: str, dataset: str) -> str:
    created = http.post(
        "/v1/jobs", json={"recipe": recipe, "dataset": dataset}, headers=bearer(token)
    )
    assert created.status_code == 201, created.text
    return created.json()["id"]


def _finish(service: Service, job_id: str, model_file: bytes, model_id: str) -> str:
    """Record `job_id` as done with a model, as a training enclave's result would."""
    digests = {
        name: service.store.put_bytes(name.encode() + job_id.encode())
        for name in ("receipt", "owner_report", "owner_report_signature")
    }
    with service.db.transaction() as session:
        job = session.get_one(Job, job_id)
        model = Model(
            id=uuid.uuid4().hex,
            account_id=job.account_id,
            model_id=model_id,
            job_id=job_id,
            schema=json.dumps(SCHEMA.to_dict()),
            query_policy=json.dumps({"answers": "labels", "budget": None}),
            size=len(model_file),
            sha256=service.store.put_bytes(model_file),
            created=now(),
        )
        session.add(model)
        job.state, job.step, job.total, job.model_pk = "done", 10, 10, model.id
        job.receipt_sha256 = digests["receipt"]
        job.owner_report_sha256 = digests["owner_report"]
        job.owner_report_signature_sha256 = digests["owner_report_signature"]
    return model.id


def _fail(service: Service, job_id: str, message: str) -> None:
    with service.db.transaction() as session:
        job = session.get_one(Job, job_id)
        job.state, job.reason, job.message = "failed", "recipe_error", message


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    monkeypatch.setattr(jobs_module, "ManagedEnclave", StandInEnclave)
    monkeypatch.setattr(queries_module, "ManagedEnclave", StandInEnclave)
    monkeypatch.setattr(StandInEnclave, "started", [])
    service = Service.open(ServiceConfig(state_dir=tmp_path / "service"))
    try:
        db, pepper = service.db, service.pepper
        parties = {
            name: Party(name, role, create_account(db, pepper, name=name, role=role))
            for name, role in (
                ("prov-a", "provider"),
                ("prov-b", "provider"),
                ("alice", "owner"),
                ("bob", "owner"),
            )
        }
        parties["operator"] = Party(
            "operator", "provider", service.operator_token_path.read_text().strip()
        )
        with TestClient(create_app(service)) as http:
            yield _populate(service, http, parties, tmp_path)
    finally:
        service.close()


def _populate(
    service: Service, http: TestClient, parties: dict[str, Party], tmp_path: Path
) -> World:
    token = {name: party.token for name, party in parties.items()}
    identity = {"prov-a": Identity.generate(), "prov-b": Identity.generate()}
    for provider, recipe in (("prov-a", "recipe-a"), ("prov-b", "recipe-b")):
        body = recipe_body(recipe, f"# {recipe}\n".encode(), identity[provider])
        response = http.post("/v1/recipes", json=body, headers=bearer(token[provider]))
        assert response.status_code == 201, response.text
    ids: dict[str, str] = {"recipe-a": "recipe-a", "recipe-b": "recipe-b"}
    private: list[str] = []
    for owner, seed in (("alice", 1), ("bob", 2)):
        path = tmp_path / f"{owner}.chd"
        make_dataset(path, seed=seed)
        data = path.read_bytes()
        done = _upload(http, token[owner], data, "dataset")
        ids[f"{owner}-dataset"] = done["result_id"]
        ids[f"{owner}-done-upload"] = done["id"]
        ids[f"{owner}-open-upload"] = _upload(
            http, token[owner], data[:100] + owner.encode(), "dataset", complete=False
        )["id"]
        uploaded = make_model_file(
            Identity.generate(), identity["prov-a"], model_id=seed * "7" * 32
        )
        ids[f"{owner}-uploaded-model"] = _upload(http, token[owner], uploaded, "model")["result_id"]
        private += [done["result_id"], done["id"], ids[f"{owner}-open-upload"], sha256(data)]
    # alice: a finished job on prov-a's recipe and one waiting on prov-b's;
    # bob: a finished job on prov-b's recipe and a failed one on prov-a's.
    plan = (
        ("alice-job-a", "alice", "recipe-a"),
        ("alice-job-b", "alice", "recipe-b"),
        ("bob-job-b", "bob", "recipe-b"),
        ("bob-job-a", "bob", "recipe-a"),
    )
    for name, owner, recipe in plan:
        ids[name] = _job(http, token[owner], recipe, ids[f"{owner}-dataset"])
    for name, provider, model_id in (
        ("alice-job-a", "prov-a", "a" * 32),
        ("bob-job-b", "prov-b", "b" * 32),
    ):
        model_file = make_model_file(Identity.generate(), identity[provider], model_id)
        ids[name.replace("job", "model")] = _finish(service, ids[name], model_file, model_id)
    _fail(service, ids["bob-job-a"], "bob's private failure detail")
    private.append("bob's private failure detail")
    for owner in ("alice", "bob"):
        model = ids[f"{owner}-model-{'a' if owner == 'alice' else 'b'}"]
        opened = http.post(
            "/v1/query-sessions", json={"model": model}, headers=bearer(token[owner])
        )
        assert opened.status_code == 201, opened.text
        ids[f"{owner}-session"] = opened.json()["id"]

    def own(owner: str) -> dict[str, set[str]]:
        return {
            "recipes": {"recipe-a", "recipe-b"},
            "datasets": {ids[f"{owner}-dataset"]},
            "uploads": {ids[f"{owner}-open-upload"]},
            "jobs": {ids[k] for k, o, _ in plan if o == owner},
            "models": {ids[k] for k in ids if k.startswith(f"{owner}-") and "model" in k},
            "query-sessions": {ids[f"{owner}-session"]},
        }

    nothing: dict[str, set[str]] = {
        "recipes": set(),
        "datasets": set(),
        "uploads": set(),
        "jobs": set(),
        "models": set(),
        "query-sessions": set(),
    }
    parties["alice"].sees = own("alice")
    parties["bob"].sees = own("bob")
    parties["prov-a"].sees = nothing | {
        "recipes": {"recipe-a"},
        "jobs": {ids["alice-job-a"], ids["bob-job-a"]},
        "models": {ids["alice-model-a"]},
        "query-sessions": {ids["alice-session"]},
    }
    parties["prov-b"].sees = nothing | {
        "recipes": {"recipe-b"},
        "jobs": {ids["alice-job-b"], ids["bob-job-b"]},
        "models": {ids["bob-model-b"]},
        "query-sessions": {ids["bob-session"]},
    }
    # The operator account is a provider with no recipe: it sees nobody's records.
    parties["operator"].sees = nothing
    for name, party in parties.items():
        party.gets = {kind: set(shown) for kind, shown in party.sees.items()}
        if party.role == "owner":
            party.gets["uploads"].add(ids[f"{name}-done-upload"])
    return World(service, http, parties, ids, private, tmp_path / "alice.chd")


KINDS = ("recipes", "datasets", "uploads", "jobs", "models", "query-sessions")
LISTED = ("recipes", "datasets", "uploads", "jobs", "models")  # sessions have no list


def _every_id(world: World, kind: str) -> set[str]:
    return set().union(*(party.gets[kind] for party in world.parties.values()))


def test_every_list_shows_each_party_exactly_its_own(world):
    for name, party in world.parties.items():
        for kind in LISTED:
            listed = world.get(name, f"/v1/{kind}")
            assert listed.status_code == 200, (name, kind, listed.text)
            key = "name" if kind == "recipes" else "id"
            shown = [record[key] for record in listed.json()]
            assert len(shown) == len(set(shown)), (name, kind)
            assert set(shown) == party.sees[kind], (name, kind)


def test_every_get_answers_own_records_and_404_for_everyone_elses(world):
    for name, party in world.parties.items():
        for kind in KINDS:
            # A well-formed id that names nothing: what another party's id must look like.
            ghost = world.get(name, f"/v1/{kind}/{uuid.uuid4().hex}")
            assert ghost.status_code == 404
            for record in _every_id(world, kind):
                response = world.get(name, f"/v1/{kind}/{record}")
                if record in party.gets[kind]:
                    assert response.status_code == 200, (name, kind, response.text)
                    continue
                assert response.status_code == 404, (name, kind, record, response.text)
                body = response.json()
                assert body["error"] == ghost.json()["error"] == "NotFound"
                # Worded as for an id that exists nowhere: nothing tells them apart.
                ghost_id = ghost.request.url.path.rsplit("/", 1)[1]
                assert body["message"] == ghost.json()["message"].replace(ghost_id, record)


def test_a_provider_sees_its_recipes_jobs_state_and_nothing_of_the_owners(world):
    for provider in ("prov-a", "prov-b"):
        answers = [world.get(provider, f"/v1/{kind}").text for kind in LISTED]
        jobs = world.get(provider, "/v1/jobs").json()
        answers += [world.get(provider, f"/v1/jobs/{job['id']}").text for job in jobs]
        for job in jobs:
            # State, progress and the reason class; never the owner's dataset or message.
            assert job["dataset"] is None and job["message"] is None
            assert job["status"] in ("created", "done", "failed (recipe_error)")
        for text in answers:
            for secret in world.owner_private:
                assert secret not in text, (provider, secret)
    failed = world.get("prov-a", f"/v1/jobs/{world.ids['bob-job-a']}").json()
    assert failed["reason"] == "recipe_error" and failed["message"] is None
    # The owner sees its own job in full.
    mine = world.get("bob", f"/v1/jobs/{world.ids['bob-job-a']}").json()
    assert mine["dataset"] == world.ids["bob-dataset"]
    assert mine["message"] == "bob's private failure detail"


def test_owners_see_the_catalogue_and_providers_only_their_own_recipes(world):
    shown = world.get("alice", "/v1/recipes/recipe-b").json()
    assert shown["provider_fingerprint"] and shown["statement"]
    assert world.get("prov-a", "/v1/recipes/recipe-b").status_code == 404
    assert world.get("operator", "/v1/recipes/recipe-a").status_code == 404


# (party, method, path template, json body, expected status): every action on a record
# one may not see is 404, on a record one sees but may not act on, 403.
START = {"manifest": "{manifest}", "sealed_data_key": b64encode(b"k" * 32)}
ACTIONS = [
    # Start a job: only its owner (a job's provider sees it, so is told no).
    ("bob", "POST", "/v1/jobs/{alice-job-b}/start", START, 404),
    ("prov-a", "POST", "/v1/jobs/{alice-job-b}/start", START, 404),
    ("prov-b", "POST", "/v1/jobs/{alice-job-b}/start", START, 403),
    ("operator", "POST", "/v1/jobs/{alice-job-b}/start", START, 404),
    # Attest a job's enclave: only its owner.
    ("bob", "GET", "/v1/jobs/{alice-job-b}/evidence?nonce=" + NONCE, None, 404),
    ("prov-b", "GET", "/v1/jobs/{alice-job-b}/evidence?nonce=" + NONCE, None, 403),
    ("alice", "GET", "/v1/jobs/{alice-job-b}/evidence?nonce=" + NONCE, None, 200),
    # Download results: only the job's owner.
    ("bob", "GET", "/v1/jobs/{alice-job-a}/results/model", None, 404),
    ("bob", "GET", "/v1/jobs/{alice-job-a}/results/owner_report", None, 404),
    ("prov-b", "GET", "/v1/jobs/{alice-job-a}/results/receipt", None, 404),
    ("prov-a", "GET", "/v1/jobs/{alice-job-a}/results/model", None, 403),
    ("prov-a", "GET", "/v1/jobs/{alice-job-a}/results/owner_report", None, 403),
    ("prov-a", "GET", "/v1/jobs/{alice-job-a}/results/receipt", None, 403),
    ("alice", "GET", "/v1/jobs/{alice-job-a}/results/owner_report", None, 200),
    # A model's escrowed file: only its owner; its provider sees the metadata only.
    ("bob", "GET", "/v1/models/{alice-model-a}/file", None, 404),
    ("prov-a", "GET", "/v1/models/{alice-model-a}/file", None, 403),
    ("prov-b", "GET", "/v1/models/{alice-model-a}/file", None, 404),
    ("alice", "GET", "/v1/models/{alice-model-a}/file", None, 200),
    # Open a query session: an owner, on its own model.
    ("bob", "POST", "/v1/query-sessions", {"model": "{alice-model-a}"}, 404),
    ("bob", "POST", "/v1/query-sessions", {"model": "{alice-uploaded-model}"}, 404),
    ("prov-a", "POST", "/v1/query-sessions", {"model": "{alice-model-a}"}, 403),
    # Train on another owner's dataset.
    ("bob", "POST", "/v1/jobs", {"recipe": "recipe-a", "dataset": "{alice-dataset}"}, 404),
    ("prov-a", "POST", "/v1/jobs", {"recipe": "recipe-a", "dataset": "{alice-dataset}"}, 403),
    # Another owner's uploads: write, complete, discard.
    ("bob", "POST", "/v1/uploads/{alice-open-upload}/complete", None, 404),
    ("prov-a", "POST", "/v1/uploads/{alice-open-upload}/complete", None, 404),
    ("bob", "DELETE", "/v1/uploads/{alice-open-upload}", None, 404),
    ("prov-a", "DELETE", "/v1/uploads/{alice-open-upload}", None, 404),
    # Close another's query session (its model's provider sees it, so is told no).
    ("bob", "DELETE", "/v1/query-sessions/{alice-session}", None, 404),
    ("prov-b", "DELETE", "/v1/query-sessions/{alice-session}", None, 404),
    ("prov-a", "DELETE", "/v1/query-sessions/{alice-session}", None, 403),
    # Attest a query session's enclave: whoever sees the session.
    ("bob", "GET", "/v1/query-sessions/{alice-session}/evidence?nonce=" + NONCE, None, 404),
    ("prov-b", "GET", "/v1/query-sessions/{alice-session}/evidence?nonce=" + NONCE, None, 404),
    ("prov-a", "GET", "/v1/query-sessions/{alice-session}/evidence?nonce=" + NONCE, None, 200),
]


def _fill(world: World, value: Any) -> Any:
    if value == "{manifest}":
        # A well-formed manifest signed by some owner, so that the request reaches the
        # authorization decision (which is made before the job's is looked at).
        signed = sign_manifest(
            job_id=world.ids["alice-job-b"],
            owner=Identity.generate(),
            statement=signed_statement(),
            dataset=world.dataset_file,
            enclaves=(Identity.generate().public,),
        )
        return b64encode(signed.to_wire())
    if isinstance(value, str):
        for name, record in world.ids.items():
            value = value.replace("{" + name + "}", record)
        return value
    if isinstance(value, dict):
        return {key: _fill(world, item) for key, item in value.items()}
    return value


def test_actions_on_records_of_others_are_refused(world):
    # Every refusal is read-only, so one world serves all; every mismatch is reported.
    wrong = []
    for party, method, path, body, status in ACTIONS:
        kwargs = {} if body is None else {"json": _fill(world, body)}
        response = world.send(party, method, _fill(world, path), **kwargs)
        error = {404: "NotFound", 403: "AccessDenied"}.get(status)
        if response.status_code != status or (error and response.json()["error"] != error):
            wrong.append((party, method, path, status, response.status_code, response.text))
    assert wrong == []


def test_a_chunk_for_another_owners_upload_is_refused_and_nothing_is_written(world):
    upload = world.ids["alice-open-upload"]
    for party in ("bob", "prov-a"):
        refused = world.send(
            party,
            "PUT",
            f"/v1/uploads/{upload}/chunks",
            params={"offset": 0, "sha256": sha256(b"x")},
            content=b"x",
        )
        assert refused.status_code == 404 and refused.json()["error"] == "NotFound"
    assert world.get("alice", f"/v1/uploads/{upload}").json()["offset"] == 0


def _call(world: World, party: str, session: str, name: str, args: dict) -> Any:
    return world.send(
        party, "POST", f"/v1/query-sessions/{world.ids[session]}/calls/{name}", json={"args": args}
    )


def _relayed(world: World, session: str) -> list[str]:
    """The calls the stand-in enclave of `session` received."""
    name = f"query-{world.ids[session]}.log"
    (enclave,) = [e for e in StandInEnclave.started if e.log_path.name == name]
    return enclave.calls


QUERY = {"request_id": "0" * 32, "sealed_inputs": {"$bytes": "eA=="}}
SHARE = {"sealed_share": {"$bytes": "eA=="}}


def test_query_session_calls_are_the_owners_and_the_models_provider_relays_only_its_share(world):
    # Another owner and another provider do not see the session at all.
    for party in ("bob", "prov-b", "operator"):
        for name, args in (
            ("load_model", {}),
            ("query", QUERY),
            ("provision_share", {"party": "provider", **SHARE}),
            ("evaluate", {"dataset": world.ids["bob-dataset"]}),
        ):
            refused = _call(world, party, "alice-session", name, args)
            assert refused.status_code == 404, (party, name, refused.text)
    # The model's provider sees it, may relay its own share and nothing else.
    for name, args in (
        ("load_model", {}),
        ("query", QUERY),
        ("provision_share", {"party": "owner", **SHARE}),
        ("evaluate", {"dataset": world.ids["alice-dataset"]}),
    ):
        refused = _call(world, "prov-a", "alice-session", name, args)
        assert refused.status_code == 403, (name, refused.text)
        assert refused.json()["error"] == "AccessDenied"
    released = _call(
        world, "prov-a", "alice-session", "provision_share", {"party": "provider", **SHARE}
    )
    assert released.status_code == 200, released.text
    # The owner evaluates on its own datasets only.
    other = _call(
        world, "alice", "alice-session", "evaluate", {"dataset": world.ids["bob-dataset"]}
    )
    assert other.status_code == 404 and other.json()["error"] == "NotFound"
    assert _call(world, "alice", "alice-session", "load_model", {}).status_code == 200
    # Only the two permitted calls reached the enclave.
    assert _relayed(world, "alice-session") == ["provision_share", "load_model"]


def test_a_provider_acts_on_no_record_of_another_provider(world):
    # prov-a's recipe, job and model are invisible to prov-b, and the reverse.
    for path in (
        "/v1/recipes/recipe-a",
        f"/v1/jobs/{world.ids['alice-job-a']}",
        f"/v1/models/{world.ids['alice-model-a']}",
        f"/v1/query-sessions/{world.ids['alice-session']}",
    ):
        assert world.get("prov-b", path).status_code == 404, path
        assert world.get("prov-a", path).status_code == 200, path
    # Re-registering prov-a's recipe name from prov-b's account cannot take it over.
    body = recipe_body("recipe-a", b"# mine\n", Identity.generate())
    taken = world.send("prov-b", "POST", "/v1/recipes", json=body)
    assert taken.status_code in (403, 409)
    shown = world.get("alice", "/v1/recipes/recipe-a").json()
    assert shown["source_sha256"] == hashlib.sha256(b"# recipe-a\n").hexdigest()
