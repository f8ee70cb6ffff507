"""The enclave boundary: every call the host may make into an enclave, and nothing else.

Like an SGX EDL file, this module is the complete list of entry points (`CALLS`) and the
one untrusted-side proxy (`EnclaveProcess`) that host and client code use to reach an
enclave. Arguments and results cross as framed messages on the enclave process's stdin
and stdout; the enclave validates every argument itself, because whoever runs the
proxy (the provider's host) is an adversary.

Message frames (core.framing), each carrying one JSON document whose byte strings
travel raw behind it (`pack_message`; 200 KiB of query records would otherwise cost
more in base64 and JSON escaping than the enclave's own work on them):

    payload     JSON length (4, big-endian) ‖ JSON (UTF-8) ‖ byte strings, in order
    in the JSON each byte string is {"$raw": length}: the next `length` bytes after the
                JSON, in the order the document lists them; every byte is used once

Where messages travel as JSON alone (the REST API, a node agent's relay store), byte
strings are {"$bytes": base64} instead (`encode_message`). The frames:

    host → enclave  REQUEST  {"call": name, "args": {...}}
    enclave → host  EVENT    {"event": name, ...}      zero or more, e.g. progress
    enclave → host  RESULT   {...}                      the call's result
    enclave → host  FAILURE  {"error": class, "message": str, "reason_class": str|null}
"""

from __future__ import annotations

import json
import os
import select
import struct
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from chiron.core.contract import CALLS_BY_ROLE
from chiron.core.encoding import b64decode, b64encode
from chiron.core.errors import (
    AttestationError,
    ChironError,
    EnclaveError,
    InputError,
    IntegrityError,
    JobFailed,
    PeerFailure,
)
from chiron.core.framing import FramingError, read_frame, widen_pipe, write_frame
from chiron.core.roles import ROLES

# The complete list of calls into an enclave, by role, and each call's argument and
# result types: chiron.core.contract. `enclave.main` refuses anything not listed there
# for its role.
CALLS: Mapping[str, tuple[str, ...]] = {
    role.value: tuple(call.value for call in calls) for role, calls in CALLS_BY_ROLE.items()
}

REQUEST, EVENT, RESULT, FAILURE = 1, 2, 3, 4
MAX_MESSAGE_BYTES = 512 * 1024 * 1024

# Errors that may cross the boundary by class name; anything else becomes EnclaveError.
_ERROR_CLASSES: dict[str, type[ChironError]] = {
    cls.__name__: cls
    for cls in (
        ChironError,
        EnclaveError,
        InputError,
        IntegrityError,
        AttestationError,
        PeerFailure,
    )
}


_JSON_LENGTH = struct.Struct(">I")


def pack_message(value: Any) -> bytes:
    """`value` in the pipe form: JSON, then its byte strings raw (module docstring)."""
    parts: list[bytes | bytearray | memoryview] = []

    def detach(data: bytes | bytearray | memoryview) -> dict[str, int]:
        parts.append(data)
        return {"$raw": memoryview(data).nbytes}

    document = json.dumps(_bytes_replaced(value, detach), separators=(",", ":")).encode("utf-8")
    return b"".join([_JSON_LENGTH.pack(len(document)), document, *parts])


def unpack_message(payload: bytes) -> Any:
    """A message in the pipe form; every length checked against what follows the JSON."""
    view = memoryview(payload)
    try:
        (length,) = _JSON_LENGTH.unpack_from(view)
        end = _JSON_LENGTH.size + length
        if end > len(view):
            raise ValueError("the JSON runs past the frame")
        document = json.loads(bytes(view[_JSON_LENGTH.size : end]).decode("utf-8"))
    except (struct.error, UnicodeDecodeError, ValueError):
        raise _malformed() from None
    position = end

    def attach(size: Any) -> bytes:
        nonlocal position
        if type(size) is not int or size < 0 or position + size > len(view):
            raise _malformed()
        position += size
        return bytes(view[position - size : position])

    value = _bytes_restored(document, "$raw", attach)
    if position != len(view):
        raise _malformed()
    return value


def encode_message(value: Any) -> bytes:
    """`value` as JSON alone, byte strings as {"$bytes": base64} (REST, relays)."""
    document = _bytes_replaced(value, lambda data: {"$bytes": b64encode(bytes(data))})
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def decode_message(payload: bytes) -> Any:
    try:
        return _bytes_restored(json.loads(payload.decode("utf-8")), "$bytes", b64decode)
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError):
        raise _malformed() from None


