"""How a wait for a training job ends: its record when done, or the error that says why not.

A job is waited for in two places, `host.local.LocalHost` (this process's own jobs) and
`client.remote.ServiceClient` (a service's, over its REST API); both read the same job
record (docs/api.md), and the owner's client drives either with one flow, so both end
the wait here.
"""

from __future__ import annotations

from typing import Any

from chiron.core.errors import Conflict, JobFailed


def job_outcome(job: dict[str, Any], resume_hint: str) -> dict[str, Any] | None:
    """`job` once it is done, None while it may still finish.

    A failed job raises JobFailed with its reason class; an interrupted one (its enclave
    was lost) raises Conflict naming `resume_hint`, the command that continues it.
    """
    if job["state"] == "done":
        return job
    if job["state"] == "failed":
        raise JobFailed(job["reason"] or "unknown", job.get("message") or None)
    if job["state"] == "interrupted":
        raise Conflict(
            f"job {job['id']} was interrupted ({job['reason']}); continue it with `{resume_hint}`"
        )
    return None
