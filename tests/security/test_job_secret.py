"""Checkpoints sealed under the owner's job secret: any platform, this job only."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from chiron.core.errors import IntegrityError
from chiron.core.keys import Identity
from chiron.core.manifest import DatasetRef, JobManifest, Plan
from chiron.enclave.accepted_job import AcceptedJob
from chiron.enclave.checkpoints import checkpoint_key
from chiron.enclave.context import EnclaveContext
from chiron.enclave.sealing import SealingKey, sealed_size

MEASUREMENT = hashlib.sha256(b"runtime").hexdigest()


def manifest(
    owner: Identity, provider: Identity, *, seed: int = 1, enclave: str = "a"
) -> JobManifest:
    return JobManifest(
        job_id="job-1",
        owner=owner.public,
        provider=provider.public,
        recipe_sha256="1" * 64,
        recipe_statement_sha256="2" * 64,
        datasets=(DatasetRef("3" * 32, "4" * 64),),
        plan=Plan(seed=seed),
        enclaves=(hashlib.sha256(enclave.encode()).hexdigest(),),
        issued_at=1,
    )


def job_secret(owner: Identity, job: JobManifest) -> bytes:
    from chiron.core.encoding import canonical_json

    return owner.derive_secret("job-secret", canonical_json(job.job_binding()))


def test_the_same_job_gets_the_same_secret_under_a_new_manifest_for_new_enclaves():
    owner, provider = Identity.generate(), Identity.generate()
    first = manifest(owner, provider, enclave="a")
    resumed = dataclasses.replace(first, enclaves=(hashlib.sha256(b"b").hexdigest(),), issued_at=9)
    assert job_secret(owner, first) == job_secret(owner, resumed)
    assert len(job_secret(owner, first)) == 32


def test_another_job_or_another_owner_gets_another_secret():
    owner, provider, stranger = Identity.generate(), Identity.generate(), Identity.generate()
    job = manifest(owner, provider)
    assert job_secret(owner, job) != job_secret(owner, manifest(owner, provider, seed=2))
    assert job_secret(owner, job) != job_secret(stranger, job)


def test_a_checkpoint_sealed_under_one_job_secret_does_not_open_under_another():
    owner, provider = Identity.generate(), Identity.generate()
    ours = SealingKey.for_job(
        job_secret(owner, manifest(owner, provider)), measurement=MEASUREMENT, purpose="p"
    )
    theirs = SealingKey.for_job(
        job_secret(owner, manifest(owner, provider, seed=2)), measurement=MEASUREMENT, purpose="p"
    )
    blob = ours.seal(b"training state", {"job": 1})
    assert ours.unseal(blob, {"job": 1}) == b"training state"
    with pytest.raises(IntegrityError):
        theirs.unseal(blob, {"job": 1})
    # Another runtime (measurement) cannot open it either.
    other_runtime = SealingKey.for_job(
        job_secret(owner, manifest(owner, provider)), measurement="0" * 64, purpose="p"
    )
    with pytest.raises(IntegrityError):
        other_runtime.unseal(blob, {"job": 1})


def _accepted(checkpoints: Path | None, secret: bytes | None) -> AcceptedJob:
    return AcceptedJob(
        signed=None,  # type: ignore[arg-type]  (not read by checkpoint_key)
        statement=None,  # type: ignore[arg-type]
        recipe_name="r.py",
        recipe_source=b"",
        dataset_path=Path("/nonexistent"),
        header=None,  # type: ignore[arg-type]
        data_key=b"",
        checkpoint_dir=checkpoints,
        job_secret=secret,
    )


def test_a_job_on_hardware_checkpoints_with_the_owners_secret_and_no_platform_secret(tmp_path):
    context = EnclaveContext.create(
        role="train", state_dir=str(tmp_path / "state"), platform_name="tsm"
    )
    key = checkpoint_key(context, _accepted(tmp_path / "ckpt", b"k" * 32))
    assert key is not None
    assert key.unseal(key.seal(b"state", {}), {}) == b"state"
    # Nothing of a simulated platform secret was created or used.
    assert not (tmp_path / "state" / "sim-sealing").exists()


def test_without_the_owners_secret_a_hardware_job_has_no_checkpoints(tmp_path):
    context = EnclaveContext.create(
        role="train", state_dir=str(tmp_path / "state"), platform_name="tsm"
    )
    assert checkpoint_key(context, _accepted(tmp_path / "ckpt", None)) is None
    assert checkpoint_key(context, _accepted(None, b"k" * 32)) is None


def test_a_checkpoint_file_is_sealed_whole_private_and_bound(tmp_path):
    key = SealingKey.for_job(b"k" * 32, measurement=MEASUREMENT, purpose="p")
    state = bytearray(range(256)) * 4096  # a megabyte, as a child's checkpoint arrives
    path = tmp_path / "checkpoint.sealed"
    key.seal_to_file(path, state, {"job": 1})
    blob = path.read_bytes()
    assert key.unseal(blob, {"job": 1}) == state
    assert bytes(state[:4096]) not in blob
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left over
    with pytest.raises(IntegrityError):
        key.unseal(blob, {"job": 2})
    # Sealing the same state again gives another ciphertext (a fresh nonce each time).
    key.seal_to_file(path, state, {"job": 1})
    assert path.read_bytes() != blob


def test_a_reused_buffer_seals_each_state_afresh(tmp_path):
    key = SealingKey.for_job(b"k" * 32, measurement=MEASUREMENT, purpose="p")
    buffer = bytearray(sealed_size(5))
    path = tmp_path / "checkpoint.sealed"
    key.seal_to_file(path, b"first", {"job": 1}, buffer=buffer)
    first = path.read_bytes()
    key.seal_to_file(path, b"again", {"job": 1}, buffer=buffer)
    assert key.unseal(first, {"job": 1}) == b"first"
    assert key.unseal(path.read_bytes(), {"job": 1}) == b"again"
    with pytest.raises(ValueError):
        key.seal_to_file(path, b"longer state", {"job": 1}, buffer=buffer)
    assert key.unseal(path.read_bytes(), {"job": 1}) == b"again"  # left as it was
