"""The owner's own record of the jobs it signed manifests for, kept on its machine.

Job ids are the host's to choose. A host that gave one id to two jobs of the same owner
could, on `resume`, offer the manifest of the other one and so continue this job under
terms the owner signed for another (a plan without its fixed rate, other epochs).
The client remembers, per job id, the terms it signed (the manifest's `job_binding`:
recipe statement, dataset, plan, parties; not the enclaves or the time) and refuses to
sign other terms for a known id, or to resume a job whose manifest names other terms.
A job resumed from another machine has no record there and is judged by its manifest.
"""

from __future__ import annotations

from pathlib import Path

from chiron.core.encoding import canonical_json, sha256_hex
from chiron.core.errors import IntegrityError
from chiron.core.fileio import atomic_write
from chiron.core.identifiers import check_job_id
from chiron.core.manifest import JobManifest

FOLDER = "signed-jobs"


def _terms(manifest: JobManifest) -> str:
    return sha256_hex(canonical_json(manifest.job_binding()))


def _record(state_dir: Path, job_id: str) -> Path:
    return state_dir / FOLDER / check_job_id(job_id)


def check_terms(state_dir: Path, manifest: JobManifest) -> None:
    """Refuse a manifest whose terms differ from what this owner signed for its job id."""
    try:
        known = _record(state_dir, manifest.job_id).read_text().strip()
    except FileNotFoundError:
        return
    if known != _terms(manifest):
        raise IntegrityError(
            f"the host gave job id {manifest.job_id} to another job than the one this "
            "owner signed for it: refused"
        )


def remember_terms(state_dir: Path, manifest: JobManifest) -> None:
    """Record the terms of a manifest about to be signed (after `check_terms` passed)."""
    path = _record(state_dir, manifest.job_id)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        atomic_write(path, (_terms(manifest) + "\n").encode(), mode=0o600)
