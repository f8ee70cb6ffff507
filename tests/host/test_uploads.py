"""Uploads without an fsync per chunk: restarts, reboots, hostile bytes, and the client's digests."""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from chiron.client.remote import ServiceClient, service_client
from chiron.client.remote.file_digests import file_digests
from chiron.core.errors import Conflict, InputError, IntegrityError
from chiron.host import staging
from chiron.host import uploads as uploads_module
from chiron.host.accounts import create_account
from chiron.host.config import ServiceConfig
from chiron.host.db import Account
from chiron.host.server import running_service
from chiron.host.service import Service

from .helpers import make_dataset

CHUNK = 4096


@contextmanager
def _owner_over_http(tmp_path: Path) -> Iterator[tuple[Service, ServiceClient]]:
    """What `chiron serve` runs, on a loopback port, and an owner's client of it."""
    with running_service(ServiceConfig(state_dir=tmp_path / "service")) as (service, url):
        token = create_account(service.db, service.pepper, name="a", role="owner")
        with ServiceClient(url, token) as client:
            yield service, client


def sha256(data: bytes | bytearray) -> str:
    return hashlib.sha256(data).hexdigest()


class Host:
    """A service over one state directory that a test can stop and start again."""

    def __init__(self, state: Path) -> None:
        self.config = ServiceConfig(state_dir=state)
        self.service = Service.open(self.config)
        self.token = create_account(self.service.db, self.service.pepper, name="a", role="owner")

    @property
    def owner(self) -> Account:
        return self.service.authenticate(self.token)

    def restart(self) -> None:
        self.service.close()
        self.service = Service.open(self.config)

    @property
    def staging(self) -> Path:
        return self.config.state_dir / "uploads"

    def append(self, upload_id: str, data: bytes, offset: int) -> int:
        return self.service.uploads.write_chunk(
            self.owner, upload_id, offset=offset, data=data, sha256=sha256(data)
        )

    def settle(self, upload_id: str) -> None:
        """Wait for the background sync of what was appended so far."""
        self.service.uploads._wait_for_sync(upload_id)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    running = Host(tmp_path / "service")
    yield running
    running.service.close()


@pytest.fixture
def dataset(tmp_path: Path) -> bytes:
    path = tmp_path / "data.chd"
    make_dataset(path, records=2000)
    return path.read_bytes()


def start(host: Host, data: bytes) -> str:
    upload = host.service.uploads.create(
        host.owner, kind="dataset", size=len(data), sha256=sha256(data)
    )
    return upload.id


def offset_of(host: Host, upload_id: str) -> int:
    return host.service.uploads.get(host.owner, upload_id)[1]


def test_a_restart_on_the_same_boot_keeps_every_appended_byte(host, dataset):
    upload_id = start(host, dataset)
    host.append(upload_id, dataset[:CHUNK], 0)
    host.append(upload_id, dataset[CHUNK : 3 * CHUNK], CHUNK)
    host.restart()
    assert offset_of(host, upload_id) == 3 * CHUNK
    # The running digest died with the old process: completion reads the file instead.
    host.append(upload_id, dataset[3 * CHUNK :], 3 * CHUNK)
    kind, _ = host.service.uploads.complete(host.owner, upload_id)
    assert kind == "dataset"
    assert list(host.staging.iterdir()) == []


def upload_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("chiron-upload-")}


def test_a_closed_service_stops_its_upload_threads_after_the_sync_in_flight(
    tmp_path, dataset, monkeypatch
):
    # Threads of services that other tests in this process left open are not this one's.
    others = upload_threads()
    syncing = threading.Event()
    sync = uploads_module.Uploads._sync_in_background

    def slow_sync(self: uploads_module.Uploads, upload_id: str) -> None:
        syncing.set()
        time.sleep(0.2)
        sync(self, upload_id)

    monkeypatch.setattr(uploads_module.Uploads, "_sync_in_background", slow_sync)
    running = Host(tmp_path / "service")
    upload_id = start(running, dataset)
    running.append(upload_id, dataset[:CHUNK], 0)
    assert syncing.wait(10)
    assert upload_threads() - others, "the chunk started no helper thread"
    running.service.close()
    assert upload_threads() - others == set()
    # The sync that was running finished, and its record says what it made durable.
    assert staging.durable_length(running.staging / f"{upload_id}.synced") == CHUNK


