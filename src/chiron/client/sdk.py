"""The owner's Python SDK: train, save, predict and evaluate without the command line.

`chiron.connect(...)` gives a `Connection` to enclaves on this machine (`local=True`)
or behind a Chiron service (`url=...`); its `train` returns a `TrainingRun` and its
`open_model` a `Model` answering `predict` and `evaluate`. The example in `help(chiron)`
(and the README's "From Python" section) shows the whole flow.

It runs exactly what `chiron train`, `evaluate` and `query` run (`chiron.client.targets`
is shared with the command line): the same attestation, signed manifest, sealed keys
and checks, and the same typed `ChironError`s with one-line messages. It prints nothing:
progress is a callback, results are frozen values.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from chiron.client import job_inputs, outputs, targets
from chiron.client.inputs import load_query_inputs
from chiron.client.querying import UnlockedModel, evaluate, query
from chiron.core.errors import UsageError
from chiron.core.keys import PublicIdentity, load_public_identity
from chiron.core.limits import MAX_WORKERS
from chiron.core.query_protocol import Answers

StrPath = str | os.PathLike[str]
ProgressCallback = Callable[[int, int], None]

__all__ = [
    "ClassMetrics",
    "Connection",
    "Evaluation",
    "Model",
    "Prediction",
    "Predictions",
    "TrainingRun",
    "connect",
]


@dataclass(frozen=True)
class TrainingRun:
    """A finished, verified training job: the escrowed model, its receipt, its report.

    Already checked against the manifest the owner signed. Nothing is written until
    `save`. A program interrupted during `train` continues the same job from its
    sealed checkpoints by calling `train` again with the same arguments.
    """

    model: bytes = field(repr=False)
    receipt: bytes = field(repr=False)
    model_id: str
    holdout_accuracy: float
    epoch_accuracy: tuple[float, ...]
    confusion_matrix: tuple[tuple[int, ...], ...] = field(repr=False)
    class_names: tuple[str, ...] = field(repr=False)
    resumed_from_step: int
    # The owner's whole report as the enclave sealed it (what save writes as JSON).
    report: Mapping[str, Any] = field(repr=False, compare=False)

    def save(self, path: StrPath, *, overwrite: bool = False, plots: bool = False) -> Path:
        """Write MODEL.chm, MODEL.receipt.json and MODEL.report.json (plots: two PNGs).

        Each file is written atomically, the model last; an existing file is an
        InputError unless `overwrite`.
        """
        out = Path(path)
        outputs.write_training_outputs(
            out,
            model=self.model,
            receipt=self.receipt,
            report=dict(self.report),
            overwrite=overwrite,
            with_plots=plots,
        )
        return out

    @classmethod
    def _from(cls, trained: targets.Trained) -> TrainingRun:
        outcome = trained.outcome
        report = outcome.report
        return cls(
            model=outcome.model,
            receipt=outcome.receipt,
            model_id=str(report["model_id"]),
            holdout_accuracy=float(report["final_holdout_accuracy"]),
            epoch_accuracy=tuple(float(a) for a in report["epoch_accuracy"]),
            confusion_matrix=tuple(
                tuple(int(n) for n in row) for row in report["confusion_matrix"]
            ),
            class_names=tuple(str(name) for name in report.get("class_names", ())),
            resumed_from_step=int(report.get("resumed_from_step", 0)),
            report=MappingProxyType(dict(report)),
        )


@dataclass(frozen=True)
class Prediction:
    """One answer: the label, its class name if the dataset named classes, probabilities.

    `probabilities` is None when the recipe's query policy answers labels only.
    """

    label: int
    probabilities: tuple[float, ...] | None = None
    class_name: str | None = None


@dataclass(frozen=True)
class Predictions:
    """The answers to one `predict` call, in input order, and the query budget left.

    Held as arrays (`answers`); a `Prediction` per input is made only when the items are
    first asked for, so a caller that reads `labels` or `probabilities` of large batches
    pays for no Python object per input.
    """

    answers: Answers
    budget_left: int | None
    class_names: tuple[str, ...] = ()

    @property
    def labels(self) -> list[int]:
        return self.answers.labels.tolist()  # type: ignore[no-any-return]

    @property
    def probabilities(self) -> np.ndarray | None:
        """One float32 row per input (read-only), or None for a labels-only policy."""
        return self.answers.probabilities

    @cached_property
    def items(self) -> tuple[Prediction, ...]:
        names = self.class_names
        rows = self.answers.probabilities
        probabilities = [None] * len(self) if rows is None else [tuple(r) for r in rows.tolist()]
        return tuple(
            Prediction(label, row, names[label] if names else None)
            for label, row in zip(self.labels, probabilities, strict=True)
        )

    def __len__(self) -> int:
        return len(self.answers)

    def __iter__(self) -> Iterator[Prediction]:
        return iter(self.items)

    def __getitem__(self, index: int) -> Prediction:
        return self.items[index]


@dataclass(frozen=True)
class ClassMetrics:
    """One class of an evaluation; precision/recall are None where undefined."""

    name: str
    support: int
    precision: float | None
    recall: float | None


@dataclass(frozen=True)
class Evaluation:
    """A model's accuracy on an encrypted dataset, computed inside the query enclave."""

    accuracy: float
    per_class: tuple[ClassMetrics, ...]
    confusion_matrix: tuple[tuple[int, ...], ...]
    records: int
    # What is left of the model's query budget (an evaluation is charged by record).
    budget_left: int | None = None


