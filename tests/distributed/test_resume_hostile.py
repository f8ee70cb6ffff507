"""A hostile host against a group's checkpoints and resume, at unit level (review of 0f3367c).

These drive the real classes: `Checkpoints` on a folder the host keeps, the parameter
server's agreement (`_Server._agree`) on HELLOs sealed under a group key, and a worker's
check of START (`WorkerExchange.begin`). The host cannot forge HELLO or START (they are
sealed under the group key), so what it controls is which sealed checkpoints each
worker finds in its folder; the tests also pin what the agreement does with odd values
an enclave could send. The slow end-to-end runs are in `test_resume.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from chiron.client.distributed import group_jobs
from chiron.core.encoding import canonical_json
from chiron.core.errors import IntegrityError, JobFailed, PeerFailure, ServiceError
from chiron.core.keys import Identity
from chiron.core.recipe_protocol import TrainingPlan
from chiron.enclave.checkpoints import Checkpoints, Progress
from chiron.enclave.distributed.messages import (
    CONTROL_SLOT_BYTES,
    MessageKind,
    SecureChannel,
    WireTrace,
)
from chiron.enclave.distributed.paramserver import _Server
from chiron.enclave.distributed.schedule import ExchangeSchedule
from chiron.enclave.distributed.worker import WorkerExchange
from chiron.enclave.sealing import SealingKey

from .test_membership import DIGEST, MemoryBoard, settings_for

MEASUREMENT = hashlib.sha256(b"runtime").hexdigest()
JOB_SECRET = b"s" * 32
# 100 steps; `settings_for` exchanges every 5 steps, so with a checkpoint interval of 10
# the group checkpoints just before the exchanges at 10, 20, ..., 90 (never 0 or 100).
PLAN = TrainingPlan.fixed(num_train=1000, batch_size=10, epochs=1, seed=0, checkpoint_every=10)
STATE_NBYTES = 16
MODEL_NBYTES = 8


def test_the_plan_checkpoints_where_the_tests_assume():
    schedule = ExchangeSchedule(5, PLAN.total_steps)
    due = [s for s in range(PLAN.total_steps + 1) if schedule.checkpoint_at(s, 10)]
    assert due == [10, 20, 30, 40, 50, 60, 70, 80, 90]


# --- sealed checkpoints in the host's folder ----------------------------------------------


def binding(rank: int, job_id: str = "job") -> dict[str, object]:
    """As `trainer._train` binds a group worker's checkpoints."""
    return {
        "job": {"job_id": job_id},
        "plan": PLAN.to_dict(),
        "checkpoint_nbytes": STATE_NBYTES,
        "worker": rank,
    }


def worker_checkpoints(folder: Path, rank: int, job_id: str = "job") -> Checkpoints:
    """A worker's `Checkpoints`, as a fresh enclave of a (new or resumed) run makes them."""
    key = SealingKey.for_job(JOB_SECRET, measurement=MEASUREMENT, purpose="training-checkpoint")
    return Checkpoints(folder / f"worker-{rank}", key, binding(rank, job_id), keep_previous=True)


def state(rank: int, step: int) -> bytes:
    return f"r{rank}s{step}".encode().ljust(STATE_NBYTES, b".")


def seal(checkpoints: Checkpoints, rank: int, step: int) -> None:
    """One checkpoint written to the end (`save` in the background, then `wait`)."""
    checkpoints.save(Progress(step, []), state(rank, step), PLAN)
    checkpoints.wait()


def held_steps(checkpoints: Checkpoints) -> list[int]:
    return [progress.step for progress, _ in checkpoints.load()]


def test_a_state_moved_to_another_rank_or_job_does_not_open(tmp_path):
    one = worker_checkpoints(tmp_path, 1)
    seal(one, 1, 10)
    seal(one, 1, 20)
    # The host gives worker 1's files to worker 2, and to worker 1 of another job.
    for folder in ("worker-2", "other/worker-1"):
        shutil.copytree(tmp_path / "worker-1", tmp_path / folder)
    assert held_steps(worker_checkpoints(tmp_path, 2)) == []
    assert held_steps(worker_checkpoints(tmp_path / "other", 1, job_id="other")) == []
    # Its own opens, latest first, each with its own state.
    loaded = worker_checkpoints(tmp_path, 1).load()
    assert [(p.step, s) for p, s in loaded] == [(20, state(1, 20)), (10, state(1, 10))]


