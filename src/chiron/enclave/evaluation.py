"""The query enclave's `evaluate` call: a confusion matrix over the owner's labelled data.

The owner signs the request, whose id is spent once in the model's sealed ledger; the
host's dataset file is believed only once the owner's data key, sealed to this enclave,
opens and authenticates it; every record is charged to the budget before the recipe
runs. An evaluation needs at least the policy's `min_evaluation_records` and returns
only a confusion matrix, sealed to the owner's reply key at a size fixed by the number
of classes and signed by this enclave (`core.replies`).
"""

from __future__ import annotations

from chiron.core import dataset as container
from chiron.core import purposes, replies
from chiron.core.contract import EvaluateRequest, EvaluateResult
from chiron.core.crypto import open_sealed, reply_public_key, seal, verify_signature
from chiron.core.errors import InputError
from chiron.core.identifiers import check_dataset_id
from chiron.core.query_protocol import (
    QueryPolicy,
    confusion_matrix,
    encode_evaluation_report,
    evaluation_data_key_context,
    evaluation_report_context,
    evaluation_request_message,
)
from chiron.enclave.context import EnclaveContext
from chiron.enclave.query import Emit, current_session, predict, refuse_replay, unlocked
from chiron.enclave.query_ledger import EVALUATED, REPLAYED


def handle_evaluate(
    context: EnclaveContext, request: EvaluateRequest, emit: Emit
) -> EvaluateResult:
    session = current_session(context)
    policy, ledger, _ = unlocked(session)
    header, model_id, request_id = session.header, session.model_id, request.request_id
    reply_key = reply_public_key(request.reply_key)
    verify_signature(
        header.owner.signing_key,
        request.signature,
        evaluation_request_message(
            model_id, request_id, request.sealed_data_key, request.reply_key
        ),
        purpose=purposes.EVALUATION_REQUEST,
        what="the owner's signature on this evaluation",
    )
    # Refused before any work; recorded (and charged) below, in one locked step that
    # checks the ledger again, for a replay racing its original.
    refuse_replay(session, request_id)
    if ledger.spent(request_id):
        raise InputError(REPLAYED)
    # The path is the host's; the file it names is believed only once the owner's data
    # key, sealed under the dataset id its header states, opens and authenticates it.
    dataset_header = container.read_dataset_header(request.dataset_path)
    dataset_id = check_dataset_id(dataset_header.dataset_id)
    if dataset_header.schema.input_shape != header.schema.input_shape or (
        dataset_header.schema.num_classes != header.schema.num_classes
    ):
        raise InputError("the dataset's schema does not match the model's")
    # Refused before the data key is even opened when the header says it is too small.
    _check_evaluation_size(policy, dataset_header.record_count)
    key = open_sealed(
        context.identity.hpke_key,
        request.sealed_data_key,
        purpose=purposes.EVALUATION_DATA_KEY,
        context=evaluation_data_key_context(model_id, request_id, dataset_id),
        what="the evaluation data key",
    )
    _, x, y = container.load_dataset(request.dataset_path, key)
    # Counted again on the records the key authenticated (the header's count is the
    # host's until then).
    _check_evaluation_size(policy, len(y))
    budget_left = ledger.accept(request_id, EVALUATED, len(y), policy.budget)
    logits = predict(session, x, charged=True)
    matrix = confusion_matrix(y, logits.argmax(1), header.schema.num_classes)
    sealed = seal(
        reply_key,
        encode_evaluation_report(model_id, dataset_id, matrix, budget_left),
        purpose=purposes.EVALUATION_REPORT,
        context=evaluation_report_context(model_id, request_id),
    )
    signature = replies.sign_evaluation_report(context.identity, model_id, request_id, sealed)
    return EvaluateResult(sealed, signature)


def _check_evaluation_size(policy: QueryPolicy, records: int) -> None:
    """An evaluation runs on at least the policy's minimum number of records.

    Each record is charged to the budget like a queried input, and the report holds
    only counts over the whole set: with a minimum, no single record's answer stands
    alone in the matrix, however the owner composes its labelled set.
    """
    if records < policy.min_evaluation_records:
        raise InputError(
            f"an evaluation needs at least {policy.min_evaluation_records} records "
            f"(this model's query policy), the dataset has {records}"
        )
