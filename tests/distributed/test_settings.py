"""A distributed job's settings as an enclave derives them.

Everything that decides what the members do comes from the owner's signed manifest
(`core.manifest.Plan`: workers, exchange interval, mode, staleness; the enclaves'
fingerprints by rank). The host relays the members' keys, the rendezvous and the
timeouts (`contract.GroupMembership`, `contract.Rendezvous`); each is checked, and
members other than those the owner signed are refused.
"""

from __future__ import annotations

import dataclasses

import pytest

from chiron.core.contract import GroupMembership, Rendezvous
from chiron.core.encoding import canonical_json
from chiron.core.errors import InputError, IntegrityError
from chiron.core.keys import Identity, PublicIdentity
from chiron.core.limits import MAX_EXCHANGE_EVERY, MAX_STALENESS, MAX_WORKERS
from chiron.core.manifest import DatasetRef, JobManifest, Plan, SignedManifest, new_manifest
from chiron.core.recipe_protocol import TrainingPlan
from chiron.enclave.distributed.messages import CONTROL_SLOT_BYTES
from chiron.enclave.distributed.settings import GroupSettings

OWNER = Identity.generate()
PROVIDER = Identity.generate()
MEMBERS = [Identity.generate() for _ in range(3)]
DATASET = DatasetRef("0" * 32, "1" * 64)


def manifest_for(
    members: list[PublicIdentity], *, job_id: str = "job", plan: Plan | None = None
) -> SignedManifest:
    return new_manifest(
        job_id=job_id,
        owner=OWNER,
        provider=PROVIDER.public,
        recipe_sha256="2" * 64,
        recipe_statement_sha256="3" * 64,
        dataset=DATASET,
        plan=plan or Plan(seed=0, workers=len(members) - 1, exchange_every=10),
        enclaves=tuple(members),
    )


MANIFEST = manifest_for([m.public for m in MEMBERS])


def group_wire(**changes) -> dict:
    wire = {
        "rank": 1,
        "members": [m.public.to_bytes() for m in MEMBERS],
        "handshake_timeout": 30.0,
        "exchange_timeout": 60.0,
    }
    return {**wire, **changes}


def rendezvous_wire(**changes) -> dict:
    return {**{"host": "127.0.0.1", "port": 29500, "address": None}, **changes}


def settings(group: dict | None = None, *, own: PublicIdentity | None = None) -> GroupSettings:
    return GroupSettings.from_request(
        MANIFEST,
        GroupMembership.from_wire(group or group_wire()),
        Rendezvous.from_wire(rendezvous_wire()),
        own=own or MEMBERS[1].public,
    )


def test_good_settings_come_from_the_manifest():
    parsed = settings()
    assert parsed.workers == 2 and parsed.rank == 1
    assert parsed.job_id == "job" and parsed.manifest_digest == MANIFEST.digest
    assert (parsed.exchange_every, parsed.mode, parsed.staleness) == (10, "sync", 0)
    assert (parsed.handshake_timeout, parsed.exchange_timeout) == (30.0, 60.0)
    assert parsed.describe()["members"] == [m.public.fingerprint for m in MEMBERS]
    assert parsed.agreement()["manifest"] == MANIFEST.digest


def test_the_wire_forms_round_trip():
    group = GroupMembership.from_wire(group_wire())
    assert GroupMembership.from_wire(group.to_wire()) == group
    rendezvous = Rendezvous.from_wire(rendezvous_wire(port=0, host_store=True))
    assert Rendezvous.from_wire(rendezvous.to_wire()) == rendezvous


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rank": 7}, "rank must be 0 to 2"),
        ({"rank": -1}, "rank must be 0 to 2"),
        ({"rank": True}, "rank must be 0 to 2"),
        ({"rank": "1"}, "rank must be 0 to 2"),
        ({"members": [MEMBERS[0].public.to_bytes()] * 2}, "listed twice"),
        (
            {"members": [*(m.public.to_bytes() for m in MEMBERS), MEMBERS[2].public.to_bytes()]},
            "listed twice",
        ),
        ({"members": [MEMBERS[0].public.to_bytes(), b"short"]}, "64-byte public identity"),
        ({"members": [MEMBERS[0].public.to_bytes(), "text"]}, "64-byte public identity"),
        ({"members": [MEMBERS[0].public.to_bytes()], "rank": 0}, "1 to 64 workers"),
        ({"members": "everyone"}, "1 to 64 workers"),
        ({"exchange_timeout": 0}, "positive and at most a day"),
        ({"handshake_timeout": -1}, "positive and at most a day"),
        ({"handshake_timeout": 86401}, "positive and at most a day"),
        ({"exchange_timeout": float("nan")}, "positive and at most a day"),
        ({"exchange_timeout": float("inf")}, "positive and at most a day"),
        ({"exchange_timeout": True}, "must be a number"),
        ({"exchange_timeout": "60"}, "must be a number"),
    ],
)
def test_a_bad_group_is_refused(changes, message):
    with pytest.raises(InputError, match=message):
        GroupMembership.from_wire(group_wire(**changes))


