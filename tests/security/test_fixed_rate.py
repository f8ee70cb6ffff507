"""Issue 14, timing: in a fixed-rate job the host's view of time carries no data.

The host sees a training job's progress events, its sealed checkpoint writes and its
end, and when each happened. Here two recipes that sleep differently depending on the
data train on two datasets of one public shape (one bright, one dark): with the
owner's fixed rate, the (time, kind, size) sequences the host observes are the same
within the clock's jitter; without it they differ, so the comparison can fail. A
recipe that overruns its slot fails as `timeout` on a slot boundary.

The runs are real (`chiron train --local`'s code path, a real enclave process and
sandbox) with a small explicit period, so each takes a few seconds. Nothing here
asserts on absolute speed: only on times relative to the job's own clock.
"""

from __future__ import annotations

import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from tests.e2e.conftest import sign_recipe

from chiron.client import targets
from chiron.client.sessions import LocalEnclaveSession
from chiron.client.training import check_receipt_signature
from chiron.core.crypto import random_key
from chiron.core.dataset import encrypt_dataset
from chiron.core.errors import JobFailed
from chiron.core.keys import DataKey, Identity, load_public_identity
from chiron.core.manifest import Plan
from chiron.core.schema import DatasetSchema
from chiron.enclave.fixed_rate import MIN_PERIOD_MS

SCHEMA = DatasetSchema((1, 8, 8), "uint8", 3)
PERIOD_MS = 200
PERIOD = PERIOD_MS / 1000
JITTER = PERIOD / 4  # a quarter of a slot
RECORDS = 96  # 9 held out, 87 to train on: 6 steps of 16 per epoch, 2 epochs

_MODEL = """
    import time
    import torch
    import torch.nn as nn

    HYPERPARAMETERS = {"epochs": 2, "batch_size": 16, "lr": 0.01}

    def build_model(schema):
        c, h, w = schema.input_shape
        return nn.Sequential(
            nn.Flatten(), nn.Linear(c * h * w, 16), nn.ReLU(), nn.Linear(16, schema.num_classes)
        )

    def train_step(model, optimizer, x, y, hp):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        {sleep}
        return loss
"""
# Slow on bright data: 40 ms a step when the batch is bright (the host would see it).
SLOW_WHEN_BRIGHT = "time.sleep(0.04 if x.float().mean() > 0.5 else 0.0)"
# Slow on dark data, and only every other step.
SLOW_WHEN_DARK = "time.sleep(0.02 if x.float().mean() < 0.5 and torch.rand(()) < 0.5 else 0.0)"
# Overruns its slots from its fourth step on: 1 s a step on a bright batch (the child may
# run ahead of the clock, so it takes a few such steps to fall behind it).
OVERRUNS_WHEN_BRIGHT = (
    "train_step.n = getattr(train_step, 'n', 0) + 1; "
    "time.sleep(1.0 if train_step.n > 3 and x.float().mean() > 0.5 else 0)"
)


@dataclass
class Trace:
    """What the host observed: (seconds since the step-0 progress event, kind, size)."""

    events: list[tuple[float, str, int]] = field(default_factory=list)
    failure: str | None = None

    def shape(self) -> list[tuple[str, int]]:
        return [(kind, size) for _, kind, size in self.events]

    def times(self) -> np.ndarray:
        """Seconds from the job's clock as the events show it (their median phase).

        The first event alone is a poor origin on a busy machine; the phase that most
        events share is the clock's.
        """
        raw = np.array([at for at, _, _ in self.events]) / PERIOD
        phase = np.median(raw - np.round(raw))
        return (raw - phase) * PERIOD

    def off_boundary(self) -> np.ndarray:
        """How far (in slots) each event is from a boundary of the job's clock."""
        slots = self.times() / PERIOD
        return np.abs(slots - np.round(slots))