def test_a_rolled_back_or_duplicated_file_only_offers_an_earlier_or_the_same_step(tmp_path):
    one = worker_checkpoints(tmp_path, 1)
    seal(one, 1, 10)
    old = (tmp_path / "worker-1" / Checkpoints.FILE).read_bytes()
    seal(one, 1, 20)
    seal(one, 1, 30)
    # The host puts the step-10 file back in place of the latest: worker 1 then holds
    # 20 and 10, each the state sealed for that step, never another step's state.
    (tmp_path / "worker-1" / Checkpoints.FILE).write_bytes(old)
    loaded = worker_checkpoints(tmp_path, 1).load()
    assert [(p.step, s) for p, s in loaded] == [(20, state(1, 20)), (10, state(1, 10))]


# --- the parameter server's agreement on HELLO -------------------------------------------


def members() -> list[SimpleNamespace]:
    return [SimpleNamespace(identity=Identity.generate()) for _ in range(3)]


def hello(group, checkpoints: object) -> dict[str, object]:
    """What `WorkerExchange.begin` says in HELLO, with `checkpoints` as given."""
    return {
        "agreement": settings_for(group, 1, DIGEST).agreement(),
        "plan": PLAN.to_dict(),
        "model_nbytes": MODEL_NBYTES,
        "rate": None,
        "checkpoints": checkpoints,
    }


def agree(hellos: dict[int, dict[str, object]]) -> int:
    """The step the real parameter server names in START, given every worker's HELLO."""
    group = members()
    key = os.urandom(32)
    board = MemoryBoard()
    for rank, doc in hellos.items():
        doc = {**hello(group, []), **doc}
        sealed = SecureChannel(key, job_id="job", rank=rank).seal(
            MessageKind.HELLO,
            receiver=0,
            round_number=0,
            payload=canonical_json(doc),
            slot_bytes=CONTROL_SLOT_BYTES,
        )
        board.post(f"hello/{rank}", sealed, to=0, kind="HELLO")
    server = _Server(
        settings_for(group, 0, DIGEST),
        board,  # type: ignore[arg-type]
        SecureChannel(key, job_id="job", rank=0),
        WireTrace(),
        lambda event: None,
    )
    _, _, _, resume_step = server._agree()
    return resume_step


def test_the_server_names_the_latest_checkpoint_step_every_worker_holds():
    assert agree({1: {"checkpoints": [20, 30]}, 2: {"checkpoints": [10, 20]}}) == 20
    assert agree({1: {"checkpoints": [20, 30]}, 2: {"checkpoints": []}}) == 0
    # Steps that are not checkpoint points (an exchange point that is not one, the last
    # step, step 0, beyond the end, negative) are never named, even when all list them.
    for odd in (25, 100, 0, 110, -10):
        assert agree({1: {"checkpoints": [odd, 10]}, 2: {"checkpoints": [10, odd]}}) == 10


@pytest.mark.parametrize(
    "checkpoints",
    [[True], [20.0], ["20"], [None], {"20": 1}, "20", 20, None],
    ids=["bool", "float", "str", "null", "dict", "string", "int", "missing"],
)
def test_a_hello_with_malformed_checkpoints_is_refused(checkpoints):
    with pytest.raises(IntegrityError, match="malformed HELLO"):
        agree({1: {"checkpoints": [20]}, 2: {"checkpoints": checkpoints}})


def test_a_hello_cannot_carry_a_long_list_of_steps():
    """HELLO has a fixed slot: a list of steps that does not fit cannot even be sealed."""
    with pytest.raises(ValueError, match="larger than its slot"):
        agree({1: {"checkpoints": list(range(10, 10_000, 10))}, 2: {}})


# --- a worker's check of START ------------------------------------------------------------


