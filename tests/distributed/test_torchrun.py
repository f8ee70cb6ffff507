"""The multi-machine path: torchrun launches a node agent per rank, the owner's client
reaches their enclaves through the rendezvous store. Here the "machines" are separate
processes rendezvousing over loopback on a free port."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import World, make_world

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def world(tmp_path: Path) -> World:
    return make_world(tmp_path / "world", {"a": 600})


def test_torchrun_nodes_train_one_model_asynchronously(world):
    port = free_port()
    chd, key = world.dataset("a")
    torchrun = Path(sys.executable).with_name("torchrun")
    nodes = []
    for rank in range(3):
        training = ["--recipe", world.recipe, "--dataset", chd] if rank else []
        if rank == 2:
            # The statement beside the recipe is the default; rank 2 names it.
            training += ["--statement", world.statement(world.recipe)]
        nodes.append(
            subprocess.Popen(
                [
                    torchrun,
                    "--nnodes=3",
                    "--nproc-per-node=1",
                    f"--node-rank={rank}",
                    "--master-addr=127.0.0.1",
                    f"--master-port={port}",
                    "-m",
                    "chiron",
                    "node-agent",
                    "--state-dir",
                    world.home,
                    "--address",
                    "127.0.0.1",
                    *training,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        out = world.root / "model.chm"
        result = world.chiron(
            "train",
            "--rendezvous",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--async-staleness",
            "1",
            "--no-fixed-rate",  # about the rendezvous, not the clock (see conftest.train_args)
            "--exchange-every",
            "5",
            "--allow-simulation",
            "--dataset",
            chd,
            "--data-key",
            key,
            "--owner",
            world.owner,
            "--statement",
            world.statement(world.recipe),
            "--provider",
            f"{world.provider}.pub",
            "--out",
            out,
            "--wire-trace",
            world.root / "trace.json",
            "--json",
        )
        assert result.returncode == 0, result.stderr
        for node in nodes:
            node.wait(timeout=120)
            assert node.returncode == 0, node.stderr.read()
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["distributed"] == {
        **report["distributed"],
        "workers": 2,
        "mode": "async",
        "staleness": 1,
        "exchange_every": 5,
    }
    assert report["final_holdout_accuracy"] > 0.7
    verified = world.chiron("receipt", "verify", out, "--allow-simulation")
    assert verified.returncode == 0, verified.stderr
    trace = json.loads((world.root / "trace.json").read_text())
    sizes = {e["size"] for e in trace["worker 2"] if e["kind"] in ("PARAMS", "AVERAGE")}
    assert len(sizes) == 1