def _bytes_replaced(value: Any, replace: Callable[[bytes | bytearray | memoryview], Any]) -> Any:
    """`value` with every byte string in it replaced by `replace(byte string)`, in
    document order (dictionaries' keys as text)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return replace(value)
    if isinstance(value, dict):
        return {str(k): _bytes_replaced(v, replace) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_bytes_replaced(v, replace) for v in value]
    return value


def _bytes_restored(value: Any, marker: str, restore: Callable[[Any], bytes]) -> Any:
    """`value` with every {marker: x} in it replaced by `restore(x)`, in document order."""
    if isinstance(value, dict):
        if set(value) == {marker}:
            return restore(value[marker])
        return {k: _bytes_restored(v, marker, restore) for k, v in value.items()}
    if isinstance(value, list):
        return [_bytes_restored(v, marker, restore) for v in value]
    return value


def _malformed() -> EnclaveError:
    return EnclaveError("malformed message across the enclave boundary")


class EnclaveProcess:
    """Untrusted-side proxy for one enclave process running on this machine.

    On a TEE platform the same process would be started inside the enclave or
    confidential VM; the protocol does not change.
    """

    def __init__(self, process: subprocess.Popen[bytes], role: str) -> None:
        self._process = process
        self.role = role

    @classmethod
    def start(
        cls,
        *,
        role: str,
        state_dir: str | os.PathLike[str],
        platform: str = "sim",
        extra_args: tuple[str, ...] = (),
        log_path: str | os.PathLike[str] | None = None,
    ) -> EnclaveProcess:
        if role not in ROLES:
            raise ValueError(f"unknown enclave role {role!r}")
        Path(state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        # -I: an isolated interpreter. PYTHONPATH, PYTHON* variables, the user site and
        # the working directory are ignored, so nothing the host places outside the
        # measured installation is imported into the enclave. -B: write no bytecode.
        command = [
            sys.executable,
            "-I",
            "-B",
            "-m",
            "chiron.enclave.main",
            "--role",
            role,
            "--state-dir",
            str(state_dir),
            "--platform",
            platform,
            *extra_args,
        ]
        stderr: BinaryIO | int = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=_enclave_environment(),
                close_fds=True,
            )
        except OSError as exc:
            raise EnclaveError(f"could not start the enclave process: {exc.strerror}") from None
        finally:
            if not isinstance(stderr, int):
                stderr.close()
        assert process.stdin is not None and process.stdout is not None
        for pipe in (process.stdin, process.stdout):
            widen_pipe(pipe.fileno())
        return cls(process, role)

    @property
    def pid(self) -> int:
        return self._process.pid

    def call(
        self,
        name: str,
        args: Mapping[str, Any] | None = None,
        *,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = 60.0,
    ) -> dict[str, Any]:
        """Make one call and wait for its result, passing events to `on_event`.

        `timeout` bounds the silence between two messages, not the whole call, so a
        long training job that reports progress never times out.
        """
        if name not in CALLS[self.role]:
            raise EnclaveError(f"the {self.role} enclave has no call {name!r}")
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        try:
            write_frame(
                stdin.fileno(), REQUEST, pack_message({"call": name, "args": dict(args or {})})
            )
        except (BrokenPipeError, OSError):
            raise EnclaveError("the enclave process is not running") from None
        while True:
            if timeout is not None:
                ready, _, _ = select.select([stdout.fileno()], [], [], timeout)
                if not ready:
                    self.kill()
                    raise EnclaveError(f"the enclave did not answer within {timeout:g} s")
            try:
                frame = read_frame(stdout.fileno(), max_payload=MAX_MESSAGE_BYTES)
            except FramingError:
                frame = None
            if frame is None:
                self.kill()
                raise EnclaveError("the enclave process stopped unexpectedly")
            message = unpack_message(frame.payload)
            if frame.kind == EVENT:
                if on_event is not None:
                    on_event(message)
            elif frame.kind == RESULT:
                result: dict[str, Any] = message  # the enclave sends a result's to_wire() dict
                return result
            elif frame.kind == FAILURE:
                raise rebuild_error(message)
            else:
                self.kill()
                raise EnclaveError("the enclave sent an unknown message kind")

    def close(self, timeout: float = 10.0) -> None:
        """Ask the enclave to shut down; kill it if it does not."""
        if self._process.poll() is None:
            try:
                self.call("shutdown", timeout=timeout)
            except ChironError:
                pass
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                stream.close()

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> EnclaveProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def failure_document(error: ChironError) -> dict[str, Any]:
    """The FAILURE message for `error`; `rebuild_error` turns it back into an exception."""
    if isinstance(error, JobFailed):
        return {"error": "JobFailed", "message": str(error), "reason_class": error.reason_class}
    return {"error": type(error).__name__, "message": str(error), "reason_class": None}


def rebuild_error(message: dict[str, Any]) -> ChironError:
    """The exception a FAILURE message stands for (unknown classes become EnclaveError)."""
    text = str(message.get("message", "enclave call failed"))
    reason = message.get("reason_class")
    if reason:
        return JobFailed(str(reason), text)
    return _ERROR_CLASSES.get(str(message.get("error")), EnclaveError)(text)


def _enclave_environment() -> dict[str, str]:
    """A minimal environment: nothing of the caller's leaks in (proxies, tokens...).

    No PYTHON* variable is passed: the interpreter runs isolated (-I) and would ignore
    them anyway; what the enclave imports is decided by its installation alone.
    """
    keep = ("PATH", "LANG", "LC_ALL", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    return {k: os.environ[k] for k in keep if k in os.environ}
