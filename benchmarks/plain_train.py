"""The baseline of `train_end_to_end.py`: the same training as plain PyTorch, no Chiron.

What a data scientist would write without Chiron: load the data, hold out a part,
build the recipe's model (its own `build_model`, and its `augment` and `train_step` if it
defines them), the optimizer and learning-rate schedule its hyperparameters name,
then train with a shuffled batch per step and measure held-out accuracy after each
epoch. Same data, model, optimizer, seed, held-out split and threads as `chiron train`;
nothing of Chiron is imported, so it measures what Chiron's path adds.

    python benchmarks/plain_train.py --recipe examples/recipes/cnn.py \\
        --data /usr/share/datasets/fashion-mnist --epochs 1 --seed 1 --threads 2
    python benchmarks/plain_train.py --recipe examples/recipes/resnet20.py \\
        --data cifar-shaped.npz --epochs 1
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import runpy
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch


def load_data(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST's training split (a folder of IDX files) or an .npz with x and y."""
    if path.is_dir():
        with gzip.open(path / "train-images-idx3-ubyte.gz", "rb") as images:
            x = np.frombuffer(images.read()[16:], dtype=np.uint8).reshape(-1, 1, 28, 28)
        with gzip.open(path / "train-labels-idx1-ubyte.gz", "rb") as labels:
            y = np.frombuffer(labels.read()[8:], dtype=np.uint8).astype(np.int64)
        return x, y
    with np.load(path) as arrays:
        return arrays["x"], arrays["y"].astype(np.int64)


def holdout_split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A tenth (at most 5,000 records) held out, as Chiron's enclave does."""
    holdout = min(count // 10, 5000)
    order = np.random.Generator(np.random.PCG64([seed, 0x484F4C44])).permutation(count)
    return np.sort(order[holdout:]), np.sort(order[:holdout])


def make_optimizer(model: torch.nn.Module, hp: dict[str, Any]) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    lr, name = float(hp["lr"]), hp.get("optimizer", "adam")
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=float(hp.get("momentum", 0.0)),
            weight_decay=float(hp.get("weight_decay", 0.0)),
            nesterov=bool(hp.get("nesterov", False)),
        )
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=float(hp.get("weight_decay", 0.01)))
    return torch.optim.Adam(params, lr=lr, weight_decay=float(hp.get("weight_decay", 0.0)))


def to_batch(records: np.ndarray) -> torch.Tensor:
    batch = torch.from_numpy(records.astype(np.float32))
    return batch.div_(255.0) if records.dtype == np.uint8 else batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    options = parser.parse_args()
    started = time.perf_counter()
    torch.set_num_threads(options.threads)

    recipe = runpy.run_path(str(options.recipe))
    hp = {**recipe["HYPERPARAMETERS"]}
    if options.epochs:
        hp["epochs"] = options.epochs
    x, y = load_data(options.data)
    train, held_out = holdout_split(len(y), options.seed)
    schema = SimpleNamespace(
        input_shape=tuple(x.shape[1:]), num_classes=int(y.max()) + 1, dtype=str(x.dtype)
    )
    torch.manual_seed(options.seed)
    np.random.seed(options.seed)
    model = recipe["build_model"](schema)
    optimizer = make_optimizer(model, hp)
    augment = recipe.get("augment", lambda batch: batch)
    train_step = recipe.get("train_step")
    batch_size, epochs = int(hp["batch_size"]), int(hp["epochs"])
    steps_per_epoch = math.ceil(len(train) / batch_size)
    total = steps_per_epoch * epochs
    initial_lrs = [group["lr"] for group in optimizer.param_groups]
    generator = np.random.default_rng(options.seed)
    accuracies = []
    step = 0
    for _ in range(epochs):
        model.train()
        order = train[generator.permutation(len(train))]
        for start in range(0, len(order), batch_size):
            if hp.get("lr_schedule") == "cosine":
                factor = 0.5 * (1.0 + math.cos(math.pi * step / total))
                for group, lr in zip(optimizer.param_groups, initial_lrs, strict=True):
                    group["lr"] = lr * factor
            picked = order[start : start + batch_size]
            batch, labels = augment(to_batch(x[picked])), torch.from_numpy(y[picked])
            if train_step is not None:
                train_step(model, optimizer, batch, labels, hp)
            else:
                optimizer.zero_grad(set_to_none=True)
                torch.nn.functional.cross_entropy(model(batch), labels).backward()
                optimizer.step()
            step += 1
        model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(held_out), 1024):
                picked = held_out[start : start + 1024]
                correct += int((model(to_batch(x[picked])).argmax(1).numpy() == y[picked]).sum())
        accuracies.append(correct / len(held_out))
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - started,
                "steps": step,
                "holdout_accuracy": accuracies,
            }
        )
    )


if __name__ == "__main__":
    main()
