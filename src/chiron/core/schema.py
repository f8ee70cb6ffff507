"""Public dataset metadata: the only facts about the data a recipe may see up front.

A schema is part of every encrypted dataset's public header and is what the recipe's
`build_model(schema)` receives. It carries no records and nothing derived from them
beyond their shape, type and label space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from chiron.core.errors import InputError

SUPPORTED_DTYPES = ("uint8", "float32")
MAX_CLASSES = 100_000
MAX_INPUT_ELEMENTS = 64 * 1024 * 1024


@dataclass(frozen=True)
class DatasetSchema:
    """Input shape (without the batch axis), element type and label space."""

    input_shape: tuple[int, ...]
    dtype: str
    num_classes: int
    class_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.input_shape or any(not isinstance(d, int) or d <= 0 for d in self.input_shape):
            raise InputError(f"invalid input shape {self.input_shape!r}")
        if self.input_elements > MAX_INPUT_ELEMENTS:
            raise InputError("input shape is too large")
        if self.dtype not in SUPPORTED_DTYPES:
            raise InputError(f"unsupported dtype {self.dtype!r} (use one of {SUPPORTED_DTYPES})")
        if not isinstance(self.num_classes, int) or not 2 <= self.num_classes <= MAX_CLASSES:
            raise InputError(f"number of classes must be between 2 and {MAX_CLASSES}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise InputError("class_names must name every class exactly once")

    @property
    def input_elements(self) -> int:
        n = 1
        for d in self.input_shape:
            n *= d
        return n

    @property
    def record_bytes(self) -> int:
        return self.input_elements * (1 if self.dtype == "uint8" else 4)

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_shape": list(self.input_shape),
            "dtype": self.dtype,
            "num_classes": self.num_classes,
            "class_names": list(self.class_names),
        }

    @classmethod
    def from_dict(cls, data: Any) -> DatasetSchema:
        try:
            return cls(
                input_shape=tuple(int(d) for d in data["input_shape"]),
                dtype=str(data["dtype"]),
                num_classes=int(data["num_classes"]),
                class_names=tuple(str(c) for c in data.get("class_names", ())),
            )
        except (KeyError, TypeError, ValueError):
            raise InputError("malformed dataset schema") from None
