"""The roles an enclave process can play, named once.

An enclave states its role in its attested report data, so a client that verified the
evidence knows what kind of enclave it is about to trust: a training enclave's key
never receives an evaluation set, a query enclave's never a training job.
"""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    TRAIN = "train"
    QUERY = "query"
    PARAMSERVER = "paramserver"


ROLES: tuple[str, ...] = tuple(role.value for role in Role)
