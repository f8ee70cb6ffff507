"""Fixtures for the host service: a service in tmp_path with accounts, and a dataset."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from chiron.host.accounts import create_account
from chiron.host.api import create_app
from chiron.host.config import ServiceConfig
from chiron.host.service import Service

from .helpers import Api, make_dataset


@pytest.fixture
def service_config(tmp_path: Path) -> ServiceConfig:
    return ServiceConfig(state_dir=tmp_path / "service")


@pytest.fixture
def api(service_config: ServiceConfig) -> Iterator[Api]:
    service = Service.open(service_config)
    try:
        operator_token = service.operator_token_path.read_text().strip()
        owner = create_account(service.db, service.pepper, name="alice", role="owner")
        other = create_account(service.db, service.pepper, name="bob", role="owner")
        with TestClient(create_app(service)) as http:
            yield Api(
                service,
                http,
                {"name": "operator", "token": operator_token},
                {"name": "alice", "token": owner},
                {"name": "bob", "token": other},
            )
    finally:
        service.close()


@pytest.fixture
def dataset_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "data.chd"
    make_dataset(path)
    return path.read_bytes()
