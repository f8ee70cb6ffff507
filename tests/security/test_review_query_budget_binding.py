"""Review: the budget left bound into a query's answer, for a model without a budget.

docs/query.md promises that the client opens an answer only "for the sequence number it
sent and the budget it is told", so a host that rewrites the budget left gets an
`IntegrityError` and nothing is shown. `core.query_channel._budget` binds "no budget"
(None) as the signed number -1, and `QueryResult.from_wire` accepts -1 from the wire:
so for a model whose policy has no budget, the host can turn the enclave's `None` into
`-1` and the answers still open, and the client reports a budget of -1 left.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.security.escrowed import escrow, probe_weights
from tests.security.test_hostile_query_host import HostileHost, inputs

from chiron.client.attestation import load_policy
from chiron.client.querying import query, unlock_model
from chiron.client.sessions import LocalEnclaveSession
from chiron.core.crypto import random_key
from chiron.core.errors import IntegrityError
from chiron.core.keys import Identity
from chiron.core.query_channel import ChannelKeys

NO_BUDGET = {"output": "probabilities", "rounding": 3}


def test_an_answer_sealed_without_budget_does_not_open_as_budget_minus_one() -> None:
    keys = ChannelKeys.derive(random_key(), os.urandom(16).hex(), os.urandom(16).hex())
    sealed = keys.seal_answers(0, None, b"answers")
    with pytest.raises(IntegrityError):
        keys.open_answers(0, -1, sealed)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[HostileHost]:
    hostile = HostileHost(LocalEnclaveSession("query", tmp_path / "enclave-state"))
    try:
        yield hostile
    finally:
        hostile.close()


def test_the_host_cannot_rewrite_no_budget_as_a_number(tmp_path: Path, host: HostileHost) -> None:
    owner, provider = Identity.generate(), Identity.generate()
    model_id = os.urandom(16).hex()
    model = escrow(owner, provider, probe_weights(), model_id, query_policy=NO_BUDGET)
    unlocked = unlock_model(
        host,
        model=model,
        owner=owner,
        provider=provider,
        policy=load_policy(None, allow_simulation=True),
        state_dir=tmp_path / "enclave-state",
    )
    _, budget_left = query(unlocked, inputs())
    assert budget_left is None  # the genuine answer: this model has no budget

    host.rewrite = lambda name, args, result: (
        {**result, "budget_left": -1} if name == "query" else result
    )
    with pytest.raises(IntegrityError, match="the answers"):
        _, shown = query(unlocked, inputs(seed=1))
        pytest.fail(f"the host's rewritten budget was believed and shown: {shown}")
