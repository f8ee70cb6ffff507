"""A host that gives one job id to two jobs of the same owner gains nothing.

Job ids are the host's to choose. Without a record of its own, an owner resuming job J
would accept the manifest the host returns for J as long as the owner signed it: the
host could offer the manifest of another job it had also called J (one without the
fixed rate, say) and have the owner's client sign a new manifest on those terms. The
client remembers the terms it signed per job id (`client/signed_jobs.py`) and refuses.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from chiron.client import signed_jobs
from chiron.client.jobs import resume_job
from chiron.core.errors import IntegrityError
from chiron.core.keys import Identity
from chiron.core.manifest import DatasetRef, Plan, new_manifest

OWNER, PROVIDER, ENCLAVE = Identity.generate(), Identity.generate(), Identity.generate()
DATASET = DatasetRef("d" * 32, hashlib.sha256(b"header").hexdigest())


def manifest(plan: Plan):
    return new_manifest(
        job_id="job-1",
        owner=OWNER,
        provider=PROVIDER.public,
        recipe_sha256=hashlib.sha256(b"recipe").hexdigest(),
        recipe_statement_sha256=hashlib.sha256(b"statement").hexdigest(),
        dataset=DATASET,
        plan=plan,
        enclaves=(ENCLAVE.public,),
    )


ON_THE_CLOCK = Plan(seed=1, epochs=3, fixed_rate=True)
FREE = Plan(seed=1, epochs=3)


class HostOfferingTheOtherJob:
    """Answers for job-1 with the owner's manifest of the other job it also called job-1."""

    def __init__(self) -> None:
        self.attested = False

    def job(self, job_id: str) -> dict:
        return {"id": job_id, "state": "interrupted", "status": "interrupted", "recipe": "r"}

    def job_manifest(self, job_id: str) -> bytes:
        return manifest(FREE).to_wire()

    def __getattr__(self, name: str):
        # Anything further (the recipe statement, an enclave's evidence) means the
        # client went on with the other job's terms.
        self.attested = True
        raise AssertionError(f"the client went on to {name}")


def test_resuming_refuses_the_manifest_of_another_job_with_the_same_id(tmp_path: Path):
    state = tmp_path / "owner"
    signed_jobs.remember_terms(state, manifest(ON_THE_CLOCK).manifest)
    host = HostOfferingTheOtherJob()
    with pytest.raises(IntegrityError, match="gave job id job-1 to another job"):
        resume_job(
            host,  # type: ignore[arg-type]
            "job-1",
            owner=OWNER,
            dataset=tmp_path / "unused.chd",
            data_key_path=tmp_path / "unused.key",
            policy=None,  # type: ignore[arg-type]
            state_dir=state,
            sim_roots=None,
        )
    assert not host.attested


def test_signing_other_terms_for_a_known_job_id_is_refused(tmp_path: Path):
    signed_jobs.remember_terms(tmp_path, manifest(ON_THE_CLOCK).manifest)
    signed_jobs.check_terms(tmp_path, manifest(ON_THE_CLOCK).manifest)  # the same job: fine
    with pytest.raises(IntegrityError, match="another job"):
        signed_jobs.check_terms(tmp_path, manifest(FREE).manifest)


def test_a_job_id_unknown_here_is_judged_by_its_manifest(tmp_path: Path):
    signed_jobs.check_terms(tmp_path, manifest(FREE).manifest)  # no record: no refusal