class Model:
    """An escrowed model loaded in an attested query enclave: answers, never weights.

    Each `predict` and `evaluate` is charged to the model's query budget. Close it (or
    use `with`) to stop the enclave.
    """

    def __init__(self, unlocked: UnlockedModel, stack: ExitStack) -> None:
        self._unlocked = unlocked
        self._stack = stack

    @property
    def model_id(self) -> str:
        return self._unlocked.header.model_id

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one input; `predict` takes a batch of them."""
        return tuple(self._unlocked.header.schema.input_shape)

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self._unlocked.header.schema.class_names)

    def predict(self, inputs: np.ndarray | StrPath) -> Predictions:
        """Predictions for a batch shaped (N, *input_shape), or for a file of inputs.

        A file is what `chiron query --inputs` reads: .npy, .npz (array x), IDX images,
        an image or a folder of images.
        """
        schema = self._unlocked.header.schema
        if isinstance(inputs, np.ndarray):
            batch = inputs
        elif isinstance(inputs, str | os.PathLike):
            batch = load_query_inputs(Path(inputs), schema)
        else:
            raise UsageError("predict takes a numpy array or the path of an inputs file")
        answers, budget_left = query(self._unlocked, batch)
        return Predictions(answers, budget_left, schema.class_names)

    def evaluate(self, dataset: StrPath, *, data_key: StrPath) -> Evaluation:
        """Accuracy, per-class figures and confusion matrix on an encrypted dataset."""
        dataset_path = Path(dataset)
        _, key = job_inputs.check_dataset_key(dataset_path, Path(data_key))
        report = evaluate(self._unlocked, dataset_path=str(dataset_path.resolve()), data_key=key)
        return Evaluation(
            accuracy=float(report["accuracy"]),
            per_class=tuple(
                ClassMetrics(
                    name=str(row["class"]),
                    support=int(row["support"]),
                    precision=row["precision"],
                    recall=row["recall"],
                )
                for row in report["per_class"]
            ),
            confusion_matrix=tuple(
                tuple(int(n) for n in row) for row in report["confusion_matrix"]
            ),
            records=int(report["records"]),
            budget_left=report.get("budget_left"),
        )

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Connection:
    """Where the owner's enclaves run; made by `chiron.connect`. Close it when done."""

    def __init__(self, target: targets.Target) -> None:
        self._target = target

    @property
    def local(self) -> bool:
        return self._target.local

    def train(
        self,
        recipe: StrPath,
        *,
        dataset: StrPath,
        data_key: StrPath,
        owner: StrPath,
        statement: StrPath | None = None,
        provider: StrPath | PublicIdentity | None = None,
        epochs: int | None = None,
        seed: int = 0,
        workers: int = 1,
        fixed_rate: bool | None = None,
        period_ms: int | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> TrainingRun:
        """Train a provider's recipe on an encrypted dataset inside an attested enclave.

        `recipe` is the recipe file (its signed `statement` by default beside it), or
        with `url=` the name of a recipe registered there. `provider` (a .pub file or a
        PublicIdentity) pins who must have signed the recipe. `epochs` overrides the
        recipe's; `workers` > 1 trains locally on several enclaves with a parameter
        server. `fixed_rate` puts everything the host sees on a fixed clock (period
        `period_ms`, or calibrated); it is on by default with several workers, off with
        one. `on_progress(step, total)` is called as training advances. Calling
        `train` again with the same arguments after an interruption (a crash, a killed
        kernel) continues the unfinished job from its last sealed checkpoint.
        """
        if not isinstance(workers, int) or not 1 <= workers <= MAX_WORKERS:
            raise UsageError(f"workers must be from 1 to {MAX_WORKERS}")
        if workers > 1 and not self.local:
            raise UsageError("several workers run locally (connect(local=True)), not on a service")
        pinned = (
            provider
            if isinstance(provider, PublicIdentity) or provider is None
            else load_public_identity(provider)
        )
        trained = targets.train(
            self._target,
            recipe=os.fspath(recipe),
            statement_path=Path(statement) if statement is not None else None,
            dataset=Path(dataset),
            data_key_path=Path(data_key),
            owner_key=Path(owner),
            provider=pinned,
            plan=job_inputs.make_plan(
                seed=seed,
                epochs=epochs,
                workers=workers,
                fixed_rate=fixed_rate,
                period_ms=period_ms,
            ),
            on_progress=on_progress,
        )
        return TrainingRun._from(trained)

    def open_model(self, model: StrPath, *, owner: StrPath, provider: str) -> Model:
        """Load an escrowed model in a fresh, attested query enclave with both shares.

        `owner` is the owner's private key file. `provider` is the URL of the provider's
        key-release agent (`chiron keys serve`), which checks the enclave against the
        provider's release policy and seals the provider's share to it: the owner never
        holds the provider's key.
        """
        if not isinstance(provider, str) or not provider.startswith(("http://", "https://")):
            raise UsageError(
                "provider is the URL of the provider's key-release agent "
                f"(http://HOST:PORT, from `chiron keys serve`), not {provider!r}"
            )
        stack = ExitStack()
        with stack:
            unlocked = targets.unlock(
                self._target,
                stack,
                model_path=Path(model),
                owner_key=Path(owner),
                provider_url=provider,
            )
            return Model(unlocked, stack.pop_all())

    def close(self) -> None:
        self._target.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    *,
    local: bool = False,
    url: str | None = None,
    token: str | None = None,
    allow_simulation: bool = False,
    policy: StrPath | None = None,
    state_dir: StrPath | None = None,
) -> Connection:
    """Connect to enclaves on this machine (`local=True`) or to a Chiron service (`url=`).

    `token` is the service account's token (default $CHIRON_TOKEN, as for the command
    line). Enclave evidence is verified against `policy` (a TOML file; default: this
    installation's own measurement); simulated evidence (no TEE) is refused unless
    `allow_simulation`. Local enclaves keep their state in `state_dir` (default
    $CHIRON_HOME or ~/.chiron), and local jobs run on this machine's own host there,
    the very one `chiron train --local` uses (`chiron service jobs list --local`).
    """
    if local == (url is not None):
        raise UsageError("give exactly one of local=True or url=...")
    if url is not None and not isinstance(url, str):
        raise UsageError("url is the service's address, e.g. http://127.0.0.1:8470")
    target = targets.open_target(
        local=local,
        url=url,
        token=token if token is not None else os.environ.get("CHIRON_TOKEN"),
        allow_simulation=allow_simulation,
        policy_file=Path(policy) if policy is not None else None,
        state_dir=Path(state_dir) if state_dir is not None else None,
    )
    return Connection(target)