def test_a_group_without_members_is_refused():
    wire = group_wire()
    del wire["members"]
    with pytest.raises(InputError, match="missing members"):
        GroupMembership.from_wire(wire)


def test_too_many_members_are_refused():
    members = [Identity.generate().public.to_bytes() for _ in range(MAX_WORKERS + 2)]
    with pytest.raises(InputError, match="1 to 64 workers"):
        GroupMembership.from_wire(group_wire(members=members))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"port": 0}, "port is missing"),
        ({"port": 70000}, "port must be 0 to 65535"),
        ({"port": -1}, "port must be 0 to 65535"),
        ({"port": True}, "port must be 0 to 65535"),
        ({"host": ""}, "host must be text"),
        ({"host": "h" * 256}, "host must be text"),
        ({"address": 5}, "address must be text"),
        ({"host_store": "yes"}, "host_store must be true or false"),
    ],
)
def test_a_bad_rendezvous_is_refused(changes, message):
    with pytest.raises(InputError, match=message):
        Rendezvous.from_wire(rendezvous_wire(**changes))


def test_port_0_is_a_free_port_only_for_the_store_the_server_hosts():
    hosted = Rendezvous.from_wire(rendezvous_wire(port=0, host_store=True))
    assert hosted.port == 0 and hosted.host_store


@pytest.mark.parametrize(
    "members",
    [
        # An impostor in place of the owner's worker 2.
        [MEMBERS[0], MEMBERS[1], Identity.generate()],
        # The owner's enclaves in another order: another rank for each.
        [MEMBERS[0], MEMBERS[2], MEMBERS[1]],
        # An extra worker the owner never attested.
        [*MEMBERS, Identity.generate()],
    ],
    ids=["impostor", "reordered", "extra"],
)
def test_members_other_than_the_manifests_enclaves_are_refused(members):
    group = group_wire(members=[m.public.to_bytes() for m in members])
    with pytest.raises(IntegrityError, match="not the enclaves the owner's manifest names"):
        settings(group)


def test_a_member_left_out_is_refused():
    group = group_wire(members=[m.public.to_bytes() for m in MEMBERS[:2]])
    with pytest.raises(IntegrityError, match="not the enclaves the owner's manifest names"):
        settings(group)


@pytest.mark.parametrize("rank", [0, 2])
def test_this_enclave_must_be_at_its_rank(rank):
    with pytest.raises(IntegrityError, match=f"not member {rank}"):
        settings(group_wire(rank=rank), own=MEMBERS[1].public)


def test_an_enclave_outside_the_job_is_refused():
    with pytest.raises(IntegrityError, match="not member 1"):
        settings(own=Identity.generate().public)


def test_a_distributed_job_needs_its_group_rendezvous_and_a_plan_of_workers():
    group = GroupMembership.from_wire(group_wire())
    rendezvous = Rendezvous.from_wire(rendezvous_wire())
    own = MEMBERS[1].public
    with pytest.raises(InputError, match="needs its group"):
        GroupSettings.from_request(MANIFEST, None, rendezvous, own=own)
    with pytest.raises(InputError, match="needs its group"):
        GroupSettings.from_request(MANIFEST, group, None, own=own)
    alone = manifest_for([own], plan=Plan(seed=0))
    with pytest.raises(InputError, match="needs its group"):
        GroupSettings.from_request(alone, group, rendezvous, own=own)


def test_the_agreement_names_the_manifest():
    """Two manifests of the same job, members and plan (a re-signed one): HELLO differs."""
    again = dataclasses.replace(MANIFEST.manifest, issued_at=MANIFEST.manifest.issued_at + 1)
    other = again.sign(OWNER)
    first = settings()
    second = GroupSettings.from_request(
        other,
        GroupMembership.from_wire(group_wire()),
        Rendezvous.from_wire(rendezvous_wire()),
        own=MEMBERS[1].public,
    )
    assert first.agreement() != second.agreement()
    assert {k: v for k, v in first.agreement().items() if k != "manifest"} == {
        k: v for k, v in second.agreement().items() if k != "manifest"
    }


