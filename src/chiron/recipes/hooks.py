"""Load a provider's recipe and supply the hooks it leaves out.

A recipe is one Python file (see ARCHITECTURE.md, "Recipe contract"). It must define
`build_model(schema)`; everything else has a default here: `HYPERPARAMETERS`,
`configure_optimizer(model, hp)`, `augment(x)`, `train_step(model, optimizer, x, y, hp)`,
`predict(model, x)` and `QUERY_POLICY`. The hooks are wrapped so that a recipe that
returns the wrong kind of object fails with a `RecipeError` naming the hook, not with a
confusing error deep inside the training loop.
"""

from __future__ import annotations

import linecache
import math
import random
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional

from chiron.core.errors import RecipeError
from chiron.core.recipe_protocol import decode_json, encode_json
from chiron.core.schema import DatasetSchema

RECIPE_MODULE_NAME = "recipe"

DEFAULT_HYPERPARAMETERS: Mapping[str, Any] = {
    "epochs": 1,
    "batch_size": 64,
    "lr": 1e-3,
    "optimizer": "adam",
    "lr_schedule": "constant",
}

OPTIMIZERS = ("adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")


def load_recipe(
    source: str | bytes,
    *,
    filename: str = "recipe.py",
    overrides: Mapping[str, Any] | None = None,
) -> Recipe:
    """Run a recipe's source as a fresh module named `recipe` and wrap its hooks.

    The recipe's top-level code runs here, with every generator seeded with 0 so that
    any random numbers it draws are the same in every run. `overrides` (e.g.
    `{"epochs": 3}` from `chiron train --epochs`) replace the recipe's hyperparameters;
    None values are ignored.
    """
    if isinstance(source, bytes):
        try:
            source = source.decode("utf-8")
        except UnicodeDecodeError:
            raise RecipeError("the recipe is not UTF-8 text") from None
    module = types.ModuleType(RECIPE_MODULE_NAME)
    module.__file__ = filename
    # Registered so that classes defined in the recipe behave as in an imported module
    # (dataclasses, typing.get_type_hints, copy); tracebacks of a dry run show its lines.
    sys.modules[RECIPE_MODULE_NAME] = module
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    seed_everything(0)
    exec(compile(source, filename, "exec"), module.__dict__)  # noqa: S102 - the recipe is the point
    return Recipe(module, overrides or {})


class Recipe:
    """A loaded recipe: its hyperparameters, query policy and hooks (defaults filled in)."""

    def __init__(self, module: types.ModuleType, overrides: Mapping[str, Any]) -> None:
        self.module = module
        build_model = getattr(module, "build_model", None)
        if not callable(build_model):
            raise RecipeError("the recipe does not define build_model(schema)")
        self._build_model = build_model
        self._configure_optimizer = _hook(
            module, "configure_optimizer", default_configure_optimizer
        )
        self._augment = _hook(module, "augment", default_augment)
        self._train_step = _hook(module, "train_step", default_train_step)
        self._predict = _hook(module, "predict", default_predict)
        self.hyperparameters = _hyperparameters(module, overrides)
        self.query_policy = _query_policy(module)

    def declared_hyperparameters(self) -> dict[str, Any]:
        """The hyperparameters as the JSON document the recipe declares to the enclave."""
        return decode_json(encode_json(self.hyperparameters))

    def build_model(self, schema: DatasetSchema) -> torch.nn.Module:
        model = self._build_model(schema)
        if not isinstance(model, torch.nn.Module):
            raise RecipeError(
                f"build_model must return a torch.nn.Module, not {type(model).__name__}"
            )
        return model

    def configure_optimizer(
        self, model: torch.nn.Module, hp: Mapping[str, Any]
    ) -> torch.optim.Optimizer:
        optimizer = self._configure_optimizer(model, hp)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise RecipeError(
                "configure_optimizer must return a torch.optim.Optimizer, "
                f"not {type(optimizer).__name__}"
            )
        return optimizer

    def augment(self, x: torch.Tensor) -> torch.Tensor:
        return _tensor_result("augment", self._augment(x))

    def train_step(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        hp: Mapping[str, Any],
    ) -> Any:
        return self._train_step(model, optimizer, x, y, hp)

    def predict(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        logits = _tensor_result("predict", self._predict(model, x))
        if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
            raise RecipeError(
                f"predict must return logits of shape (batch, outputs), got {tuple(logits.shape)}"
            )
        return logits


def seed_everything(seed: int) -> None:
    """Seed every generator a recipe is likely to draw from: torch, random, numpy."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def default_configure_optimizer(
    model: torch.nn.Module, hp: Mapping[str, Any]
) -> torch.optim.Optimizer:
    """The optimizer named by hp["optimizer"] over all trainable parameters.

    Reads `lr`, and `weight_decay`, `momentum`, `nesterov` where the optimizer has them.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    name = hp["optimizer"]
    lr = float(hp["lr"])
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=float(hp.get("weight_decay", 0.0)))
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=float(hp.get("weight_decay", 0.01)))
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=float(hp.get("momentum", 0.0)),
            weight_decay=float(hp.get("weight_decay", 0.0)),
            nesterov=bool(hp.get("nesterov", False)),
        )
    raise RecipeError(f"unknown optimizer {name!r} (use one of {', '.join(OPTIMIZERS)})")


