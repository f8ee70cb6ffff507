"""Distributed training: the cost of the encrypted parameter exchange.

Three measurements, each against a baseline taken in the same run:

  exchange  (default) one synchronous round per iteration, of the CNN recipe's parameter
            vector, between N workers and the parameter server, with the enclaves' own
            message layer (AES-GCM, fixed-size slots, checks on receipt), gloo transport
            and averaging; against a plain gloo all-reduce of the same floats between N
            processes (no server, no encryption). Prints ms per round and the ratio.
  training  `--training`: real distributed jobs (`chiron train --local --workers N`'s
            flow: attested enclaves, sandboxes, the exchange every k steps) on a part of
            Fashion-MNIST; prints the share of each worker's training loop spent in the
            exchange, and seconds per step, against one enclave on the same data.
  accuracy  `--accuracy`: the CNN recipe on all of Fashion-MNIST with 1 and with 2
            workers (same epochs, seed); test accuracy of each escrowed model on the test
            split, measured by a query enclave (`chiron evaluate`).

    .venv/bin/python benchmarks/distributed.py [--workers 1 2 3 4] [--rounds 40] [--pairs 5]
    .venv/bin/python benchmarks/distributed.py --training [--records 12000] [--every 10]
    .venv/bin/python benchmarks/distributed.py --accuracy [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FASHION = Path("/usr/share/datasets/fashion-mnist")
CNN = REPO / "examples" / "recipes" / "cnn.py"
WARM_UP_ROUNDS = 3


def cnn_parameters() -> bytes:
    """The CNN recipe's parameter vector (safetensors), as its sandboxed child sends it."""
    from chiron.core.schema import DatasetSchema
    from chiron.recipes.hooks import load_recipe
    from chiron.recipes.loop import declare

    recipe = load_recipe(CNN.read_bytes(), filename="cnn.py")
    _, probe = declare(recipe, DatasetSchema((1, 28, 28), "uint8", 10))
    return probe.model_weights()


# -- exchange ---------------------------------------------------------------------------


def _encrypted_member(rank, world, ports, key, vector, rounds, results) -> None:
    from chiron.enclave.distributed.averaging import ParameterLayout
    from chiron.enclave.distributed.group import Board, Transport, rendezvous_store, store_port
    from chiron.enclave.distributed.messages import (
        MessageKind,
        SecureChannel,
        WireTrace,
        parameter_slot_bytes,
        wire_bytes,
    )
    from chiron.enclave.distributed.settings import Rendezvous

    rendezvous = Rendezvous("127.0.0.1", 0 if rank == 0 else ports.get(), "127.0.0.1", rank == 0)
    with rendezvous_store(rendezvous, rank=rank, timeout=120) as store:
        if rank == 0:
            for _ in range(world - 1):
                ports.put(store_port(store))
        trace = WireTrace()
        board = Board(store, job_id="bench", manifest="bench", trace=trace)
        transport = Transport(
            board, rank=rank, world_size=world, address="127.0.0.1", timeout=120, trace=trace
        )
        channel = SecureChannel(key, job_id="bench", rank=rank)
        slot = parameter_slot_bytes(len(vector))
        layout = ParameterLayout(vector)
        workers = range(1, world)
        started = 0.0
        for round_number in range(WARM_UP_ROUNDS + rounds):
            if round_number == WARM_UP_ROUNDS:
                started = time.perf_counter()
            if rank == 0:  # as the parameter server's synchronous round does it
                received = []
                for worker, message in transport.receive_each(workers, wire_bytes(slot)):
                    _, params = channel.open(
                        message,
                        sender=worker,
                        kinds=(MessageKind.PARAMS,),
                        round_number=round_number,
                        slot_bytes=slot,
                    )
                    layout.check(params, who=f"worker {worker}")
                    received.append(params)
                average = layout.average(received)
                answers = [
                    (
                        worker,
                        channel.seal(
                            MessageKind.AVERAGE,
                            receiver=worker,
                            round_number=round_number,
                            payload=average,
                            slot_bytes=slot,
                        ),
                    )
                    for worker in workers
                ]
                for _ in transport.send_each(answers):
                    pass
            else:
                transport.send(
                    0,
                    channel.seal(
                        MessageKind.PARAMS,
                        receiver=0,
                        round_number=round_number,
                        payload=vector,
                        slot_bytes=slot,
                    ),
                )
                channel.open(
                    transport.receive(0, wire_bytes(slot)),
                    sender=0,
                    kinds=(MessageKind.AVERAGE,),
                    round_number=round_number,
                    slot_bytes=slot,
                )
        elapsed = time.perf_counter() - started
        transport.close()
    if rank == 1:
        results.put(elapsed / rounds)


