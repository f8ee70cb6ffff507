"""The REST API through FastAPI's TestClient: recipes, uploads, datasets, models, isolation."""

from __future__ import annotations

import json
import os
import stat

from sqlalchemy import select

from chiron.core.encoding import b64decode, b64encode
from chiron.core.keys import Identity
from chiron.core.recipe_statement import SignedRecipeStatement
from chiron.host.accounts import create_account
from chiron.host.db import Account, Recipe

from .helpers import (
    PROVIDER,
    RECIPE_SOURCE,
    bearer,
    model_bytes,
    recipe_body,
    register_recipe,
    sha256,
    signed_statement,
    upload_bytes,
)


def test_health_is_public_and_whoami_needs_a_token(api):
    assert api.http.get("/v1/health").json()["status"] == "ok"
    missing = api.http.get("/v1/whoami")
    assert missing.status_code == 401
    assert missing.json()["error"] == "AccessDenied"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = api.http.get("/v1/whoami", headers=bearer("chiron_not-a-token"))
    assert wrong.status_code == 401
    me = api.http.get("/v1/whoami", headers=bearer(api.owner["token"])).json()
    assert me == {"name": "alice", "role": "owner"}


def test_operator_token_is_private_and_tokens_are_stored_hashed(api):
    path = api.service.operator_token_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    operator = api.http.get("/v1/whoami", headers=bearer(api.operator["token"])).json()
    assert operator == {"name": "operator", "role": "provider"}
    with api.service.db.transaction() as session:
        hashes = session.scalars(select(Account.token_hash)).all()
    for token in (api.operator["token"], api.owner["token"], api.other_owner["token"]):
        assert token not in hashes
        assert all(token not in h for h in hashes)


def test_recipes_are_registered_by_providers_and_their_source_stays_hidden(api):
    schema = {"input_shape": [4], "dtype": "float32", "num_classes": 3}
    recipe = register_recipe(api, input_schema=schema)
    listed = api.http.get("/v1/recipes", headers=bearer(api.owner["token"])).json()
    assert [r["name"] for r in listed] == ["mlp"]
    assert "source" not in listed[0]
    assert RECIPE_SOURCE.decode() not in json.dumps(listed)
    assert recipe["source_sha256"] == sha256(RECIPE_SOURCE)
    # Providers only, names are unique, and the same registration twice is harmless.
    refused = api.http.post(
        "/v1/recipes", json=recipe_body("mine", b"x = 1\n"), headers=bearer(api.owner["token"])
    )
    assert refused.status_code == 403
    again = api.http.post(
        "/v1/recipes", json=recipe_body(input_schema=schema), headers=bearer(api.operator["token"])
    )
    assert again.status_code == 201 and again.json()["created"] == recipe["created"]
    clash = api.http.post(
        "/v1/recipes",
        json=recipe_body("mlp", b"x = 1\n"),
        headers=bearer(api.operator["token"]),
    )
    assert clash.status_code == 409
    bad_b64 = dict(recipe_body("mine"), source="not base64!")
    assert (
        api.http.post(
            "/v1/recipes", json=bad_b64, headers=bearer(api.operator["token"])
        ).status_code
        == 400
    )


def test_a_recipe_shows_its_providers_statement(api):
    recipe = register_recipe(api)
    shown = api.http.get("/v1/recipes/mlp", headers=bearer(api.owner["token"])).json()
    assert shown == recipe
    statement = SignedRecipeStatement.from_bytes(b64decode(shown["statement"]))
    assert statement.provider == PROVIDER.public
    assert statement.statement.name == "mlp" and shown["version"] == "1"
    assert shown["provider_public"] == b64encode(PROVIDER.public.to_bytes())
    assert shown["provider_fingerprint"] == PROVIDER.public.fingerprint
    assert shown["recipe_statement_sha256"] == statement.sha256
    # The statement is kept in the artifact store, beside the source.
    assert api.service.store.read_bytes(sha256(b64decode(shown["statement"])))


def test_registration_needs_the_providers_statement_over_this_very_recipe(api):
    token = bearer(api.operator["token"])

    def register(body: dict) -> dict:
        response = api.http.post("/v1/recipes", json=body, headers=token)
        assert 400 <= response.status_code < 500, response.text
        return response.json()

    # A statement over another file.
    other = dict(recipe_body(), statement=b64encode(signed_statement(source=b"x = 2\n")))
    assert "not the one" in register(other)["message"]
    # A statement whose signature was altered by one bit.
    document = json.loads(signed_statement())
    signature = bytearray(b64decode(document["signature"]))
    signature[0] ^= 1
    document["signature"] = b64encode(bytes(signature))
    flipped = dict(recipe_body(), statement=b64encode(json.dumps(document).encode()))
    assert register(flipped)["error"] == "IntegrityError"
    # A statement for another name, and no statement at all.
    renamed = dict(recipe_body(), statement=b64encode(signed_statement(name="other")))
    assert "names recipe 'other'" in register(renamed)["message"]
    unsigned = recipe_body()
    del unsigned["statement"]
    assert register(unsigned)["error"] == "InputError"
    assert register(dict(recipe_body(), statement=b64encode(b"{}")))["error"] == "InputError"
    assert api.http.get("/v1/recipes", headers=token).json() == []


