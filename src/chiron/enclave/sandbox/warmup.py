"""Warm torch up inside the child before it is confined.

The first forward pass, backward pass and optimizer step import modules lazily
(torch._dynamo, sympy, ...), create the intra-op thread pool and touch files and system
calls that the confined process may no longer use. Doing each of them once here, on a
throwaway model, means the recipe's first step runs the same code paths without needing
any of that.
"""

from __future__ import annotations


def warm_up() -> None:
    import numpy as np
    import safetensors.torch
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(8, 1, 8, 8, generator=generator)
    labels = torch.randint(0, 4, (8,), generator=generator)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Dropout(0.1),
        nn.Linear(64, 4),
    )
    optimizers = (
        torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        torch.optim.Adam(model.parameters(), lr=1e-3),
        torch.optim.AdamW(model.parameters(), lr=1e-3),
        torch.optim.RMSprop(model.parameters(), lr=1e-3),
        torch.optim.Adagrad(model.parameters(), lr=1e-2),
    )
    for optimizer in optimizers:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward unannotated
        optimizer.step()
    model.eval()
    with torch.no_grad():
        model(torch.from_numpy(np.zeros((2, 1, 8, 8), dtype=np.float32)))
    safetensors.torch.load(safetensors.torch.save(model.state_dict()))