def begin_with_start(start: dict[str, object], checkpointed: tuple[int, ...]):
    """Worker 1's `begin`, answered by a START the (real) server's channel sealed."""
    group = members()
    key = os.urandom(32)
    board = MemoryBoard()
    board.post(
        "start/1",
        SecureChannel(key, job_id="job", rank=0).seal(
            MessageKind.START,
            receiver=1,
            round_number=0,
            payload=canonical_json(start),
            slot_bytes=CONTROL_SLOT_BYTES,
        ),
        to=1,
        kind="START",
    )
    exchange = WorkerExchange(
        settings_for(group, 1, DIGEST),
        board,  # type: ignore[arg-type]
        SecureChannel(key, job_id="job", rank=1),
        WireTrace(),
    )
    declaration = SimpleNamespace(model_nbytes=MODEL_NBYTES)
    return exchange.begin(PLAN, declaration, None, checkpointed)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("resume_step", "checkpointed"),
    [
        (30, (10, 20)),  # a step this worker holds no checkpoint of
        (25, (25, 20)),  # "held", but not a checkpoint point of the schedule
        (100, (100,)),  # the last step
        (True, (1,)),  # a boolean posing as a step
        (20.0, (20,)),  # a float
        ("20", (20,)),  # a string
        (None, (20,)),
        (-10, (-10,)),
    ],
)
def test_a_worker_refuses_a_start_naming_a_step_it_cannot_resume_from(resume_step, checkpointed):
    with pytest.raises(IntegrityError, match="no checkpoint of"):
        begin_with_start({"rate": None, "resume_step": resume_step}, checkpointed)


def test_a_worker_refuses_a_start_without_a_resume_step():
    with pytest.raises(IntegrityError, match="malformed START"):
        begin_with_start({"rate": None}, (20,))


# --- the last two checkpoints after a resume ---------------------------------------------


def test_both_workers_hold_a_common_step_while_a_first_run_checkpoints(tmp_path):
    """The ordering argument, first run: worker 1 one checkpoint ahead of worker 2."""
    one, two = worker_checkpoints(tmp_path, 1), worker_checkpoints(tmp_path, 2)
    for step in (10, 20):
        seal(one, 1, step)
        seal(two, 2, step)
    seal(one, 1, 30)  # the group stops before worker 2 has written its step 30
    held = {rank: held_steps(worker_checkpoints(tmp_path, rank)) for rank in (1, 2)}
    assert held == {1: [30, 20], 2: [20, 10]}
    assert agree({rank: {"checkpoints": steps} for rank, steps in held.items()}) == 20


def test_a_resumed_worker_keeps_the_step_the_group_resumed_from(tmp_path):
    # First run, stopped with worker 1 one checkpoint ahead (as in the test above).
    one, two = worker_checkpoints(tmp_path, 1), worker_checkpoints(tmp_path, 2)
    for step in (10, 20):
        seal(one, 1, step)
        seal(two, 2, step)
    seal(one, 1, 30)
    held = {rank: held_steps(worker_checkpoints(tmp_path, rank)) for rank in (1, 2)}
    assert agree({rank: {"checkpoints": steps} for rank, steps in held.items()}) == 20

    # Second run: fresh enclaves, each resumes from step 20 and holds that exchange
    # again. At step 30 worker 1 writes its checkpoint; the group stops before worker 2
    # has written its own (the same window as in the first run).
    one, two = worker_checkpoints(tmp_path, 1), worker_checkpoints(tmp_path, 2)
    assert 20 in held_steps(one) and 20 in held_steps(two)
    seal(one, 1, 30)

    held = {rank: held_steps(worker_checkpoints(tmp_path, rank)) for rank in (1, 2)}
    # Worker 1 still holds step 20 (the step it resumed from) beside 30, not [30, 30]
    # (then the group would start over from step 0 instead of 20).
    assert held[1] == [30, 20], held
    assert agree({rank: {"checkpoints": steps} for rank, steps in held.items()}) == 20


# --- the client's group-jobs folder ---------------------------------------------------------


def sealed_checkpoint(job: group_jobs.GroupJob) -> None:
    job.checkpoint_dir(1).mkdir()
    (job.checkpoint_dir(1) / "checkpoint.sealed").write_bytes(b"sealed")


