"""The client SDK against a real HTTP service, and its one-line errors."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
import typer
from typer.testing import CliRunner

from chiron.client import cli_service
from chiron.client.remote import RemoteJobSession, RemoteQuerySession, ServiceClient
from chiron.core.contract import TrainAuthorization, TrainResult
from chiron.core.encoding import b64decode, b64encode
from chiron.core.errors import (
    AccessDenied,
    Conflict,
    IntegrityError,
    JobFailed,
    NotFound,
    ServiceError,
    UsageError,
)
from chiron.core.keys import Identity
from chiron.core.recipe_statement import SignedRecipeStatement
from chiron.host.accounts import create_account
from chiron.host.config import ServiceConfig
from chiron.host.server import running_service
from chiron.host.service import Service

from .helpers import (
    RECIPE_SOURCE,
    make_dataset,
    make_model_file,
    sha256,
    sign_manifest,
    signed_statement,
)


@pytest.fixture
def live(tmp_path) -> Iterator[tuple[str, str, str]]:
    """(url, operator token, owner token) of a service on a free loopback port."""
    with running_service(ServiceConfig(state_dir=tmp_path / "service")) as (service, url):
        owner = create_account(service.db, service.pepper, name="alice", role="owner")
        yield url, service.operator_token_path.read_text().strip(), owner


def test_sdk_covers_an_owners_and_a_providers_session(tmp_path, live):
    url, operator, owner = live
    provider_identity = Identity.generate()
    with ServiceClient(url, operator) as provider:
        assert provider.whoami()["role"] == "provider"
        recipe = provider.register_recipe(
            "mlp",
            source=RECIPE_SOURCE,
            statement=signed_statement(provider=provider_identity),
            description="small",
            input_schema={"input_shape": [4], "dtype": "float32", "num_classes": 3},
        )
        assert recipe["source_sha256"] == sha256(RECIPE_SOURCE)
        assert recipe["provider_fingerprint"] == provider_identity.public.fingerprint
    dataset_path = tmp_path / "data.chd"
    make_dataset(dataset_path, records=300)
    with ServiceClient(url, owner) as client:
        assert [r["name"] for r in client.recipes()] == ["mlp"]
        assert client.health()["platform"] == "sim"
        # Small chunks exercise the chunk loop; a second upload of the same file is free.
        done = client.upload(dataset_path, kind="dataset", progress=False, chunk_bytes=1000)
        dataset = client.dataset(done["result_id"])
        assert dataset["record_count"] == 300
        assert client.upload_dataset(dataset_path, progress=False)["id"] == dataset["id"]
        assert len(client.datasets()) == 1
        model_path = tmp_path / "model.chm"
        model_path.write_bytes(make_model_file(Identity.generate(), provider_identity))
        model = client.upload_model(model_path, progress=False)
        out = tmp_path / "downloaded.chm"
        client.model_file(model["id"], out)
        assert out.read_bytes() == model_path.read_bytes()
        assert client.model_file(model["id"]) == model_path.read_bytes()
        job = client.create_job(recipe="mlp", dataset=dataset["id"])
        assert client.job(job["id"])["state"] == "created"
        with pytest.raises(Conflict, match="results exist once it is done"):
            client.job_result(job["id"], "model")
        with pytest.raises(NotFound):
            client.job("0" * 32)
    with ServiceClient(url, operator) as provider:
        # The provider follows the job on its recipe, not which dataset it trains on; a
        # model the owner uploaded was made by no job here and is the owner's alone.
        assert [(j["id"], j["dataset"]) for j in provider.jobs()] == [(job["id"], None)]
        assert provider.models() == []


def test_remote_query_session_checks_the_model_file(tmp_path, live):
    url, _, owner = live
    model_path = tmp_path / "model.chm"
    model_path.write_bytes(make_model_file(Identity.generate(), Identity.generate()))
    with ServiceClient(url, owner) as client:
        session = RemoteQuerySession.for_model_file(client, model_path, progress=False)
        assert client.query_session(session.session_id)["model"] == client.models()[0]["id"]
        with pytest.raises(UsageError, match="different model"):
            session.call("load_model", {"model": b"other bytes"})
        session.close()
        with pytest.raises(NotFound):
            client.query_session(session.session_id)


def _mock(handler) -> ServiceClient:
    return ServiceClient("http://chiron.test", "t", transport=httpx.MockTransport(handler))


def test_errors_become_one_line_chiron_errors():
    def answer(status: int, body: object) -> ServiceClient:
        return _mock(lambda request: httpx.Response(status, json=body))

    with pytest.raises(AccessDenied, match="needs a token"):
        answer(401, {"error": "AccessDenied", "message": "needs a token"}).whoami()
    with pytest.raises(JobFailed) as failed:
        answer(
            422, {"error": "JobFailed", "message": "job failed: oom", "reason_class": "oom"}
        ).job("x")
    assert failed.value.reason_class == "oom"
    with pytest.raises(ServiceError, match="HTTP 500"):
        _mock(lambda request: httpx.Response(500, text="<html>")).health()
    with pytest.raises(ServiceError):
        answer(400, {"error": "SomethingUnknown", "message": "odd"}).health()

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(
        ServiceError, match=re.escape("cannot reach the Chiron service at http://chiron.test")
    ):
        _mock(refuse).health()
    with pytest.raises(UsageError):
        ServiceClient("ftp://nowhere")


def test_corrupted_downloads_are_refused(tmp_path):
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"tampered", headers={"X-Content-SHA256": "0" * 64})

    out = tmp_path / "model.chm"
    with pytest.raises(IntegrityError):
        _mock(handler).model_file("m", out)
    assert not out.exists()
    with pytest.raises(IntegrityError):
        _mock(handler).job_result("j", "receipt")


def test_evidence_requests_send_the_nonce_as_hex():
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={"evidence": "AAEC"})

    assert _mock(handler).attestation_evidence(b"\x01" * 16) == b"\x00\x01\x02"
    assert seen == [f"http://chiron.test/v1/attestation/evidence?nonce={'01' * 16}"]


def test_service_commands(tmp_path, live):
    url, operator, owner = live
    app = typer.Typer()
    cli_service.register(app)
    runner = CliRunner()
    source = tmp_path / "recipe.py"
    source.write_bytes(RECIPE_SOURCE)
    key = tmp_path / "provider.key"
    identity = Identity.generate()
    public = identity.save(key)
    register = ["service", "recipes", "register", "mlp", "--source", str(source), "--url", url]
    # The statement is signed with the private key; a public key cannot sign it.
    unsigned = runner.invoke(app, [*register, "--key", str(public)], env={"CHIRON_TOKEN": operator})
    assert unsigned.exit_code != 0 and "private identity" in str(unsigned.exception)
    registered = runner.invoke(
        app, [*register, "--key", str(key), "--version", "2.1"], env={"CHIRON_TOKEN": operator}
    )
    assert registered.exit_code == 0, registered.output
    assert identity.public.fingerprint[:16] in registered.output
    listed = runner.invoke(
        app, ["service", "recipes", "list", "--url", url, "--json"], env={"CHIRON_TOKEN": owner}
    )
    shown = json.loads(listed.output)[0]
    assert shown["name"] == "mlp" and shown["version"] == "2.1"
    statement = SignedRecipeStatement.from_bytes(b64decode(shown["statement"]))
    assert statement.provider == identity.public
    statement.check_recipe(RECIPE_SOURCE)
    dataset = tmp_path / "data.chd"
    make_dataset(dataset)
    uploaded = runner.invoke(
        app, ["service", "datasets", "upload", str(dataset), "--url", url, "--token", owner]
    )
    assert uploaded.exit_code == 0 and "40 records" in uploaded.output
    assert (
        "records" in runner.invoke(app, ["service", "datasets", "list", "--url", url, "--token", owner]).output
    )
    assert "no jobs" in runner.invoke(app, ["service", "jobs", "list", "--url", url, "--token", owner]).output
    denied = runner.invoke(app, ["service", "datasets", "list", "--url", url, "--token", "wrong"])
    assert denied.exit_code != 0 and isinstance(denied.exception, AccessDenied)


def test_remote_job_session_starts_with_the_manifest_and_returns_four_results(tmp_path):
    dataset = tmp_path / "data.chd"
    make_dataset(dataset)
    enclave = Identity.generate().public
    manifest = sign_manifest(
        job_id="j" * 8,
        owner=Identity.generate(),
        statement=signed_statement(),
        dataset=dataset,
        enclaves=(enclave,),
    )
    authorization = TrainAuthorization(manifest, b"sealed")
    results = {
        name: name.encode() * 3
        for name in ("model", "receipt", "owner_report", "owner_report_signature")
    }
    started: list[dict] = []
    polls = iter(
        [
            {"state": "running", "step": 1, "total": 4},
            {"state": "done", "step": 4, "total": 4},
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/start"):
            started.append(json.loads(request.content))
            return httpx.Response(200, json={"state": "queued"})
        if "/results/" in path:
            data = results[path.rsplit("/", 1)[1]]
            return httpx.Response(200, content=data, headers={"X-Content-SHA256": sha256(data)})
        return httpx.Response(200, json=next(polls))

    session = RemoteJobSession(_mock(handler), "j" * 8, poll_seconds=0)
    events: list[dict] = []
    wire = session.call("train", authorization.to_wire(), on_event=events.append)
    assert started == [
        {"manifest": b64encode(manifest.to_wire()), "sealed_data_key": b64encode(b"sealed")}
    ]
    result = TrainResult.from_wire(wire)
    assert result.complete
    assert {name: getattr(result, name) for name in results} == results
    assert events == [
        {"event": "progress", "step": 1, "total": 4},
        {"event": "progress", "step": 4, "total": 4},
    ]
    # A manifest for another job is refused before anything is sent.
    with pytest.raises(UsageError, match="job id"):
        RemoteJobSession(_mock(handler), "k" * 8).call("train", authorization.to_wire())
    assert len(started) == 1


def test_account_create_command(tmp_path):
    app = typer.Typer()
    cli_service.register(app)
    state = tmp_path / "service"
    runner = CliRunner()
    missing = runner.invoke(app, ["service", "account", "create", "dora", "--state", str(state)])
    assert isinstance(missing.exception, UsageError)
    Service.open(ServiceConfig(state_dir=state)).close()
    first = runner.invoke(app, ["service", "account", "create", "dora", "--state", str(state)])
    assert first.exit_code == 0 and first.output.startswith("chiron_")
    again = runner.invoke(app, ["service", "account", "create", "dora", "--state", str(state)])
    assert isinstance(again.exception, Conflict)
    bad_role = runner.invoke(
        app, ["service", "account", "create", "eve", "--role", "root", "--state", str(state)]
    )
    assert bad_role.exit_code != 0
    assert first.output.strip() not in (state / "chiron.db").read_bytes().decode("latin-1")
