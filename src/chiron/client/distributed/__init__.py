"""Distributed training from the client's side.

A distributed job has one parameter-server enclave (rank 0) and N training enclaves
(ranks 1..N); the enclaves attest each other, share a group key and exchange parameters
themselves over torch.distributed (see chiron.enclave.distributed). Here:

  `owner`       the owner's flow, whatever runs the members: attest them all, sign the
                manifest naming them, start the job, check worker 1's model.
  `local`       `chiron train --local --workers N`: the N+1 enclave processes on this
                machine.
  `relay`       `chiron train --rendezvous HOST:PORT`: members behind node agents,
                reached through the rendezvous store torchrun hosts.
  `node_agent`  `chiron node-agent` (under torchrun, one per rank, on any machines):
                start the rank's enclave and relay its calls.

docs/distributed.md gives the commands.
"""

from __future__ import annotations

from chiron.client.distributed.local import train_locally
from chiron.client.distributed.owner import (
    DistributedOutcome,
    ExchangeTimeouts,
    MemberSession,
    member_label,
    new_job_id,
    run_distributed_training,
)
from chiron.client.distributed.relay import RelayedSession, train_through_rendezvous
from chiron.core.limits import DEFAULT_EXCHANGE_EVERY

__all__ = [
    "DEFAULT_EXCHANGE_EVERY",
    "DistributedOutcome",
    "ExchangeTimeouts",
    "MemberSession",
    "RelayedSession",
    "member_label",
    "new_job_id",
    "run_distributed_training",
    "train_locally",
    "train_through_rendezvous",
]