def test_a_provider_account_registers_under_one_identity(api):
    token = bearer(api.operator["token"])
    register_recipe(api, "first")
    register_recipe(api, "second")
    stranger = Identity.generate()
    refused = api.http.post(
        "/v1/recipes", json=recipe_body("third", provider=stranger), headers=token
    )
    assert refused.status_code == 403 and refused.json()["error"] == "AccessDenied"
    assert "another provider identity" in refused.json()["message"]
    names = [r["name"] for r in api.http.get("/v1/recipes", headers=token).json()]
    assert names == ["first", "second"]
    # Another provider account pins its own identity on its first registration.
    other = create_account(api.service.db, api.service.pepper, name="carol", role="provider")
    mine = api.http.post(
        "/v1/recipes", json=recipe_body("third", provider=stranger), headers=bearer(other)
    )
    assert mine.status_code == 201, mine.text
    assert mine.json()["provider_fingerprint"] == stranger.public.fingerprint
    assert (
        api.http.post("/v1/recipes", json=recipe_body("fourth"), headers=bearer(other)).status_code
        == 403
    )


def test_a_caller_cannot_name_the_provider(api):
    stranger = Identity.generate()
    body = dict(recipe_body(), provider_public=b64encode(stranger.public.to_bytes()))
    refused = api.http.post("/v1/recipes", json=body, headers=bearer(api.operator["token"]))
    assert refused.status_code == 422 and "provider_public" in refused.json()["message"]
    assert api.http.get("/v1/recipes", headers=bearer(api.owner["token"])).json() == []
    # Without it, the provider shown is the statement's, whoever registers.
    recipe = register_recipe(api)
    assert recipe["provider_fingerprint"] == PROVIDER.public.fingerprint


def test_a_recipe_from_before_statements_is_signed_again_by_its_provider(api):
    with api.service.db.transaction() as session:
        operator = session.scalar(select(Account).where(Account.name == "operator"))
        session.add(
            Recipe(
                name="mlp",
                account_id=operator.id,
                description="old",
                task="classification",
                input_schema=None,
                provider_public=Identity.generate().public.to_bytes().hex(),
                source_sha256=api.service.store.put_bytes(RECIPE_SOURCE),
                statement_sha256=None,
                created=1,
            )
        )
    old = api.http.get("/v1/recipes/mlp", headers=bearer(api.owner["token"])).json()
    assert old["statement"] is None and old["provider_public"] is None
    renewed = register_recipe(api)
    assert renewed["provider_fingerprint"] == PROVIDER.public.fingerprint
    assert renewed["description"] == "a small MLP"


def test_dataset_upload_registers_the_public_header(api, dataset_bytes):
    done = upload_bytes(api, api.owner["token"], dataset_bytes)
    assert done["complete"] and done["offset"] == len(dataset_bytes)
    datasets = api.http.get("/v1/datasets", headers=bearer(api.owner["token"])).json()
    assert [d["id"] for d in datasets] == [done["result_id"]]
    dataset = datasets[0]
    assert dataset["record_count"] == 40
    assert dataset["schema"]["input_shape"] == [4]
    assert dataset["sha256"] == sha256(dataset_bytes)
    assert api.service.store.read_bytes(dataset["sha256"]) == dataset_bytes
    # Completing twice answers the same dataset; nothing is registered twice.
    again = api.http.post(f"/v1/uploads/{done['id']}/complete", headers=bearer(api.owner["token"]))
    assert again.json()["result_id"] == done["result_id"]
    assert len(api.http.get("/v1/datasets", headers=bearer(api.owner["token"])).json()) == 1