def _plain_member(rank, world, ports, elements, rounds, results) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    port = 0 if rank == 0 else ports.get()
    store = dist.TCPStore(
        "127.0.0.1",
        port,
        is_master=rank == 0,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=120),
    )
    if rank == 0:
        for _ in range(world - 1):
            ports.put(store.port)
    options = dist.ProcessGroupGloo._Options()
    options._timeout = datetime.timedelta(seconds=120)
    options._devices = [dist.ProcessGroupGloo.create_device(hostname="127.0.0.1")]
    group = dist.ProcessGroupGloo(dist.PrefixStore("plain", store), rank, world, options)
    tensor = torch.ones(elements, dtype=torch.float32)
    started = 0.0
    for round_number in range(WARM_UP_ROUNDS + rounds):
        if round_number == WARM_UP_ROUNDS:
            started = time.perf_counter()
        group.allreduce([tensor]).wait()
        tensor /= world
    if rank == 0:
        results.put((time.perf_counter() - started) / rounds)


def _run_members(target, world: int, *args) -> float:
    context = multiprocessing.get_context("spawn")
    ports, results = context.Queue(), context.Queue()
    processes = [
        context.Process(target=target, args=(rank, world, ports, *args, results))
        for rank in range(world)
    ]
    for process in processes:
        process.start()
    seconds = results.get(timeout=600)
    for process in processes:
        process.join(timeout=60)
        if process.exitcode != 0:
            raise SystemExit(f"a benchmark process failed ({process.exitcode})")
    return seconds


def exchange(worker_counts: list[int], rounds: int, pairs: int) -> None:
    """Alternate encrypted and plain runs `pairs` times per worker count: a shared
    machine's load changes from minute to minute, and each pair's ratio is taken
    within the same minute; the median of the pairs is the figure."""
    from chiron.enclave.distributed.averaging import ParameterLayout

    vector = cnn_parameters()
    elements = ParameterLayout(vector).float_elements
    key = os.urandom(32)
    print(
        f"CNN recipe parameters: {elements} floats, {len(vector) / 2**20:.2f} MiB per message; "
        f"{rounds} rounds after {WARM_UP_ROUNDS} warm-up rounds; {os.cpu_count()} CPU threads; "
        f"median of {pairs} alternating pairs"
    )
    print("workers  encrypted exchange  plain gloo all-reduce  ratio   per worker (both ways)")
    for workers in worker_counts:
        encrypted_runs, plain_runs, ratios = [], [], []
        for _ in range(pairs if workers > 1 else 1):
            encrypted_runs.append(_run_members(_encrypted_member, workers + 1, key, vector, rounds))
            if workers > 1:
                plain_runs.append(_run_members(_plain_member, workers, elements, rounds))
                ratios.append(encrypted_runs[-1] / plain_runs[-1])
        encrypted = statistics.median(encrypted_runs)
        if workers > 1:
            plain = statistics.median(plain_runs)
            plain_text = f"{plain * 1e3:10.2f} ms"
            ratio = f"{statistics.median(ratios):6.2f}"
            spread = f"  (pairs {min(ratios):.2f}-{max(ratios):.2f})" if pairs > 1 else ""
        else:
            plain_text, ratio, spread = "   (nothing to reduce)", "     -", ""
        throughput = 2 * len(vector) / encrypted / 2**20
        print(
            f"{workers:7d}  {encrypted * 1e3:14.2f} ms  {plain_text:>21}  {ratio}  "
            f"{throughput:8.1f} MiB/s{spread}"
        )


