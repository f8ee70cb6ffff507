"""The list of calls into an enclave, and which role answers which.

`enclave.boundary` lists these for the host, and an enclave refuses any call its role
does not answer. The documents each call carries are in this package's other modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from chiron.core.roles import Role


class Call(StrEnum):
    ATTEST = "attest"
    TRAIN = "train"
    EXCHANGE = "exchange"
    LOAD_MODEL = "load_model"
    PROVISION_SHARE = "provision_share"
    QUERY = "query"
    EVALUATE = "evaluate"
    SHUTDOWN = "shutdown"


# The complete list of calls into an enclave, by role; the enclave refuses the rest.
CALLS_BY_ROLE: Mapping[Role, tuple[Call, ...]] = {
    Role.TRAIN: (Call.ATTEST, Call.TRAIN, Call.SHUTDOWN),
    Role.QUERY: (
        Call.ATTEST,
        Call.LOAD_MODEL,
        Call.PROVISION_SHARE,
        Call.QUERY,
        Call.EVALUATE,
        Call.SHUTDOWN,
    ),
    Role.PARAMSERVER: (Call.ATTEST, Call.EXCHANGE, Call.SHUTDOWN),
}
