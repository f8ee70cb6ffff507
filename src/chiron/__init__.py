"""Chiron: privacy-preserving machine learning as a service.

A data owner trains a provider's secret recipe on its encrypted data inside attested,
sandboxed enclaves, and gets an escrowed model it can only query. From Python:

```python
import numpy as np

import chiron

AGENT = "http://127.0.0.1:8471"  # the provider's key-release agent (chiron keys serve)

with chiron.connect(local=True, allow_simulation=True) as c:
    run = c.train("examples/recipes/cnn.py", statement="cnn.statement.json",
                  dataset="fm-train.chd", data_key="fm-train.key", owner="owner.key",
                  provider="provider.key.pub", epochs=3, seed=1,
                  on_progress=lambda step, total: print(f"step {step}/{total}", end="\\r"))
    run.save("model.chm")  # and model.receipt.json, model.report.json
    print(f"held-out accuracy {run.holdout_accuracy:.3f}")
    with c.open_model("model.chm", owner="owner.key", provider=AGENT) as model:
        answers = model.predict(np.load("images.npy"))
        print(answers.labels, answers.budget_left)  # answers.probabilities: an (N, classes) array
        print(model.evaluate("fm-test.chd", data_key="fm-test.key").accuracy)
```

`chiron.connect(url=..., token=...)` does the same through a Chiron service, where
`train` names a recipe registered there. Every failure is a `chiron.ChironError` (one
line, the message the `chiron` command prints). The command line is `chiron --help`.
"""

from __future__ import annotations

import importlib
from typing import Any

from chiron.core.errors import (
    AccessDenied,
    AttestationError,
    ChironError,
    Conflict,
    EnclaveError,
    InputError,
    IntegrityError,
    JobFailed,
    KeyFileError,
    NotFound,
    PeerFailure,
    PolicyError,
    ServiceError,
    UsageError,
)

__version__ = "0.1.0"

# The SDK lives in chiron.client.sdk and loads on first use: the enclave runtime and
# the sandboxed recipes import this package too, and must never load client code.
_SDK_NAMES = (
    "ClassMetrics",
    "Connection",
    "Evaluation",
    "Model",
    "Prediction",
    "Predictions",
    "TrainingRun",
    "connect",
)

__all__ = [
    *_SDK_NAMES,
    "AccessDenied",
    "AttestationError",
    "ChironError",
    "Conflict",
    "EnclaveError",
    "InputError",
    "IntegrityError",
    "JobFailed",
    "KeyFileError",
    "NotFound",
    "PeerFailure",
    "PolicyError",
    "ServiceError",
    "UsageError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name in _SDK_NAMES:
        value = getattr(importlib.import_module("chiron.client.sdk"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'chiron' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
