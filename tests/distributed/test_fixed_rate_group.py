"""Issue 14: a group trains on one fixed clock by default, and its wire timing carries no data.

Two recipes that sleep differently depending on the data train as groups of two on two
data sets of one public shape (one bright, one dark). On the clock every member's
messages have the same (direction, peer, kind, size) sequence and the same times
relative to the clock's start, within its jitter; run free (`--no-fixed-rate`) the times
differ, so the comparison can fail. The runs are real (`chiron train --local --workers
2`): enclave processes, sandboxes, a parameter server over loopback.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from chiron.client.job_inputs import make_plan

from .conftest import RECIPE, World, make_world

PERIOD_MS = 150
JITTER = PERIOD_MS / 1000 / 3  # a third of a slot
RECORDS = 192  # 19 held out; about 86 per worker: 6 steps of 16 an epoch, 2 epochs

SLEEPS = {
    # 40 ms a step on a bright batch, nothing on a dark one.
    "bright": "time.sleep(0.04 if x.float().mean() > 0.5 else 0.0)",
    # 30 ms on every other dark batch.
    "dark": "time.sleep(0.03 if x.float().mean() < 0.5 and torch.rand(()) < 0.5 else 0.0)",
}


def test_a_group_runs_on_the_clock_unless_the_owner_says_otherwise():
    assert make_plan(seed=0, epochs=1, workers=2).fixed_rate
    assert not make_plan(seed=0, epochs=1, workers=2, fixed_rate=False).fixed_rate
    assert not make_plan(seed=0, epochs=1, workers=1).fixed_rate
    assert make_plan(seed=0, epochs=1, workers=1, period_ms=100).fixed_rate


def _world(root: Path) -> World:
    world = make_world(root, {})
    for name in SLEEPS:
        rng = np.random.default_rng(len(name))
        low, high = (200, 255) if name == "bright" else (0, 50)
        x = rng.integers(low, high, size=(RECORDS, 1, 8, 8)).astype(np.uint8)
        y = rng.integers(0, 3, size=RECORDS).astype(np.int64)
        np.savez(root / f"{name}.npz", x=x, y=y)
        chd, key = world.dataset(name)
        assert world.chiron("dataset", "encrypt", root / f"{name}.npz", "--out", chd,
                            "--key", key).returncode == 0  # fmt: skip
        recipe = root / f"sleep_{name}.py"
        recipe.write_text(
            RECIPE
            + textwrap.dedent(
                f"""
                import time
                import torch

                def train_step(model, optimizer, x, y, hp):
                    optimizer.zero_grad()
                    loss = nn.functional.cross_entropy(model(x), y)
                    loss.backward()
                    optimizer.step()
                    {SLEEPS[name]}
                    return loss
                """
            )
        )
        signed = world.chiron("recipe", "sign", recipe, "--key", world.provider)
        assert signed.returncode == 0, signed.stderr
    return world


def _trace(world: World, name: str, *clock: str) -> dict[str, list[dict]]:
    out, trace = world.root / f"{name}-{len(clock)}.chm", world.root / f"{name}.trace.json"
    args = world.train_args(name, out, recipe=world.root / f"sleep_{name}.py", fixed_rate=True)
    result = world.chiron(*args, "--local", "--exchange-every", "3", *clock,
                          "--wire-trace", trace, "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    receipt = json.loads(Path(json.loads(result.stdout)["receipt"]).read_text())
    rate = receipt["statement"]["fixed_rate"]
    if "--no-fixed-rate" in clock:
        assert rate is None
    else:
        assert rate["period_ms"] == PERIOD_MS and not rate["calibrated"]
    return json.loads(trace.read_text())


def _on_the_clock(events: list[dict]) -> list[tuple[str, str, str, int, float]]:
    """(direction, peer, kind, size, seconds since START) of everything after START."""
    start = next(e["time"] for e in events if e["kind"] == "START")
    return [
        (e["direction"], e["peer"], e["kind"], e["size"], e["time"] - start)
        for e in events
        if e["time"] >= start and e["kind"] != "START"
    ]


def _largest_time_difference(a: dict[str, list[dict]], b: dict[str, list[dict]]) -> float:
    assert a.keys() == b.keys() == {"parameter server", "worker 1", "worker 2"}
    largest = 0.0
    for member in a:
        ours, theirs = _on_the_clock(a[member]), _on_the_clock(b[member])
        assert [e[:4] for e in ours] == [e[:4] for e in theirs], member
        assert any(kind == "PARAMS" for _, _, kind, _, _ in ours)
        largest = max(largest, *(abs(x[4] - y[4]) for x, y in zip(ours, theirs, strict=True)))
    return largest


@pytest.mark.slow
@pytest.mark.alone
def test_on_the_clock_the_wire_timing_is_the_same_whatever_the_data(tmp_path):
    world = _world(tmp_path)
    clock = ("--period-ms", str(PERIOD_MS))
    bright, dark = _trace(world, "bright", *clock), _trace(world, "dark", *clock)
    assert _largest_time_difference(bright, dark) <= JITTER
    # Control: free-running, the same recipes and data give other times.
    bright, dark = (
        _trace(world, "bright", "--no-fixed-rate"),
        _trace(world, "dark", "--no-fixed-rate"),
    )
    assert _largest_time_difference(bright, dark) > JITTER
