"""A trained model's files: the model beside its receipt, and never lost to a plot."""

from __future__ import annotations

import pytest

from chiron.client.outputs import output_paths, write_training_outputs
from chiron.core.errors import InputError


def _report(matrix: object) -> dict[str, object]:
    return {"epoch_accuracy": [0.5], "confusion_matrix": matrix, "class_names": ["a", "b"]}


def test_a_plot_that_cannot_be_drawn_leaves_the_model_with_its_receipt(tmp_path):
    out = tmp_path / "model.chm"
    with pytest.raises(InputError, match="square table"):
        write_training_outputs(
            out, model=b"model", receipt=b"receipt", report=_report([[1, 2], [3]]),
            overwrite=False, with_plots=True,
        )  # fmt: skip
    paths = output_paths(out)
    assert out.read_bytes() == b"model"
    assert paths["receipt"].read_bytes() == b"receipt"
    assert not paths["confusion"].exists()


def test_all_outputs_are_written(tmp_path):
    out = tmp_path / "model.chm"
    paths = write_training_outputs(
        out, model=b"model", receipt=b"receipt", report=_report([[1, 0], [0, 1]]),
        overwrite=False, with_plots=True,
    )  # fmt: skip
    assert out.exists() and all(path.exists() for path in paths.values())
