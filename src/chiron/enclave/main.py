"""Enclave process entry point: read boundary calls, dispatch, answer.

Run as `python -m chiron.enclave.main --role ROLE --state-dir DIR --platform NAME`.
The process keeps one ephemeral identity for its lifetime; attestation evidence binds
it, so whoever verified the evidence can seal secrets to this very process.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

from chiron.core import contract
from chiron.core.contract import Call
from chiron.core.errors import ChironError
from chiron.core.framing import FramingError, read_frame, write_frame
from chiron.core.roles import ROLES
from chiron.enclave.boundary import (
    CALLS,
    EVENT,
    FAILURE,
    MAX_MESSAGE_BYTES,
    REQUEST,
    RESULT,
    failure_document,
    pack_message,
    unpack_message,
)
from chiron.enclave.context import EnclaveContext
from chiron.enclave.sandbox import _linux

# Where each call is implemented, and the type its arguments arrive as (parsed and
# validated by the type's `from_wire` before the handler runs). Handlers are imported
# lazily so a role loads only what it uses; each returns a result with `to_wire()`.
HANDLERS: dict[Call, tuple[str, Any]] = {
    Call.ATTEST: ("chiron.enclave.attestation:handle_attest", contract.AttestRequest),
    Call.TRAIN: ("chiron.enclave.train_call:handle_train", contract.TrainRequest),
    Call.LOAD_MODEL: ("chiron.enclave.query:handle_load_model", contract.LoadModelRequest),
    Call.PROVISION_SHARE: (
        "chiron.enclave.query:handle_provision_share",
        contract.ProvisionShareRequest,
    ),
    Call.QUERY: ("chiron.enclave.query:handle_query", contract.QueryRequest),
    Call.EVALUATE: ("chiron.enclave.evaluation:handle_evaluate", contract.EvaluateRequest),
    Call.EXCHANGE: (
        "chiron.enclave.distributed.paramserver:handle_exchange",
        contract.ExchangeRequest,
    ),
}

Handler = Callable[[EnclaveContext, Any, Callable[[dict[str, Any]], None]], Any]


def _resolve(target: str) -> Handler:
    module_name, _, attribute = target.partition(":")
    handler: Handler = getattr(importlib.import_module(module_name), attribute)
    return handler


def serve(context: EnclaveContext, in_fd: int, out_fd: int) -> None:
    def emit(event: dict[str, Any]) -> None:
        write_frame(out_fd, EVENT, pack_message(event))

    while True:
        try:
            frame = read_frame(in_fd, max_payload=MAX_MESSAGE_BYTES)
        except FramingError:
            return
        if frame is None or frame.kind != REQUEST:
            return
        try:
            request = unpack_message(frame.payload)
            name = request.get("call")
            if name not in CALLS[context.role]:
                raise ChironError(f"the {context.role} enclave has no call {name!r}")
            if name == "shutdown":
                write_frame(out_fd, RESULT, pack_message({}))
                return
            target, request_type = HANDLERS[Call(name)]
            arguments = request_type.from_wire(request.get("args") or {})
            result = _resolve(target)(context, arguments, emit)
            write_frame(out_fd, RESULT, pack_message(result.to_wire()))
        except ChironError as exc:
            write_frame(out_fd, FAILURE, pack_message(failure_document(exc)))
        except Exception:
            # Internal faults: the details go to the enclave's own log only; the
            # message crossing the boundary is fixed text.
            traceback.print_exc(file=sys.stderr)
            write_frame(
                out_fd,
                FAILURE,
                pack_message(
                    {
                        "error": "EnclaveError",
                        "message": "internal enclave error",
                        "reason_class": None,
                    }
                ),
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="chiron-enclave")
    parser.add_argument("--role", choices=ROLES, required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--platform", default="sim")
    # A training enclave started for a job about to arrive (the owner's own machine
    # starts one as its command begins): its sandbox starts with the process.
    parser.add_argument("--sandbox-at-start", action="store_true")
    options = parser.parse_args(argv)
    # Not dumpable: /proc/<pid>/fd, mem and environ of this process open only to a
    # process with CAP_SYS_PTRACE. The shared data file the recipe reads the decrypted
    # records from is a memfd of this process; same-user processes must not reach it.
    _linux.prctl(_linux.PR_SET_DUMPABLE, 0)
    # Keep the protocol streams private: nothing else in this process may write to
    # fd 1 by accident (a stray print would corrupt the framing).
    in_fd = os.dup(0)
    out_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    context = EnclaveContext.create(
        role=options.role,
        state_dir=options.state_dir,
        platform_name=options.platform,
        sandbox_at_start=options.sandbox_at_start,
    )
    try:
        serve(context, in_fd, out_fd)
    finally:
        context.close()


if __name__ == "__main__":
    main()
