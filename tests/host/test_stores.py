"""Artifact stores: the local folder, and S3 against moto's server mode."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator

import boto3
import pytest
from fastapi.testclient import TestClient

from chiron.core.errors import IntegrityError, NotFound, ServiceError, UsageError
from chiron.host.api import create_app
from chiron.host.config import ServiceConfig
from chiron.host.service import Service
from chiron.host.store import LocalStore, S3Store, open_store

from .helpers import Api, bearer, sha256, upload_bytes


def test_local_store_is_content_addressed_and_read_only(tmp_path):
    store = LocalStore(tmp_path / "artifacts")
    digest = store.put_bytes(b"ciphertext")
    assert digest == hashlib.sha256(b"ciphertext").hexdigest()
    assert store.put_bytes(b"ciphertext") == digest
    path = store.local_path(digest)
    assert path.read_bytes() == b"ciphertext"
    assert path.stat().st_mode & 0o222 == 0
    staged = tmp_path / "staged"
    staged.write_bytes(b"more")
    store.put_file(staged, sha256(b"more"))
    staged.unlink()
    assert b"".join(store.iter_bytes(sha256(b"more"))) == b"more"
    with pytest.raises(NotFound):
        store.local_path("0" * 64)
    with pytest.raises(ValueError):
        store.local_path("../../etc/passwd")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def s3_endpoint(monkeypatch) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="chiron-test")
    try:
        yield endpoint
    finally:
        server.stop()


def test_s3_store_round_trip_and_verified_cache(tmp_path, s3_endpoint):
    store = S3Store("s3://chiron-test/prefix", tmp_path / "cache", endpoint=s3_endpoint)
    store.check()
    digest = store.put_bytes(b"ciphertext" * 1000)
    assert store.exists(digest) and not store.exists("0" * 64)
    assert store.read_bytes(digest) == b"ciphertext" * 1000
    assert store.local_path(digest).read_bytes() == b"ciphertext" * 1000
    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket="chiron-test")[
            "Contents"
        ]
    ]
    assert keys == [f"prefix/sha256/{digest}"]
    # The bucket is not trusted: other bytes under a name are caught on the way to an enclave.
    boto3.client("s3", endpoint_url=s3_endpoint).put_object(
        Bucket="chiron-test", Key=f"prefix/sha256/{'1' * 64}", Body=b"tampered"
    )
    with pytest.raises(IntegrityError):
        store.local_path("1" * 64)
    assert not (tmp_path / "cache" / ("1" * 64)).exists()


def test_s3_store_failures_are_one_line(tmp_path, s3_endpoint):
    with pytest.raises(UsageError):
        open_store("http://bucket", tmp_path, endpoint=s3_endpoint)
    with pytest.raises(ServiceError, match="cannot reach S3 bucket missing"):
        open_store("s3://missing/x", tmp_path, endpoint=s3_endpoint)


def test_service_on_s3_uploads_into_the_bucket(tmp_path, s3_endpoint, dataset_bytes):
    config = ServiceConfig(
        state_dir=tmp_path / "service", store_url="s3://chiron-test/chiron", s3_endpoint=s3_endpoint
    )
    service = Service.open(config)
    try:
        from chiron.host.accounts import create_account

        owner = create_account(service.db, service.pepper, name="alice", role="owner")
        with TestClient(create_app(service)) as http:
            api = Api(service, http, {}, {"token": owner}, {})
            done = upload_bytes(api, owner, dataset_bytes, chunk=len(dataset_bytes))
            dataset = http.get(f"/v1/datasets/{done['result_id']}", headers=bearer(owner)).json()
        listed = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(Bucket="chiron-test")
        assert f"chiron/sha256/{dataset['sha256']}" in [o["Key"] for o in listed["Contents"]]
        assert not (tmp_path / "service" / "artifacts").exists()
    finally:
        service.close()