def test_after_a_reboot_an_upload_resumes_from_what_was_durable(host, dataset, monkeypatch):
    upload_id = start(host, dataset)
    host.append(upload_id, dataset[:CHUNK], 0)
    host.settle(upload_id)
    # The next chunk reaches the page cache but the machine loses power before any sync.
    monkeypatch.setattr(uploads_module.Uploads, "_sync_in_background", lambda self, _: None)
    host.append(upload_id, dataset[CHUNK : 3 * CHUNK], CHUNK)
    monkeypatch.undo()
    monkeypatch.setattr(uploads_module, "boot_id", lambda: "the next boot")
    host.restart()
    # Only what was recorded durable counts; the client resends the rest.
    assert offset_of(host, upload_id) == CHUNK
    host.append(upload_id, dataset[CHUNK:], CHUNK)
    host.service.uploads.complete(host.owner, upload_id)
    assert list(host.staging.iterdir()) == []


@pytest.mark.parametrize("record", [None, "", "garbage", "999999999 other-boot"])
def test_after_a_reboot_a_lost_damaged_or_boastful_record_never_extends_an_upload(
    host, dataset, monkeypatch, record
):
    upload_id = start(host, dataset)
    host.append(upload_id, dataset[: 2 * CHUNK], 0)
    host.settle(upload_id)
    if record is None:
        (host.staging / f"{upload_id}.synced").unlink()
    else:
        (host.staging / f"{upload_id}.synced").write_text(record)
    monkeypatch.setattr(uploads_module, "boot_id", lambda: "the next boot")
    host.restart()
    # Unreadable: start over. A length beyond the file cuts nothing and adds nothing.
    assert offset_of(host, upload_id) == (2 * CHUNK if record and record[0] == "9" else 0)


def test_a_staging_file_altered_while_the_service_was_down_is_discarded(host, dataset):
    upload_id = start(host, dataset)
    host.append(upload_id, dataset[: 2 * CHUNK], 0)
    host.settle(upload_id)
    host.restart()
    staged = host.staging / f"{upload_id}.part"
    altered = bytearray(staged.read_bytes())
    altered[100] ^= 1
    staged.write_bytes(altered)
    host.append(upload_id, dataset[2 * CHUNK :], 2 * CHUNK)
    with pytest.raises(IntegrityError, match="discarded"):
        host.service.uploads.complete(host.owner, upload_id)
    assert list(host.staging.iterdir()) == []
    assert not host.service.store.exists(sha256(dataset))


def test_a_wrong_whole_file_checksum_leaves_no_file(host, dataset):
    upload = host.service.uploads.create(
        host.owner, kind="dataset", size=len(dataset), sha256=sha256(b"another file")
    )
    host.append(upload.id, dataset, 0)
    with pytest.raises(IntegrityError, match="discarded"):
        host.service.uploads.complete(host.owner, upload.id)
    assert list(host.staging.iterdir()) == []
    assert host.service.uploads.open_uploads(host.owner) == []
    assert not host.service.store.exists(sha256(dataset))


def test_a_write_back_error_seen_by_a_background_sync_leaves_no_file(host, dataset, monkeypatch):
    """The kernel reports a failed write-back once, to the first sync that asks: if the
    background sync was that one, the completion's own fsync passes while the disk does
    not hold the hashed bytes. The upload is discarded instead of registered."""
    upload_id = start(host, dataset)
    real_fdatasync = uploads_module.os.fdatasync

    def failing_fdatasync(fd: int) -> None:
        monkeypatch.setattr(uploads_module.os, "fdatasync", real_fdatasync)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(uploads_module.os, "fdatasync", failing_fdatasync)
    host.append(upload_id, dataset[:CHUNK], 0)
    host.settle(upload_id)
    host.append(upload_id, dataset[CHUNK:], CHUNK)
    with pytest.raises(IntegrityError, match="disk failed"):
        host.service.uploads.complete(host.owner, upload_id)
    assert list(host.staging.iterdir()) == []
    assert host.service.uploads.open_uploads(host.owner) == []
    assert not host.service.store.exists(sha256(dataset))


