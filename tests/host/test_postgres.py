"""The service on a real PostgreSQL server (initdb in a temporary folder, loopback only).

Skipped when PostgreSQL's server programs are not installed (Debian: `postgresql`).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from chiron.host.accounts import PEPPER_FILE, create_account
from chiron.host.api import create_app
from chiron.host.config import ServiceConfig
from chiron.host.service import Service

from .helpers import Api, bearer, upload_bytes


def _server_programs() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    programs = _server_programs()
    if programs is None:
        pytest.skip("PostgreSQL server programs are not installed (Debian package: postgresql)")
    run_as: list[str] = []
    # PostgreSQL refuses to run as root; run it as the `postgres` user Debian creates.
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user")
        run_as = ["runuser", "-u", "postgres", "--"]
    # Outside pytest's private tmp tree so that the postgres user can reach it.
    root = Path(tempfile.mkdtemp(prefix="chiron-pg-"))
    if run_as:
        os.chown(root, user.pw_uid, user.pw_gid)
    data, port = root / "data", _free_port()
    try:
        subprocess.run(
            [
                *run_as,
                str(programs / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                *run_as,
                str(programs / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                f"-p {port} -k {root} -c listen_addresses=127.0.0.1",
                "-l",
                str(root / "log"),
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(
            f"could not start PostgreSQL: {exc.stderr.decode(errors='replace').strip()[:200]}"
        )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*run_as, str(programs / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)


def test_service_on_postgresql(tmp_path, postgres_url, dataset_bytes):
    config = ServiceConfig(state_dir=tmp_path / "a", db_url=postgres_url)
    service = Service.open(config)
    try:
        owner = create_account(service.db, service.pepper, name="alice", role="owner")
        operator = service.operator_token_path.read_text().strip()
        with TestClient(create_app(service)) as http:
            api = Api(service, http, {"token": operator}, {"token": owner}, {})
            done = upload_bytes(api, owner, dataset_bytes)
            listed = http.get("/v1/datasets", headers=bearer(owner)).json()
            assert [d["id"] for d in listed] == [done["result_id"]]
            assert http.get("/v1/whoami", headers=bearer(operator)).json()["role"] == "provider"
    finally:
        service.close()
    # Restarting on the same database finds everything, migrations already applied.
    again = Service.open(config)
    try:
        with TestClient(create_app(again)) as http:
            assert len(http.get("/v1/datasets", headers=bearer(owner)).json()) == 1
    finally:
        again.close()


def test_two_machines_share_one_database(tmp_path, postgres_url):
    first = Service.open(ServiceConfig(state_dir=tmp_path / "a", db_url=postgres_url))
    # Machines sharing a database share the token pepper (see docs/deployment.md).
    (tmp_path / "b").mkdir(mode=0o700)
    shutil.copy2(tmp_path / "a" / PEPPER_FILE, tmp_path / "b" / PEPPER_FILE)
    second = Service.open(ServiceConfig(state_dir=tmp_path / "b", db_url=postgres_url))
    try:
        token = create_account(first.db, first.pepper, name="carol", role="owner")
        assert second.authenticate(token).name == "carol"
        assert not second.operator_token_path.exists()
        assert first.instance_id != second.instance_id
    finally:
        second.close()
        first.close()
