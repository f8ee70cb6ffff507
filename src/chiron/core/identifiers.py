"""Identifiers that cross a trust boundary: one alphabet and length each, checked once.

Job, model and dataset ids come from the host or from files the host stores, and they
end up in file names, store keys and sealing contexts. Each is checked here against a
fixed alphabet and length before any use, so none can carry `/`, `..`, NUL or anything
else a path or a log line would interpret.
"""

from __future__ import annotations

import re

from chiron.core.errors import InputError

# 128-bit random ids, lowercase hex: models (made by the training enclave) and datasets
# (made by the owner's client).
_HEX_ID = re.compile(r"[0-9a-f]{32}")
# Job ids are chosen by whoever creates the job (a service, or a client that derives
# them from the job's inputs): lowercase letters, digits and '-', 1 to 64, no leading '-'.
_JOB_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
# A request id chosen by the owner's client for one query or evaluation.
_REQUEST_ID = re.compile(r"[0-9a-f]{32}")


def _check(pattern: re.Pattern[str], value: object, what: str, rule: str) -> str:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise InputError(f"malformed {what}: {rule}")
    return value


def check_job_id(value: object) -> str:
    return _check(_JOB_ID, value, "job id", "1-64 lowercase letters, digits or '-'")


def check_model_id(value: object) -> str:
    return _check(_HEX_ID, value, "model id", "32 lowercase hex digits")


def check_dataset_id(value: object) -> str:
    return _check(_HEX_ID, value, "dataset id", "32 lowercase hex digits")


def check_request_id(value: object) -> str:
    return _check(_REQUEST_ID, value, "request id", "32 lowercase hex digits")
