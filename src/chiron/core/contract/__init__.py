"""The enclave call contract: every call's arguments and results, as types.

The host reaches an enclave only through `enclave.boundary`, which carries one request
and one result per call as a JSON document (bytes as {"$bytes": base64}). This package
is that document's schema: a frozen dataclass per request and per result, each with
`to_wire()` and `from_wire()`; `from_wire` holds all the validation, so an enclave
never looks at a raw argument, and a reader can check the whole binding here.

One module per call family, all re-exported here:

    calls         the calls, and which role answers which (`CALLS_BY_ROLE`)
    fields        the readers every `from_wire` is made of
    attest        attest
    train         train: the owner's half and the host's half (who supplies what)
    distributed   a distributed job's members and rendezvous, and exchange
    query         load_model, provision_share, query, evaluate

    call              role          request → result
    attest            every role    AttestRequest → AttestResult
    train             train         TrainRequest → TrainResult
    exchange          paramserver   ExchangeRequest → ExchangeResult
    load_model        query         LoadModelRequest → LoadModelResult
    provision_share   query         ProvisionShareRequest → ProvisionShareResult
    query             query         QueryRequest → QueryResult
    evaluate          query         EvaluateRequest → EvaluateResult
    shutdown          every role    (nothing) → (nothing)
"""

from chiron.core.contract.attest import AttestRequest, AttestResult
from chiron.core.contract.calls import CALLS_BY_ROLE, Call
from chiron.core.contract.distributed import (
    DEFAULT_EXCHANGE_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT,
    ExchangeRequest,
    ExchangeResult,
    GroupMembership,
    Rendezvous,
)
from chiron.core.contract.fields import MAX_MODEL_FILE_BYTES, MAX_PATH_CHARS, MAX_TIMEOUT_SECONDS
from chiron.core.contract.query import (
    MAX_SEALED_INPUT_BYTES,
    ChannelOpening,
    EvaluateRequest,
    EvaluateResult,
    LoadModelRequest,
    LoadModelResult,
    ProvisionShareRequest,
    ProvisionShareResult,
    QueryRequest,
    QueryResult,
)
from chiron.core.contract.train import (
    TrainAuthorization,
    TrainMaterials,
    TrainRequest,
    TrainResult,
)

__all__ = [
    "CALLS_BY_ROLE",
    "DEFAULT_EXCHANGE_TIMEOUT",
    "DEFAULT_HANDSHAKE_TIMEOUT",
    "MAX_MODEL_FILE_BYTES",
    "MAX_PATH_CHARS",
    "MAX_SEALED_INPUT_BYTES",
    "MAX_TIMEOUT_SECONDS",
    "AttestRequest",
    "AttestResult",
    "Call",
    "ChannelOpening",
    "EvaluateRequest",
    "EvaluateResult",
    "ExchangeRequest",
    "ExchangeResult",
    "GroupMembership",
    "LoadModelRequest",
    "LoadModelResult",
    "ProvisionShareRequest",
    "ProvisionShareResult",
    "QueryRequest",
    "QueryResult",
    "Rendezvous",
    "TrainAuthorization",
    "TrainMaterials",
    "TrainRequest",
    "TrainResult",
]