# -- training -----------------------------------------------------------------------------


def fashion_arrays(split: str) -> tuple[object, object]:
    """Fashion-MNIST `split` ("train" or "t10k") as numpy arrays, read from its IDX files."""
    import gzip

    import numpy as np

    def idx(name: str, header: int) -> np.ndarray:
        with gzip.open(FASHION / f"{split}-{name}-idx{header // 4 - 1}-ubyte.gz") as stream:
            return np.frombuffer(stream.read()[header:], dtype=np.uint8)

    return idx("images", 16).reshape(-1, 1, 28, 28), idx("labels", 8).astype(np.int64)


def encrypt_fashion(root: Path, split: str, records: int | None) -> tuple[Path, Path]:
    """Fashion-MNIST `split` as an encrypted dataset (its first `records`, if given)."""
    command = [sys.executable, "-m", "chiron", "dataset", "encrypt"]
    if records is None:
        command += [str(FASHION), "--split", split]
    else:
        import numpy as np

        x, y = fashion_arrays("train" if split == "train" else "t10k")
        source = root / f"{split}-{records}.npz"
        np.savez(source, x=x[:records], y=y[:records])
        command.append(str(source))
    chd, key = root / f"{split}.chd", root / f"{split}.key"
    subprocess.run(
        [*command, "--out", str(chd), "--key", str(key)], check=True, stdout=subprocess.DEVNULL
    )
    return chd, key


def training(worker_counts: list[int], records: int, epochs: int, every: int) -> None:
    from chiron.client.attestation import load_policy
    from chiron.client.distributed import train_locally
    from chiron.client.sessions import LocalEnclaveSession
    from chiron.client.training import run_training
    from chiron.core.contract import TrainMaterials
    from chiron.core.dataset import read_dataset_header_and_digest
    from chiron.core.keys import Identity, load_data_key
    from chiron.core.manifest import DatasetRef, Plan
    from chiron.core.recipe_statement import make_statement

    owner, provider = Identity.generate(), Identity.generate()
    source = CNN.read_bytes()
    statement = make_statement(source, name="cnn", version="1", provider=provider)
    policy = load_policy(None, allow_simulation=True)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        state = root / "state"
        chd, key = encrypt_fashion(root, "train", records)
        data_key = load_data_key(key)
        header, digest = read_dataset_header_and_digest(chd)
        dataset = DatasetRef(header.dataset_id, digest)
        steps: dict[str, float] = {}

        def stamp(event: dict) -> None:
            if event.get("event") == "progress":
                now = time.perf_counter()
                steps.setdefault("first", now)
                steps.update(last=now, count=event["step"], start=steps.get("start", event["step"]))

        host = TrainMaterials(
            recipe_name="cnn.py",
            recipe_source=source,
            recipe_statement=statement,
            dataset_path=str(chd),
        ).to_wire()
        with LocalEnclaveSession("train", state, extra_args={"train": host}) as session:
            run_training(
                session,
                job_id="single",
                data_key=data_key,
                dataset=dataset,
                owner=owner,
                statement=statement,
                plan=Plan(seed=1, epochs=epochs),
                policy=policy,
                state_dir=state,
                on_event=stamp,
            )
        single = (steps["last"] - steps["first"]) / (steps["count"] - steps["start"])
        print(
            f"CNN recipe, {records} Fashion-MNIST records, {epochs} epoch(s), exchange every "
            f"{every} steps; {os.cpu_count()} CPU threads"
        )
        print(f"one enclave: {single * 1e3:.1f} ms per step (the baseline)")
        print(
            "workers  steps/worker  loop s  exchange s  (waiting)  share  share w/o waiting"
            "  ms/step  vs one enclave"
        )
        for workers in worker_counts:
            outcome = train_locally(
                recipe_path=CNN,
                recipe_source=source,
                dataset_path=chd,
                data_key=data_key,
                dataset=dataset,
                owner=owner,
                statement=statement,
                plan=Plan(seed=1, epochs=epochs, workers=workers, exchange_every=every),
                policy=policy,
                state_dir=state,
            )
            per_worker = outcome.training.report["steps"]
            timing = outcome.timings["worker 1"]
            loop, spent = timing["training_seconds"], timing["exchange_seconds"]
            waiting = timing["waiting_seconds"]
            per_step = loop / per_worker
            print(
                f"{workers:7d}  {per_worker:12d}  {loop:6.1f}  {spent:10.2f}  {waiting:9.2f}  "
                f"{spent / loop:5.1%}  {(spent - waiting) / loop:17.1%}  {per_step * 1e3:7.1f}"
                f"  {per_step / single:13.2f}x"
            )