def default_augment(x: torch.Tensor) -> torch.Tensor:
    """No augmentation."""
    return x


def default_train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    hp: Mapping[str, Any],
) -> torch.Tensor:
    """One step of cross-entropy on the model's logits."""
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


def default_predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output, taken as logits."""
    return model(x)


def records_to_tensor(records: np.ndarray, schema: DatasetSchema) -> torch.Tensor:
    """Records as the float32 batch a recipe sees: uint8 scaled to [0, 1], float32 as is."""
    batch = torch.from_numpy(np.array(records, dtype=np.float32))
    if schema.dtype == "uint8":
        batch.div_(255.0)
    return batch


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    """The multiplier of every parameter group's initial learning rate at `step`.

    A pure function of the step, so a resumed run needs no scheduler state.
    """
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    return 1.0


def _hook(module: types.ModuleType, name: str, default: Callable[..., Any]) -> Callable[..., Any]:
    hook = getattr(module, name, None)
    if hook is None:
        return default
    if not callable(hook):
        raise RecipeError(f"the recipe's {name} is not a function")
    return hook


def _tensor_result(hook: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise RecipeError(f"{hook} must return a torch.Tensor, not {type(value).__name__}")
    return value


def _positive_int(hp: Mapping[str, Any], key: str) -> None:
    value = hp[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise RecipeError(f"hyperparameter {key!r} must be a positive integer")


def _hyperparameters(module: types.ModuleType, overrides: Mapping[str, Any]) -> dict[str, Any]:
    declared = getattr(module, "HYPERPARAMETERS", {})
    if not isinstance(declared, Mapping) or not all(isinstance(k, str) for k in declared):
        raise RecipeError("HYPERPARAMETERS must be a dict with string keys")
    hp = {**DEFAULT_HYPERPARAMETERS, **declared}
    hp.update({k: v for k, v in overrides.items() if v is not None})
    _positive_int(hp, "epochs")
    _positive_int(hp, "batch_size")
    lr = hp["lr"]
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not 0 < lr < math.inf:
        raise RecipeError("hyperparameter 'lr' must be a positive number")
    if hp["lr_schedule"] not in LR_SCHEDULES:
        raise RecipeError(f"hyperparameter 'lr_schedule' must be one of {', '.join(LR_SCHEDULES)}")
    _json_document("HYPERPARAMETERS", hp)
    return hp


def _query_policy(module: types.ModuleType) -> dict[str, Any]:
    policy = getattr(module, "QUERY_POLICY", {})
    if not isinstance(policy, Mapping):
        raise RecipeError("QUERY_POLICY must be a dict")
    # Validated by the enclave, which enforces it; here it only has to travel as JSON.
    return _json_document("QUERY_POLICY", dict(policy))


def _json_document(name: str, value: dict[str, Any]) -> dict[str, Any]:
    try:
        encode_json(value)
    except (TypeError, ValueError):
        raise RecipeError(f"{name} must hold only JSON values") from None
    return value