def test_a_lost_group_keeps_its_job_and_a_failed_recipe_ends_it(tmp_path):
    with pytest.raises(PeerFailure, match="the same command continues the job"):
        with group_jobs.group_job(tmp_path, "terms") as job:
            sealed_checkpoint(job)
            raise PeerFailure("worker 2 went silent")
    assert job.directory.is_dir()
    # A tampered message or a refused enclave is the host's doing, not the job's: kept.
    with pytest.raises(IntegrityError, match="the same command continues the job"):
        with group_jobs.group_job(tmp_path, "terms") as again:
            assert (again.job_id, again.resumed) == (job.job_id, True)
            raise IntegrityError("a message from worker 1 failed authentication")
    with pytest.raises(JobFailed):
        with group_jobs.group_job(tmp_path, "terms") as again:
            raise JobFailed("timeout")  # an overrun slot: kept too
    assert job.directory.is_dir()
    with pytest.raises(JobFailed):
        with group_jobs.group_job(tmp_path, "terms") as again:
            assert again.job_id == job.job_id
            raise JobFailed("recipe_error")
    assert not job.directory.exists()
    assert list((tmp_path / group_jobs.FOLDER).iterdir()) == []


def test_a_job_stopped_before_any_checkpoint_ends(tmp_path):
    with pytest.raises(PeerFailure):
        with group_jobs.group_job(tmp_path, "terms") as job:
            job.checkpoint_dir(1).mkdir()
            raise PeerFailure("worker 2 went silent")
    assert list((tmp_path / group_jobs.FOLDER).iterdir()) == []


def test_a_folder_never_given_its_terms_is_cleared_by_the_next_command(tmp_path):
    orphan = tmp_path / group_jobs.FOLDER / ("0" * 32)
    (orphan / "worker-1").mkdir(parents=True)
    with group_jobs.group_job(tmp_path, "terms") as job:
        assert job.job_id != orphan.name and not job.resumed
        assert not orphan.exists()


def test_a_second_command_for_a_running_job_is_refused_and_other_terms_are_another_job(
    tmp_path,
):
    with group_jobs.group_job(tmp_path, "terms") as job:
        with pytest.raises(ServiceError, match="another chiron command"):
            with group_jobs.group_job(tmp_path, "terms"):
                pass
        with group_jobs.group_job(tmp_path, "other terms") as other:
            assert other.job_id != job.job_id and not other.resumed
        assert job.directory.is_dir()
    assert list((tmp_path / group_jobs.FOLDER).iterdir()) == []


def test_a_job_being_removed_is_not_taken_by_a_concurrent_command(tmp_path, monkeypatch):
    real_rmtree = shutil.rmtree
    taken: list[group_jobs.GroupJob] = []

    def rmtree_meeting_another_command(path, ignore_errors=False):
        # Another `chiron train` with the same terms looks while the folder goes.
        with contextlib.suppress(ServiceError):
            job, lock = group_jobs._open(tmp_path / group_jobs.FOLDER, "terms")
            taken.append(job)
            os.close(lock)
        real_rmtree(path, ignore_errors=ignore_errors)

    monkeypatch.setattr(group_jobs.shutil, "rmtree", rmtree_meeting_another_command)
    with group_jobs.group_job(tmp_path, "terms") as job:
        pass  # the job succeeds: its folder goes
    assert [t.job_id for t in taken if t.job_id == job.job_id] == []


# --- the rendezvous store ---------------------------------------------------------------


def test_a_store_that_outlived_a_run_offers_the_next_run_nothing_of_it():
    """A node agent's store keeps what the last run posted; a resumed run of the same
    job signs a new manifest, and its board sees none of the old run's keys."""
    import torch.distributed as dist

    from chiron.enclave.distributed.group import Board
    from chiron.enclave.distributed.messages import WireTrace

    store = dist.HashStore()
    last = Board(store, job_id="job", manifest="a" * 64, trace=WireTrace())
    this = Board(store, job_id="job", manifest="b" * 64, trace=WireTrace())
    last.post("hello/1", b"the last run's sealed HELLO", to=0, kind="HELLO")
    with pytest.raises(PeerFailure, match="did not answer"):
        this.fetch("hello/1", sender=1, kind="HELLO", timeout=0.2)
    assert (
        last.fetch("hello/1", sender=1, kind="HELLO", timeout=1) == b"the last run's sealed HELLO"
    )
