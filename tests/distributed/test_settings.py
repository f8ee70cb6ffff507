"""A distributed job's arguments as an enclave checks them (the host that sends them is untrusted)."""

from __future__ import annotations

import pytest

from chiron.core.encoding import canonical_json
from chiron.core.errors import InputError
from chiron.core.keys import Identity
from chiron.core.recipe_protocol import TrainingPlan
from chiron.enclave.distributed.messages import CONTROL_SLOT_BYTES
from chiron.enclave.distributed.settings import MAX_WORKERS, GroupSettings

MEMBERS = [Identity.generate() for _ in range(3)]


def args(**changes) -> dict:
    distributed = {
        "rank": 1,
        "members": [m.public.to_bytes() for m in MEMBERS],
        "exchange_every": 10,
        "mode": "sync",
        "staleness": 0,
    }
    rendezvous = {"host": "127.0.0.1", "port": 29500, "address": None}
    for key, value in changes.items():
        (rendezvous if key in rendezvous or key == "host_store" else distributed)[key] = value
    return {"distributed": distributed, "rendezvous": rendezvous}


def test_good_settings_parse():
    settings = GroupSettings.parse("job", args(), own=MEMBERS[1].public)
    assert settings.workers == 2 and settings.rank == 1
    assert settings.describe()["members"] == [m.public.fingerprint for m in MEMBERS]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rank": 2}, "not member 2"),
        ({"rank": 7}, "not member 7"),
        ({"rank": True}, "malformed"),
        ({"members": [MEMBERS[0].public.to_bytes()] * 2}, "one enclave twice"),
        ({"members": [b"short"]}, "malformed"),
        ({"mode": "gossip"}, "exchange mode"),
        ({"exchange_every": 0}, "exchange interval"),
        ({"staleness": -1}, "staleness bound"),
        ({"exchange_timeout": 0}, "timeouts"),
        ({"port": 0}, "port is missing"),
        ({"port": 70000}, "host name and a port"),
    ],
)
def test_bad_settings_are_refused(changes, message):
    with pytest.raises(InputError, match=message):
        GroupSettings.parse("job", args(**changes), own=MEMBERS[1].public)


def test_a_job_of_one_member_or_too_many_is_refused():
    alone = args(members=[MEMBERS[0].public.to_bytes()], rank=0)
    with pytest.raises(InputError, match="1 to 64 workers"):
        GroupSettings.parse("job", alone, own=MEMBERS[0].public)


def test_hello_fits_its_slot_with_the_most_workers():
    members = [Identity.generate().public for _ in range(MAX_WORKERS + 1)]
    settings = GroupSettings.parse(
        "j" * 128,
        args(members=[m.to_bytes() for m in members], rank=MAX_WORKERS),
        own=members[-1],
    )
    plan = TrainingPlan.fixed(
        num_train=2**40, batch_size=1, epochs=1000, seed=2**63 - 1, checkpoint_every=1
    )
    hello = {"agreement": settings.agreement(), "plan": plan.to_dict(), "model_nbytes": 2**29}
    assert len(canonical_json(hello)) < CONTROL_SLOT_BYTES - 8
