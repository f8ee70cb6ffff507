"""The opened answers to a query batch: arrays over the answer's bytes, checked for size."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

from chiron.core.errors import IntegrityError
from chiron.core.query_protocol import Answers, decode_answers, encode_answers

PROBABILITIES = {"output": "probabilities", "rounding": 4}
LABELS = {"output": "label"}


def logits(count: int, classes: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(count, classes)).astype(np.float32)


def test_answers_are_the_labels_and_rows_the_enclave_encoded():
    x = logits(7, 3)
    answers = decode_answers(encode_answers(x, PROBABILITIES), 7, 3, PROBABILITIES)
    assert isinstance(answers, Answers) and len(answers) == 7
    assert answers.labels.tolist() == x.argmax(1).tolist()
    assert answers.probabilities is not None and answers.probabilities.shape == (7, 3)
    assert np.allclose(answers.probabilities.sum(1), 1, atol=1e-3)
    # Views over the opened bytes: nobody downstream can rewrite an answer in place.
    assert not answers.labels.flags.writeable and not answers.probabilities.flags.writeable


def test_the_dict_form_is_one_entry_per_input_in_order():
    x = logits(4, 5)
    answers = decode_answers(encode_answers(x, PROBABILITIES), 4, 5, PROBABILITIES)
    dicts = answers.as_dicts()
    assert [d["label"] for d in dicts] == answers.labels.tolist()
    assert [d["probabilities"] for d in dicts] == answers.probabilities.tolist()


def test_a_labels_only_policy_gives_no_probabilities():
    x = logits(3, 4)
    answers = decode_answers(encode_answers(x, LABELS), 3, 4, LABELS)
    assert answers.probabilities is None
    assert answers.as_dicts() == [{"label": label} for label in x.argmax(1).tolist()]


@pytest.mark.parametrize("change", [-1, 1])
def test_an_answer_of_the_wrong_size_is_refused(change):
    data = encode_answers(logits(4, 3), PROBABILITIES)
    wrong = data[:change] if change < 0 else data + b"\0"
    with pytest.raises(IntegrityError, match="wrong size"):
        decode_answers(wrong, 4, 3, PROBABILITIES)


def test_answers_compare_and_hash_by_value():
    data = encode_answers(logits(4, 3), PROBABILITIES)
    first = decode_answers(data, 4, 3, PROBABILITIES)
    again = decode_answers(bytes(bytearray(data)), 4, 3, PROBABILITIES)
    other = decode_answers(encode_answers(logits(4, 3) * -1, PROBABILITIES), 4, 3, PROBABILITIES)
    assert first == again and hash(first) == hash(again)
    assert first != other
    assert len({first, again, other}) == 2


def test_sdk_predictions_read_the_arrays_and_make_items_on_demand():
    from chiron.client.sdk import Prediction, Predictions

    x = logits(3, 2)
    answers = decode_answers(encode_answers(x, PROBABILITIES), 3, 2, PROBABILITIES)
    predictions = Predictions(answers, 5, ("cat", "dog"))
    assert "items" not in vars(predictions)  # nothing per input made yet
    assert predictions.labels == x.argmax(1).tolist()
    assert predictions.probabilities is answers.probabilities
    assert "items" not in vars(predictions)
    assert predictions[0] == Prediction(
        predictions.labels[0],
        tuple(answers.probabilities[0].tolist()),
        ("cat", "dog")[predictions.labels[0]],
    )
    assert [p.label for p in predictions] == predictions.labels
    assert predictions == Predictions(answers, 5, ("cat", "dog"))
    assert hash(predictions) == hash(Predictions(answers, 5, ("cat", "dog")))


def test_answers_own_frozen_arrays_whatever_they_were_made_from():
    data = bytearray(encode_answers(logits(4, 3), PROBABILITIES))
    answers = decode_answers(data, 4, 3, PROBABILITIES)  # over a writable buffer
    before = answers.labels.tolist(), hash(answers)
    data[:] = bytes(len(data))
    assert (answers.labels.tolist(), hash(answers)) == before
    for same in (pickle.loads(pickle.dumps(answers)), copy.deepcopy(answers), copy.copy(answers)):
        assert same == answers
        assert not same.labels.flags.writeable and not same.probabilities.flags.writeable
        with pytest.raises(ValueError):
            same.probabilities[0, 0] = 1.0


def test_answers_of_other_shapes_or_kinds_are_not_equal():
    rows = np.zeros((2, 3), "<f4")
    assert Answers(np.zeros(2), rows) != Answers(np.zeros(2), rows.reshape(3, 2))
    assert Answers(np.zeros(0), None) != Answers(np.zeros(0), np.zeros((0, 3)))
    assert Answers(np.zeros(2), None) != Answers(np.zeros(1), None)