def test_a_chunk_whose_bytes_do_not_match_is_not_appended(host, dataset):
    upload_id = start(host, dataset)
    with pytest.raises(IntegrityError, match="chunk"):
        host.service.uploads.write_chunk(
            host.owner, upload_id, offset=0, data=dataset[:CHUNK], sha256=sha256(b"other")
        )
    # Nor with a digest the route computed that disagrees with the declared one.
    with pytest.raises(IntegrityError, match="chunk"):
        host.service.uploads.write_chunk(
            host.owner,
            upload_id,
            offset=0,
            data=dataset[:CHUNK],
            sha256=sha256(dataset[:CHUNK]),
            data_sha256=sha256(b"what arrived"),
        )
    assert offset_of(host, upload_id) == 0


def test_a_replayed_chunk_is_refused_and_the_running_digest_stays_right(host, dataset):
    upload_id = start(host, dataset)
    host.append(upload_id, dataset[:CHUNK], 0)
    with pytest.raises(Conflict, match="continues at byte"):
        host.append(upload_id, dataset[:CHUNK], 0)
    host.append(upload_id, dataset[CHUNK:], CHUNK)
    assert host.service.uploads.complete(host.owner, upload_id)[0] == "dataset"


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096, 100_000])
@pytest.mark.parametrize("chunk_bytes", [7, 4096, 10_000, 1 << 20])
def test_file_digests_match_hashlib(tmp_path, monkeypatch, size, chunk_bytes):
    # Small read blocks, so chunks span several blocks and blocks end chunks.
    monkeypatch.setattr("chiron.client.remote.file_digests._HASH_BLOCK", 3000)
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    digests = file_digests(path, chunk_bytes)
    assert (digests.size, digests.sha256) == (size, sha256(data))
    expected = [sha256(data[i : i + chunk_bytes]) for i in range(0, size, chunk_bytes)]
    assert list(digests.chunks) == expected
    for index, digest in enumerate(expected):
        offset = index * chunk_bytes
        length = min(chunk_bytes, size - offset)
        assert digests.of_chunk(offset, length) == digest
    # A chunk the first read did not cut (a resumed offset, another length) is not known.
    assert digests.of_chunk(1, 1) is None
    assert digests.of_chunk(0, size + 1) is None
    assert digests.of_chunk(size, 1) is None


@pytest.mark.parametrize("piece", [333, 1 << 20])
def test_the_client_sends_a_chunk_in_pieces_and_resumes_mid_chunk(tmp_path, monkeypatch, piece):
    monkeypatch.setattr("chiron.client.remote.service_client._SEND_PIECE", piece)
    path = tmp_path / "data.chd"
    make_dataset(path, records=2000)
    data = path.read_bytes()
    with _owner_over_http(tmp_path) as (_service, client):
        # An earlier attempt stopped part-way into a chunk of the size the client uses.
        upload = client.create_upload(kind="dataset", size=len(data), sha256=sha256(data))
        client.put_chunk(upload["id"], 0, data[:1500])
        done = client.upload(path, kind="dataset", progress=False, chunk_bytes=1000)
        assert done["id"] == upload["id"] and done["complete"]
        assert client.dataset(done["result_id"])["sha256"] == sha256(data)