def test_upload_resumes_from_the_offset_the_service_holds(api, dataset_bytes):
    token = api.owner["token"]
    created = api.http.post(
        "/v1/uploads",
        json={"kind": "dataset", "size": len(dataset_bytes), "sha256": sha256(dataset_bytes)},
        headers=bearer(token),
    ).json()
    first = dataset_bytes[:700]
    api.http.put(
        f"/v1/uploads/{created['id']}/chunks",
        params={"offset": 0, "sha256": sha256(first)},
        content=first,
        headers=bearer(token),
    )
    # A client that lost track asks where to continue, and a wrong offset is refused.
    status = api.http.get(f"/v1/uploads/{created['id']}", headers=bearer(token)).json()
    assert status["offset"] == 700 and not status["complete"]
    assert [u["id"] for u in api.http.get("/v1/uploads", headers=bearer(token)).json()] == [
        created["id"]
    ]
    rest = dataset_bytes[700:]
    stale = api.http.put(
        f"/v1/uploads/{created['id']}/chunks",
        params={"offset": 0, "sha256": sha256(rest)},
        content=rest,
        headers=bearer(token),
    )
    assert stale.status_code == 409 and "continues at byte 700" in stale.json()["message"]
    early = api.http.post(f"/v1/uploads/{created['id']}/complete", headers=bearer(token))
    assert early.status_code == 409
    assert api.http.get("/v1/datasets", headers=bearer(token)).json() == []
    ok = api.http.put(
        f"/v1/uploads/{created['id']}/chunks",
        params={"offset": 700, "sha256": sha256(rest)},
        content=rest,
        headers=bearer(token),
    )
    assert ok.json()["offset"] == len(dataset_bytes)
    done = api.http.post(f"/v1/uploads/{created['id']}/complete", headers=bearer(token)).json()
    assert done["result_id"]
    assert api.http.get("/v1/uploads", headers=bearer(token)).json() == []


def test_a_corrupted_chunk_is_refused_and_a_wrong_checksum_discards_the_upload(api, dataset_bytes):
    token = api.owner["token"]
    wrong_digest = sha256(b"something else")
    created = api.http.post(
        "/v1/uploads",
        json={"kind": "dataset", "size": len(dataset_bytes), "sha256": wrong_digest},
        headers=bearer(token),
    ).json()
    url = f"/v1/uploads/{created['id']}/chunks"
    corrupt = api.http.put(
        url,
        params={"offset": 0, "sha256": sha256(b"other")},
        content=dataset_bytes,
        headers=bearer(token),
    )
    assert corrupt.status_code == 400 and "chunk" in corrupt.json()["message"]
    assert api.http.get(f"/v1/uploads/{created['id']}", headers=bearer(token)).json()["offset"] == 0
    api.http.put(
        url,
        params={"offset": 0, "sha256": sha256(dataset_bytes)},
        content=dataset_bytes,
        headers=bearer(token),
    )
    mismatch = api.http.post(f"/v1/uploads/{created['id']}/complete", headers=bearer(token))
    assert mismatch.status_code == 400 and "SHA-256" in mismatch.json()["message"]
    # Discarded whole: no upload, no staging file, no dataset.
    assert api.http.get(f"/v1/uploads/{created['id']}", headers=bearer(token)).status_code == 404
    assert list((api.service.config.state_dir / "uploads").iterdir()) == []
    assert api.http.get("/v1/datasets", headers=bearer(token)).json() == []


def test_a_file_that_is_not_a_dataset_is_discarded(api):
    done = api.http.post(
        "/v1/uploads",
        json={"kind": "dataset", "size": 10, "sha256": sha256(b"0123456789")},
        headers=bearer(api.owner["token"]),
    ).json()
    api.http.put(
        f"/v1/uploads/{done['id']}/chunks",
        params={"offset": 0, "sha256": sha256(b"0123456789")},
        content=b"0123456789",
        headers=bearer(api.owner["token"]),
    )
    refused = api.http.post(
        f"/v1/uploads/{done['id']}/complete", headers=bearer(api.owner["token"])
    )
    assert refused.status_code == 400
    assert (
        api.http.get(f"/v1/uploads/{done['id']}", headers=bearer(api.owner["token"])).status_code
        == 404
    )


def test_oversized_and_overlong_chunks_are_refused(api, dataset_bytes):
    token = api.owner["token"]
    created = api.http.post(
        "/v1/uploads",
        json={"kind": "dataset", "size": 5, "sha256": sha256(b"12345")},
        headers=bearer(token),
    ).json()
    past_end = api.http.put(
        f"/v1/uploads/{created['id']}/chunks",
        params={"offset": 0, "sha256": sha256(b"123456")},
        content=b"123456",
        headers=bearer(token),
    )
    assert past_end.status_code == 400
    huge = api.http.put(
        f"/v1/uploads/{created['id']}/chunks",
        params={"offset": 0, "sha256": sha256(b"1")},
        content=b"1",
        headers={**bearer(token), "Content-Length": str(10**12)},
    )
    assert huge.status_code == 413