@dataclass
class Owner:
    root: Path
    owner_key: Path
    provider_key: Path
    runs: int = 0

    def dataset(self, name: str, *, bright: bool) -> tuple[Path, Path]:
        """RECORDS images of one public shape: all bright or all dark (uint8 scaled to [0, 1])."""
        rng = np.random.default_rng(len(name))
        low, high = (200, 255) if bright else (0, 50)
        x = rng.integers(low, high, size=(RECORDS, 1, 8, 8)).astype(np.uint8)
        y = rng.integers(0, 3, size=RECORDS).astype(np.int64)
        out, key_path = self.root / f"{name}.chd", self.root / f"{name}.key"
        key = random_key()
        header = encrypt_dataset([(x, y)], out, key, schema=SCHEMA, record_count=RECORDS)
        DataKey(header.dataset_id, key).save(key_path)
        return out, key_path

    def recipe(self, name: str, sleep: str) -> Path:
        path = self.root / f"{name}.py"
        path.write_text(textwrap.dedent(_MODEL).replace("{sleep}", sleep))
        sign_recipe(path, self.provider_key)
        return path

    def train(
        self, recipe: Path, data: tuple[Path, Path], plan: Plan, monkeypatch: pytest.MonkeyPatch
    ) -> Trace:
        """Train in a fresh state folder, recording what the host observes, and when."""
        self.runs += 1
        state = self.root / f"state-{self.runs}"
        jobs = state / "jobs"
        seen: list[tuple[float, str, int]] = []
        stop = threading.Event()

        def watch_checkpoints() -> None:
            """A checkpoint write shows when its file is created (the host's disk then
            takes its own time to sync it); its size once it is in place."""
            writes: dict[int, int] = {}  # inode → index in `seen`
            while not stop.is_set():
                for path in jobs.glob("*/*checkpoint.sealed*") if jobs.is_dir() else ():
                    try:
                        info = path.stat()
                    except OSError:
                        continue
                    if info.st_ino not in writes:
                        writes[info.st_ino] = len(seen)
                        seen.append((time.monotonic(), "checkpoint", -1))
                    if path.name == "checkpoint.sealed":
                        at, kind, _ = seen[writes[info.st_ino]]
                        seen[writes[info.st_ino]] = (at, kind, info.st_size)
                time.sleep(0.0005)

        # The job's end: when the enclave's `train` call returns to the host.
        call = LocalEnclaveSession.call

        def timed_call(session, name, *args, **kwargs):
            try:
                return call(session, name, *args, **kwargs)
            finally:
                if name == "train":
                    seen.append((time.monotonic(), "end", 0))

        monkeypatch.setattr(LocalEnclaveSession, "call", timed_call)
        watcher = threading.Thread(target=watch_checkpoints, daemon=True)
        watcher.start()
        target = targets.open_target(
            local=True,
            url=None,
            token=None,
            allow_simulation=True,
            policy_file=None,
            state_dir=state,
        )
        trace = Trace()
        try:
            trained = targets.train(
                target,
                recipe=str(recipe),
                statement_path=None,
                dataset=data[0],
                data_key_path=data[1],
                owner_key=self.owner_key,
                provider=load_public_identity(Path(f"{self.provider_key}.pub")),
                plan=plan,
                on_progress=lambda step, total: seen.append((time.monotonic(), "progress", step)),
            )
            seen.append((time.monotonic(), "model", len(trained.outcome.model)))
        except JobFailed as exc:
            trace.failure = exc.reason_class
        finally:
            stop.set()
            watcher.join()
        seen.sort()
        start = next(at for at, kind, size in seen if (kind, size) == ("progress", 0))
        trace.events = [
            (at - start, kind, size) for at, kind, size in seen if at >= start and kind != "model"
        ]
        return trace


@pytest.fixture
def owner(tmp_path: Path) -> Owner:
    for name in ("owner", "provider"):
        Identity.generate().save(tmp_path / f"{name}.key")
    return Owner(tmp_path, tmp_path / "owner.key", tmp_path / "provider.key")


def fixed(period_ms: int | None = PERIOD_MS) -> Plan:
    return Plan(seed=7, fixed_rate=True, period_ms=period_ms)


def assert_same_within_jitter(a: Trace, b: Trace) -> None:
    """The same events at the same times: typically within an eighth of a slot, always
    within half of one (a busy machine delays the odd event; a data-dependent delay
    would shift every later event)."""
    assert a.shape() == b.shape()
    difference = np.abs(a.times() - b.times())
    assert np.median(difference) < JITTER / 2 and np.max(difference) < 2 * JITTER, (
        a.events,
        b.events,
    )