def test_a_chunk_received_in_blocks_is_appended_in_order(host, dataset, monkeypatch):
    # The route hands over the blocks the body arrived in; they are written gathered,
    # a few per system call here, and hashed in order for the whole-file digest.
    monkeypatch.setattr(staging, "_IOV_MAX", 3)
    upload_id = start(host, dataset)
    cuts = [0, 1, 2, 100, 101, 5000, 9000, 9001, len(dataset)]
    blocks = [dataset[a:b] for a, b in itertools.pairwise(cuts)]
    host.service.uploads.write_chunk(
        host.owner, upload_id, offset=0, data=blocks, sha256=sha256(dataset)
    )
    assert (host.staging / f"{upload_id}.part").read_bytes() == dataset
    assert host.service.uploads.complete(host.owner, upload_id)[0] == "dataset"


def test_a_chunk_altered_near_its_end_is_refused_over_http(tmp_path):
    # The body arrives in many blocks; the altered one is among the last.
    path = tmp_path / "data.chd"
    make_dataset(path, records=2000)
    data = path.read_bytes()
    altered = bytearray(data)
    altered[-10] ^= 1
    with _owner_over_http(tmp_path) as (_service, client):
        upload = client.create_upload(kind="dataset", size=len(data), sha256=sha256(data))
        with pytest.raises(IntegrityError, match="chunk"):
            client.put_chunk(upload["id"], 0, altered, sha256=sha256(data))
        assert client.upload_status(upload["id"])["offset"] == 0
        assert client.put_chunk(upload["id"], 0, data)["offset"] == len(data)
        assert client.complete_upload(upload["id"])["complete"]


def test_chunks_streamed_from_the_file_in_pieces_arrive_whole(tmp_path, monkeypatch):
    # Pieces that do not divide a chunk: each chunk is read from the file piece by piece.
    monkeypatch.setattr(service_client, "_SEND_PIECE", 333)
    path = tmp_path / "data.chd"
    make_dataset(path, records=2000)
    data = path.read_bytes()
    with _owner_over_http(tmp_path) as (service, client):
        done = client.upload(path, kind="dataset", progress=False, chunk_bytes=1000)
        assert client.dataset(done["result_id"])["sha256"] == sha256(data)
    stored = service.store.local_path(sha256(data)).read_bytes()
    assert stored == data


def _changing_after_the_digests(monkeypatch, change) -> None:
    """The file changes between the client's digest pass and its chunks being sent."""
    real = service_client.digests_of

    def digests_then_change(path: Path, chunk_bytes: int):
        digests = real(path, chunk_bytes)
        change(path)
        return digests

    monkeypatch.setattr(service_client, "digests_of", digests_then_change)
    monkeypatch.setattr(service_client.time, "sleep", lambda seconds: None)


def test_a_file_rewritten_during_its_upload_is_never_registered(tmp_path, monkeypatch):
    path = tmp_path / "data.chd"
    make_dataset(path, records=2000)

    def rewrite(target: Path) -> None:
        data = bytearray(target.read_bytes())
        data[-10] ^= 1
        target.write_bytes(data)

    _changing_after_the_digests(monkeypatch, rewrite)
    with _owner_over_http(tmp_path) as (_service, client):
        # The streamed chunk fails its digest from the first pass; the retry sends what
        # it hashed; the whole file then differs from what the upload announced.
        with pytest.raises(IntegrityError, match="declared one"):
            client.upload(path, kind="dataset", progress=False, chunk_bytes=4096)
        assert client.datasets() == [] and client.uploads() == []
    assert list((tmp_path / "service" / "uploads").iterdir()) == []


def test_a_file_cut_short_during_its_upload_stops_it_with_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "data.chd"
    make_dataset(path, records=2000)
    _changing_after_the_digests(monkeypatch, lambda target: os.truncate(target, 5000))
    with _owner_over_http(tmp_path) as (_service, client):
        with pytest.raises(InputError, match="got shorter"):
            client.upload(path, kind="dataset", progress=False, chunk_bytes=4096)
        assert client.datasets() == []
        (open_upload,) = client.uploads()
        assert open_upload["offset"] == 4096  # the first chunk, whole and checked
