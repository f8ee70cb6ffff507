"""The provider's key-release agent (`chiron keys serve`): its share, only to attested enclaves.

It runs on the provider's own machine with the provider's private key, and answers the
protocol of `core.key_release` over HTTP (loopback by default). For each release it
verifies the query enclave's evidence over its own single-use challenge against the
provider's release policy (`core.release_policy`), reports every failed check, and
only then opens the model's provider share and seals it to the key that evidence
authenticated. The share never leaves in any other form, is never written anywhere,
and never appears in a log line or an error.

State (a folder, `--state`, default `$CHIRON_HOME/key-release`), read on every request
so that `chiron keys revoke` acts at once on a running agent:

    revoked/<model id>        one file per revoked model (creating it is atomic)
    releases.json             releases per owner fingerprint, and each model's owner
    sim-roots/<fp>.json       simulation roots this agent trusts (`keys trust-sim-root`)

Simulated evidence: the agent has no vendor root to check it against. With
`allow_simulation = true` in its policy it trusts only the simulation roots pinned in
its state, never one presented with a request: an agent that believed any root would
hand the share to anyone who made up evidence for a key of their own. A pinned root
is no protection either against whoever holds that root's private key (the service's
host, or on `--local` the owner's machine): simulation protects nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from chiron.core import modelfile, purposes
from chiron.core.attestation import SimRoot, verify_evidence
from chiron.core.attestation.report import CheckResult, Claims
from chiron.core.crypto import verify_signature
from chiron.core.errors import AttestationError, InputError, IntegrityError
from chiron.core.fileio import atomic_write, read_input_file
from chiron.core.identifiers import check_model_id
from chiron.core.key_release import (
    CHALLENGE_BYTES,
    CHALLENGE_PATH,
    DEFAULT_CHALLENGE_SECONDS,
    INFO_PATH,
    MAX_REQUEST_BYTES,
    PARTY,
    RELEASE_PATH,
    AgentInfo,
    Challenge,
    ReleaseGranted,
    ReleaseRefusal,
    ReleaseRequest,
    open_escrowed_share,
    seal_share_to_enclave,
)
from chiron.core.keys import Identity, PublicIdentity
from chiron.core.limits import MAX_ROOT_DOCUMENT_BYTES
from chiron.core.query_protocol import query_policy_sha256
from chiron.core.release_policy import ReleaseFacts, ReleasePolicy

REVOKED_DIRECTORY = "revoked"
SIM_ROOTS_DIRECTORY = "sim-roots"
RELEASES_FILE = "releases.json"
LOCK_FILE = ".lock"
# Outstanding challenges are kept in memory; more than this many unanswered ones means
# someone is flooding the agent, and the oldest are dropped.
MAX_OUTSTANDING_CHALLENGES = 4096
_MAX_STATE_FILE = 16 * 1024 * 1024

Log = Callable[[str], None]


def _stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class AgentState:
    """The agent's folder: revocations, release counts, pinned simulation roots."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def revoke(self, model_id: str) -> bool:
        """Revoke a model; False if it already was."""
        model_id = check_model_id(model_id)
        folder = self.directory / REVOKED_DIRECTORY
        folder.mkdir(exist_ok=True, mode=0o700)
        path = folder / model_id
        if path.exists():
            return False
        atomic_write(path, (json.dumps({"revoked_at": int(time.time())}) + "\n").encode())
        return True

    def is_revoked(self, model_id: str) -> bool:
        return (self.directory / REVOKED_DIRECTORY / check_model_id(model_id)).exists()

    def trust_sim_root(self, root: SimRoot) -> Path:
        folder = self.directory / SIM_ROOTS_DIRECTORY
        folder.mkdir(exist_ok=True, mode=0o700)
        path = folder / f"{root.fingerprint[:32]}.json"
        atomic_write(path, (json.dumps(root.to_document(), indent=2) + "\n").encode())
        return path

    def sim_roots(self) -> tuple[SimRoot, ...]:
        folder = self.directory / SIM_ROOTS_DIRECTORY
        if not folder.is_dir():
            return ()
        roots = []
        for path in sorted(folder.glob("*.json")):
            raw = read_input_file(path, what="simulation root", limit=MAX_ROOT_DOCUMENT_BYTES)
            try:
                document = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise AttestationError(f"{path} is not a valid simulation root") from None
            roots.append(SimRoot.from_document(document, source=str(path)))
        return tuple(roots)

    @contextmanager
    def releases(self) -> Iterator[dict[str, dict[str, Any]]]:
        """The release record, locked across processes; written back if the block ends."""
        with open(self.directory / LOCK_FILE, "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = self.directory / RELEASES_FILE
            record: dict[str, dict[str, Any]] = {"owners": {}, "models": {}}
            if path.exists():
                raw = read_input_file(path, what="release record", limit=_MAX_STATE_FILE)
                try:
                    loaded = json.loads(raw.decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError):
                    raise InputError(f"{path} is not a valid release record") from None
                if not isinstance(loaded, dict):
                    raise InputError(f"{path} is not a valid release record")
                record.update({k: dict(loaded.get(k, {})) for k in ("owners", "models")})
            before = json.dumps(record, sort_keys=True)
            yield record
            if json.dumps(record, sort_keys=True) != before:
                atomic_write(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


@dataclass
class _Outstanding:
    expires_at: float


class KeyReleaseAgent:
    """The release decision, independent of HTTP (the server below only carries it)."""

    def __init__(
        self,
        identity: Identity,
        policy: ReleasePolicy,
        state: AgentState,
        *,
        challenge_seconds: int = DEFAULT_CHALLENGE_SECONDS,
        clock: Callable[[], float] = time.time,
        log: Log = _stderr_log,
    ) -> None:
        self._identity = identity
        self.policy = policy
        self.state = state
        self._challenge_seconds = challenge_seconds
        self._clock = clock
        self._log = log
        self._lock = threading.Lock()
        self._challenges: dict[bytes, _Outstanding] = {}

    @property
    def info(self) -> AgentInfo:
        return AgentInfo(self._identity.public, self._challenge_seconds)

    def challenge(self) -> Challenge:
        now = self._clock()
        nonce = os.urandom(CHALLENGE_BYTES)
        expires_at = now + self._challenge_seconds
        with self._lock:
            for key in [k for k, v in self._challenges.items() if v.expires_at < now]:
                del self._challenges[key]
            while len(self._challenges) >= MAX_OUTSTANDING_CHALLENGES:
                del self._challenges[next(iter(self._challenges))]
            self._challenges[nonce] = _Outstanding(expires_at)
        return Challenge(nonce, int(expires_at))

    def _consume_challenge(self, nonce: bytes) -> str | None:
        """Remove the challenge (used once, whatever happens next); what is wrong with it."""
        with self._lock:
            outstanding = self._challenges.pop(nonce, None)
        if outstanding is None:
            return "not a challenge of this agent, or already used (a replay)"
        if self._clock() > outstanding.expires_at:
            return f"the challenge expired ({self._challenge_seconds} s after it was issued)"
        return None

    def release(self, request: ReleaseRequest) -> ReleaseGranted | ReleaseRefusal:
        """Verify everything, report every failure; the sealed share only if all pass."""
        header = request.header
        challenge_problem = self._consume_challenge(request.challenge)
        verification, claims, enclave = self._verify(request)
        share, escrow_problem = self._open_share(header)
        owner_signed = self._owner_signed(request)
        owner = header.owner.fingerprint
        with self.state.releases() as record:
            first_owner = record["models"].get(header.model_id)
            facts = ReleaseFacts(
                claims=claims,
                model_id=header.model_id,
                escrow_problem=escrow_problem,
                revoked=self.state.is_revoked(header.model_id),
                query_policy_sha256=query_policy_sha256(header.query_policy),
                owner_fingerprint=owner,
                owner_signed=owner_signed,
                releases_to_owner=int(record["owners"].get(owner, 0)),
                owner_conflict=first_owner not in (None, owner),
                challenge_problem=challenge_problem,
                now=int(self._clock()),
            )
            checks = (*verification, *self.policy.rules().evaluate(facts))
            failures = tuple(check for check in checks if not check.passed)
            if failures or claims is None or enclave is None or share is None:
                self._log(
                    f"refused model {header.model_id} (owner {owner[:16]}): "
                    + ", ".join(check.name for check in failures)
                )
                return ReleaseRefusal(failures or (_authenticity_failure(),))
            # Counted before the share leaves: a crash after this line costs the owner
            # one release, never gives one away uncounted.
            record["owners"][owner] = facts.releases_to_owner + 1
            record["models"][header.model_id] = owner
        sealed = seal_share_to_enclave(enclave, share, header.model_id, PARTY)
        self._log(
            f"released model {header.model_id} (owner {owner[:16]}) to query enclave "
            f"{enclave.fingerprint[:16]}"
        )
        return ReleaseGranted(header.model_id, sealed)

    def _verify(
        self, request: ReleaseRequest
    ) -> tuple[tuple[CheckResult, ...], Claims | None, PublicIdentity | None]:
        """Every attestation check, the claims, and the enclave key the evidence authenticates."""
        policy = self.policy.attestation_policy()
        # Only roots pinned in the agent's state, never one the request brings along.
        roots = self.state.sim_roots() if policy.UNSAFE_allow_simulation else ()
        try:
            report = verify_evidence(
                request.evidence, policy, nonce=request.challenge, sim_roots=roots
            )
        except AttestationError as exc:
            return (CheckResult("evidence", False, str(exc)),), None, None
        return report.checks, report.claims, report.identity if report.ok else None

    def _open_share(self, header: modelfile.ModelHeader) -> tuple[bytes | None, str | None]:
        ours = self._identity.public
        if header.provider != ours:
            return None, (
                f"the model is escrowed to provider {header.provider.fingerprint[:16]}…, "
                f"not to this agent's key {ours.fingerprint[:16]}…"
            )
        try:
            share = open_escrowed_share(self._identity, header, PARTY)
        except IntegrityError:
            return None, "the provider share in this header does not open with this agent's key"
        if modelfile.share_digest(share) != header.share_sha256(PARTY):
            return None, "the provider share does not match the model's share digest"
        return share, None

    def _owner_signed(self, request: ReleaseRequest) -> bool:
        message = ReleaseRequest.signed_message(
            request.challenge, request.header, request.evidence, self._identity.public
        )
        try:
            verify_signature(
                request.header.owner.signing_key,
                request.owner_signature,
                message,
                purpose=purposes.KEY_RELEASE_REQUEST,
            )
        except IntegrityError:
            return False
        return True


def _authenticity_failure() -> CheckResult:
    return CheckResult("evidence", False, "the evidence does not authenticate an enclave key")


def _handler(agent: KeyReleaseAgent) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "chiron-key-release"
        sys_version = ""
        # A client that stops sending mid-request does not hold a thread forever.
        timeout = 30

        def log_message(self, format: str, *args: Any) -> None:
            # Decisions are logged by the agent itself; the request line adds nothing.
            return

        def _send(self, status: int, document: dict[str, Any]) -> None:
            body = json.dumps(document).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == INFO_PATH:
                self._send(200, agent.info.to_wire())
            else:
                self._send(404, {"error": f"no such endpoint {self.path[:80]}"})

        def do_POST(self) -> None:
            try:
                document = self._body()
                if self.path == CHALLENGE_PATH:
                    self._send(200, agent.challenge().to_wire())
                elif self.path == RELEASE_PATH:
                    outcome = agent.release(ReleaseRequest.from_wire(document))
                    status = 200 if isinstance(outcome, ReleaseGranted) else 403
                    self._send(status, outcome.to_wire())
                else:
                    self._send(404, {"error": f"no such endpoint {self.path[:80]}"})
            except InputError as exc:
                self._send(400, {"error": str(exc)})
            except Exception as exc:  # the agent keeps serving
                # The type only: a message could carry anything a request made it say.
                agent._log(f"internal error: {type(exc).__name__}")
                self._send(500, {"error": f"the key-release agent failed ({type(exc).__name__})"})

        def _body(self) -> Any:
            try:
                length = int(self.headers.get("Content-Length", "0"))
            except ValueError:
                raise InputError("malformed request: bad Content-Length") from None
            if not 0 <= length <= MAX_REQUEST_BYTES:
                raise InputError(f"request larger than {MAX_REQUEST_BYTES} bytes")
            raw = self.rfile.read(length) if length else b"{}"
            try:
                return json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise InputError("malformed request: not JSON") from None

    return Handler


class AgentServer(ThreadingHTTPServer):
    daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in str(host) else host
        return f"http://{shown}:{port}"


def make_server(agent: KeyReleaseAgent, host: str = "127.0.0.1", port: int = 0) -> AgentServer:
    """An HTTP server for `agent` bound to host:port (port 0: a free one)."""
    return AgentServer((host, port), _handler(agent))


@contextmanager
def running_agent(agent: KeyReleaseAgent, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `agent` in a background thread; yields its URL (for tests and benchmarks)."""
    server = make_server(agent, host, port)
    thread = threading.Thread(target=server.serve_forever, name="key-release-agent", daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