def assert_on_boundaries(trace: Trace) -> None:
    assert np.median(trace.off_boundary()) < 0.125, trace.events


# Alone, after the rest: it compares times to within a quarter of a 200 ms slot.
@pytest.mark.alone
def test_with_a_fixed_rate_the_host_sees_the_same_timing_whatever_the_data(owner, monkeypatch):
    bright, dark = owner.dataset("bright", bright=True), owner.dataset("dark", bright=False)
    slow_bright = owner.recipe("slow_bright", SLOW_WHEN_BRIGHT)
    slow_dark = owner.recipe("slow_dark", SLOW_WHEN_DARK)

    runs = [
        owner.train(slow_bright, bright, fixed(), monkeypatch),  # sleeps 40 ms every step
        owner.train(slow_bright, dark, fixed(), monkeypatch),  # never sleeps
        owner.train(slow_dark, dark, fixed(), monkeypatch),  # sleeps 20 ms on about half the steps
    ]
    for trace in runs:
        assert trace.failure is None
        kinds = [kind for _, kind, _ in trace.events]
        assert kinds.count("checkpoint") == 2 and kinds[-1] == "end", trace.events
        assert_on_boundaries(trace)
    assert_same_within_jitter(runs[0], runs[1])
    assert_same_within_jitter(runs[0], runs[2])

    # The control: without the fixed rate the same recipe on the two datasets differs,
    # by about 12 steps of 40 ms, far beyond the jitter allowed above.
    free = Plan(seed=7)
    slow, quick = (
        owner.train(slow_bright, bright, free, monkeypatch),
        owner.train(slow_bright, dark, free, monkeypatch),
    )
    # Free-running, a checkpoint write (seen when its file appears, written in the
    # background) may land before or after the next progress event: compare the
    # progress events and the end, which follow the steps.
    slow, quick = (
        Trace([event for event in trace.events if event[1] != "checkpoint"])
        for trace in (slow, quick)
    )
    assert slow.shape() == quick.shape()
    assert np.max(np.abs(slow.times() - quick.times())) > 2 * JITTER


def test_a_step_that_overruns_its_slot_fails_as_timeout_on_a_boundary(owner, monkeypatch):
    bright = owner.dataset("bright", bright=True)
    trace = owner.train(
        owner.recipe("overruns", OVERRUNS_WHEN_BRIGHT), bright, fixed(), monkeypatch
    )
    assert trace.failure == "timeout"
    kinds = [kind for _, kind, _ in trace.events]
    assert kinds.count("progress") >= 4 and kinds[-1] == "end", trace.events
    assert_on_boundaries(trace)
    assert trace.off_boundary()[-1] < 0.25, trace.events


# The period is calibrated on this machine as it is at that moment: with other tests
# competing for the two cores, a later step can overrun a period calibrated while they
# paused. It runs alone, after the rest (`make test`).
@pytest.mark.alone
def test_the_period_is_calibrated_on_synthetic_records_when_the_owner_gives_none(owner):
    """The enclave fixes T itself before the data; it shows in the receipt and report."""
    dark = owner.dataset("dark", bright=False)
    recipe = owner.recipe("quick", "pass")
    state = owner.root / "state-calibrated"
    trained = targets.train(
        targets.open_target(
            local=True,
            url=None,
            token=None,
            allow_simulation=True,
            policy_file=None,
            state_dir=state,
        ),
        recipe=str(recipe),
        statement_path=None,
        dataset=dark[0],
        data_key_path=dark[1],
        owner_key=owner.owner_key,
        provider=load_public_identity(Path(f"{owner.provider_key}.pub")),
        plan=fixed(None),
    )
    report = trained.outcome.report["fixed_rate"]
    assert report["calibrated"] is True and report["period_ms"] >= MIN_PERIOD_MS
    # At least: the load, 12 steps, 2 checkpoints, 2 evaluations and the finish.
    assert report["slots"] >= 1 + 12 + 2 + 2 + 1
    receipt = check_receipt_signature(trained.outcome.receipt, trained.outcome.model)
    assert receipt["statement"]["fixed_rate"] == report
    assert receipt["statement"]["plan"]["fixed_rate"] is True
