"""SIGKILL of a real `chiron serve` in the middle of an upload and of a job loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from chiron.client.remote import ServiceClient

from .helpers import RECIPE_SOURCE, make_dataset, sha256, signed_statement

CHIRON = [sys.executable, "-m", "chiron"]
SERVE = [*CHIRON, "serve", "--host", "127.0.0.1", "--port", "0"]


class RunningServe:
    """`chiron serve` in a subprocess; `url` is the first line it prints."""

    def __init__(self, state: Path) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHIRON_")}
        self.process = subprocess.Popen(
            [*SERVE, "--state", str(state)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.process.kill()
            raise AssertionError(f"chiron serve did not start: {self.process.stderr.read()}")

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def serve(tmp_path) -> Iterator:
    started: list[RunningServe] = []

    def start() -> RunningServe:
        running = RunningServe(tmp_path / "service")
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def _owner_token(state: Path) -> str:
    completed = subprocess.run(
        [
            *CHIRON,
            "service",
            "account",
            "create",
            "alice",
            "--role",
            "owner",
            "--state",
            str(state),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return completed.stdout.strip()


def _stalled_chunk(
    url: str, token: str, upload_id: str, offset: int, chunk: bytes, stall: threading.Event
):
    """PUT a chunk whose body stops half-way until `stall` is set (the service dies first)."""

    def body() -> Iterator[bytes]:
        yield chunk[: len(chunk) // 2]
        stall.wait(60)
        yield chunk[len(chunk) // 2 :]

    def send() -> None:
        try:
            httpx.put(
                f"{url}/v1/uploads/{upload_id}/chunks",
                params={"offset": offset, "sha256": sha256(chunk)},
                content=body(),
                headers={"Authorization": f"Bearer {token}", "Content-Length": str(len(chunk))},
                timeout=60,
            )
        except httpx.HTTPError:
            pass  # the service was killed under it

    thread = threading.Thread(target=send)
    thread.start()
    return thread


@pytest.mark.slow
def test_sigkill_mid_upload_then_resume(tmp_path, serve):
    state = tmp_path / "service"
    dataset = tmp_path / "data.chd"
    make_dataset(dataset, records=2000)
    data = dataset.read_bytes()
    chunk = 4096

    first = serve()
    token = _owner_token(state)
    with ServiceClient(first.url, token) as client:
        upload = client.create_upload(kind="dataset", size=len(data), sha256=sha256(data))
        for offset in range(0, 3 * chunk, chunk):
            client.put_chunk(upload["id"], offset, data[offset : offset + chunk])
    stall = threading.Event()
    sender = _stalled_chunk(
        first.url, token, upload["id"], 3 * chunk, data[3 * chunk : 4 * chunk], stall
    )
    time.sleep(0.5)
    first.kill()
    stall.set()
    sender.join(timeout=60)

    second = serve()
    with ServiceClient(second.url, token) as client:
        # Nothing of the interrupted chunk counts; everything before it is kept.
        assert client.upload_status(upload["id"])["offset"] == 3 * chunk
        assert client.datasets() == []
        registered = client.upload_dataset(dataset, progress=False)
        assert registered["sha256"] == sha256(data)
        assert registered["record_count"] == 2000
        assert client.uploads() == []
    assert list((state / "uploads").iterdir()) == []


@pytest.mark.slow
def test_sigkill_with_a_job_in_flight_marks_it_failed(tmp_path, serve):
    state = tmp_path / "service"
    dataset = tmp_path / "data.chd"
    make_dataset(dataset)
    first = serve()
    token = _owner_token(state)
    operator = (state / "operator.token").read_text().strip()
    with ServiceClient(first.url, operator) as provider:
        provider.register_recipe("mlp", source=RECIPE_SOURCE, statement=signed_statement())
    with ServiceClient(first.url, token) as client:
        registered = client.upload_dataset(dataset, progress=False)
        job = client.create_job(recipe="mlp", dataset=registered["id"])
        assert job["state"] == "created"
    first.kill()

    second = serve()
    with ServiceClient(second.url, token) as client:
        after = client.job(job["id"])
        assert (after["state"], after["reason"]) == ("failed", "host_restart")
        assert after["status"] == "failed (host_restart)"
        # The dataset survived whole.
        assert client.datasets()[0]["sha256"] == registered["sha256"]
    with ServiceClient(second.url, operator) as provider:
        seen = provider.job(job["id"])
        assert seen["status"] == "failed (host_restart)" and seen["message"] is None