def test_hello_fits_its_slot_with_the_most_workers():
    members = [Identity.generate().public for _ in range(MAX_WORKERS + 1)]
    plan = Plan(
        seed=2**63 - 1,
        workers=MAX_WORKERS,
        exchange_every=MAX_EXCHANGE_EVERY,
        mode="async",
        staleness=MAX_STALENESS,
    )
    manifest = manifest_for(members, job_id="j" * 64, plan=plan)
    group = GroupMembership(rank=MAX_WORKERS, members=tuple(members))
    parsed = GroupSettings.from_request(
        manifest, group, Rendezvous("127.0.0.1", 29500), own=members[-1]
    )
    training = TrainingPlan.fixed(
        num_train=2**40, batch_size=1, epochs=1000, seed=2**63 - 1, checkpoint_every=1
    )
    hello = {
        "agreement": parsed.agreement(),
        "plan": training.to_dict(),
        "model_nbytes": 2**29,
    }
    assert len(canonical_json(hello)) < CONTROL_SLOT_BYTES - 8


# -- the exchange settings: the owner's plan, checked by core.manifest.Plan ------------


def test_a_good_plan():
    plan = Plan(seed=1, workers=4, exchange_every=5, mode="async", staleness=2)
    assert plan.distributed and Plan.from_wire(plan.to_wire()) == plan
    assert not Plan(seed=1).distributed


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mode": "gossip"}, "unknown exchange mode"),
        ({"exchange_every": 0}, "exchange_every must be an integer from 1"),
        ({"exchange_every": MAX_EXCHANGE_EVERY + 1}, "exchange_every must be an integer"),
        ({"exchange_every": True}, "exchange_every must be an integer"),
        ({"exchange_every": 2.0}, "exchange_every must be an integer"),
        ({"staleness": -1}, "staleness must be an integer from 0"),
        ({"staleness": MAX_STALENESS + 1}, "staleness must be an integer"),
        ({"workers": 0}, "workers must be an integer from 1 to 64"),
        ({"workers": MAX_WORKERS + 1}, "workers must be an integer from 1 to 64"),
        ({"workers": 1}, "one worker exchanges nothing"),
        ({"workers": 1, "exchange_every": 0, "mode": "async"}, "one worker exchanges nothing"),
        ({"workers": 1, "exchange_every": 0, "staleness": 1}, "one worker exchanges nothing"),
        ({"period_ms": 100}, "a period needs fixed_rate"),
        ({"fixed_rate": 1}, "fixed_rate must be true or false"),
        ({"fixed_rate": True, "period_ms": 0}, "period_ms must be an integer"),
        ({"fixed_rate": True, "period_ms": 3_600_001}, "period_ms must be an integer"),
    ],
)
def test_a_bad_plan_is_refused(fields, message):
    with pytest.raises(InputError, match=message):
        Plan(**{"seed": 0, "workers": 2, "exchange_every": 10, **fields})


def test_a_plan_with_unknown_or_missing_fields_is_refused():
    wire = Plan(seed=0, workers=2, exchange_every=10).to_wire()
    with pytest.raises(InputError, match="bad plan"):
        Plan.from_wire({**wire, "learning_rate": 1})
    del wire["staleness"]
    with pytest.raises(InputError, match="bad plan"):
        Plan.from_wire(wire)


def test_a_manifest_names_one_enclave_per_member():
    members = [m.public for m in MEMBERS]
    with pytest.raises(InputError, match="need 3 enclaves"):
        manifest_for(members[:2], plan=Plan(seed=0, workers=2, exchange_every=10))
    with pytest.raises(InputError, match="listed twice"):
        manifest_for([members[0], members[1], members[1]])


def test_the_plan_is_the_owners_and_signed():
    """A host that rewrites the plan (here: async with a larger staleness) breaks the signature."""
    body = MANIFEST.manifest.body()
    body["plan"] = {**body["plan"], "mode": "async", "staleness": 5}
    forged = SignedManifest(JobManifest.from_body(body), MANIFEST.signature)
    with pytest.raises(IntegrityError):
        SignedManifest.from_wire(forged.to_wire())