def test_owners_see_only_their_own_datasets_uploads_and_models(api, dataset_bytes):
    alice, bob = api.owner["token"], api.other_owner["token"]
    done = upload_bytes(api, alice, dataset_bytes)
    model = upload_bytes(api, alice, model_bytes(), kind="model")
    assert api.http.get("/v1/datasets", headers=bearer(bob)).json() == []
    assert api.http.get("/v1/models", headers=bearer(bob)).json() == []
    for path in (
        f"/v1/datasets/{done['result_id']}",
        f"/v1/uploads/{done['id']}",
        f"/v1/models/{model['result_id']}",
        f"/v1/models/{model['result_id']}/file",
    ):
        assert api.http.get(path, headers=bearer(bob)).status_code == 404, path
        assert api.http.get(path, headers=bearer(alice)).status_code == 200, path
    refused = api.http.post(
        "/v1/jobs", json={"recipe": "mlp", "dataset": done["result_id"]}, headers=bearer(bob)
    )
    assert refused.status_code == 404
    # Providers cannot upload: only owners hold data.
    provider_upload = api.http.post(
        "/v1/uploads",
        json={"kind": "dataset", "size": 1, "sha256": sha256(b"x")},
        headers=bearer(api.operator["token"]),
    )
    assert provider_upload.status_code == 403


def test_uploaded_models_are_registered_once_and_downloaded_intact(api):
    data = model_bytes()
    first = upload_bytes(api, api.owner["token"], data, kind="model")
    second = upload_bytes(api, api.owner["token"], data, kind="model")
    assert first["result_id"] == second["result_id"]
    model = api.http.get(
        f"/v1/models/{first['result_id']}", headers=bearer(api.owner["token"])
    ).json()
    assert model["model_id"] == "m" * 32 and model["job"] is None
    assert model["query_policy"]["answers"] == "labels"
    download = api.http.get(
        f"/v1/models/{first['result_id']}/file", headers=bearer(api.owner["token"])
    )
    assert download.content == data
    assert download.headers["x-content-sha256"] == sha256(data)
    # A model its owner uploaded was made by no job of a provider's recipe here: no
    # provider sees it (the owner's client relays the provider's share, core.key_release).
    for path in (f"/v1/models/{first['result_id']}", f"/v1/models/{first['result_id']}/file"):
        refused = api.http.get(path, headers=bearer(api.operator["token"]))
        assert refused.status_code == 404 and refused.json()["error"] == "NotFound", path


def test_jobs_check_the_recipe_and_dataset(api, dataset_bytes):
    token = api.owner["token"]
    done = upload_bytes(api, token, dataset_bytes)
    register_recipe(
        api,
        "images",
        input_schema={"input_shape": [1, 28, 28], "dtype": "uint8", "num_classes": 10},
    )
    unknown = api.http.post(
        "/v1/jobs", json={"recipe": "nope", "dataset": done["result_id"]}, headers=bearer(token)
    )
    assert unknown.status_code == 404
    mismatch = api.http.post(
        "/v1/jobs", json={"recipe": "images", "dataset": done["result_id"]}, headers=bearer(token)
    )
    assert mismatch.status_code == 400 and "takes uint8" in mismatch.json()["message"]
    by_provider = api.http.post(
        "/v1/jobs",
        json={"recipe": "images", "dataset": done["result_id"]},
        headers=bearer(api.operator["token"]),
    )
    assert by_provider.status_code == 403
    assert api.http.get("/v1/jobs", headers=bearer(token)).json() == []


def test_bad_requests_get_one_line_errors(api):
    token = api.owner["token"]
    cases = [
        ("get", "/v1/attestation/evidence?nonce=zz", None),
        ("get", "/v1/attestation/evidence?nonce=00", None),
        ("get", "/v1/jobs/nope/evidence?nonce=" + "00" * 16, None),
        ("post", "/v1/uploads", {"kind": "weights", "size": 1, "sha256": "0" * 64}),
        ("post", "/v1/jobs/nope/start", {"manifest": "AA==", "sealed_data_key": "AA=="}),
        ("post", "/v1/jobs/nope/start", {"sealed_data_key": "AA==", "owner_public": "AA=="}),
        ("get", "/v1/jobs/nope/results/weights", None),
        ("post", "/v1/query-sessions", {"model": "nope"}),
        ("post", "/v1/query-sessions/nope/calls/shutdown", {"args": {}}),
        ("delete", "/v1/query-sessions/nope", None),
    ]
    for method, path, body in cases:
        kwargs = {"headers": bearer(token)}
        if body is not None:
            kwargs["json"] = body
        response = getattr(api.http, method)(path, **kwargs)
        assert 400 <= response.status_code < 500, (path, response.status_code, response.text)
        error = response.json()
        assert error["message"] and "\n" not in error["message"], path


def test_state_directory_is_locked_against_a_second_service(api, service_config):
    import pytest

    from chiron.core.errors import ServiceError
    from chiron.host.service import Service

    with pytest.raises(ServiceError, match="another chiron serve"):
        Service.open(service_config)
    assert os.path.exists(service_config.state_dir / "serve.lock")