# -- accuracy -----------------------------------------------------------------------------


def accuracy(epochs: int, seed: int) -> None:
    from provider_agent import provider_agent  # beside this script

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        env = {**os.environ, "CHIRON_HOME": str(root / "home")}

        def chiron(*args: object) -> str:
            done = subprocess.run(
                [sys.executable, "-m", "chiron", *map(str, args)],
                env=env,
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise SystemExit(done.stderr.strip())
            return done.stdout

        for name in ("owner", "provider"):
            chiron("keygen", "--out", root / f"{name}.key")
        statement = root / "cnn.statement.json"
        chiron("recipe", "sign", CNN, "--key", root / "provider.key", "--out", statement)
        train, train_key = encrypt_fashion(root, "train", None)
        test, test_key = encrypt_fashion(root, "test", None)
        print(
            f"CNN recipe on Fashion-MNIST, {epochs} epochs, seed {seed}; {os.cpu_count()} CPU threads"
        )
        for workers in (1, 2):
            model = root / f"model-{workers}.chm"
            started = time.perf_counter()
            trained = json.loads(
                chiron(
                    "train",
                    "--local",
                    "--allow-simulation",
                    "--recipe",
                    CNN,
                    "--statement",
                    statement,
                    "--dataset",
                    train,
                    "--data-key",
                    train_key,
                    "--owner",
                    root / "owner.key",
                    "--provider",
                    root / "provider.key.pub",
                    "--out",
                    model,
                    "--epochs",
                    epochs,
                    "--seed",
                    seed,
                    "--workers",
                    workers,
                    # The exchange's own cost; the clock's is benchmarks/fixed_rate.py's.
                    "--no-fixed-rate",
                    "--json",
                )
            )
            seconds = time.perf_counter() - started
            # The provider's share comes from its agent, never from its key file.
            with provider_agent(root / "provider.key", root / "home", root / "agent") as agent:
                evaluated = json.loads(
                    chiron(
                        "evaluate",
                        "--local",
                        "--allow-simulation",
                        "--model",
                        model,
                        "--owner",
                        root / "owner.key",
                        "--provider",
                        agent,
                        "--dataset",
                        test,
                        "--data-key",
                        test_key,
                        "--json",
                    )
                )
            print(
                f"{workers} worker(s): test accuracy {evaluated['accuracy']:.4f} "
                f"(held-out {trained['holdout_accuracy']:.4f}), {seconds:.0f} s"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--training", action="store_true")
    parser.add_argument("--accuracy", action="store_true")
    parser.add_argument("--workers", type=int, nargs="+", default=None)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--pairs", type=int, default=5, help="alternating runs per count")
    parser.add_argument("--records", type=int, default=12000)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if (args.training or args.accuracy) and not FASHION.exists():
        raise SystemExit("needs Debian's dataset-fashion-mnist (make datasets)")
    if args.accuracy:
        accuracy(args.epochs or 3, args.seed)
    elif args.training:
        training(args.workers or [2, 3], args.records, args.epochs or 1, args.every)
    else:
        exchange(args.workers or [1, 2, 3, 4], args.rounds, args.pairs)


if __name__ == "__main__":
    main()
