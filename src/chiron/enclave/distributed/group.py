"""The job's transport: torch.distributed's TCPStore for rendezvous, gloo for the exchange.

Both are untrusted: the host runs the network, and the store may be the one `torchrun`'s
agent hosts. Everything that goes through them is either public (nonces, evidence) or
sealed and authenticated (`messages`). Every wait is bounded, so a member that dies or
stops answering makes the others fail with a reason instead of hanging.

This is the only module of the enclave that imports torch; it is imported only when a
distributed job starts.
"""

from __future__ import annotations

import contextlib
import datetime
import socket
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist

from chiron.core.errors import EnclaveError, PeerFailure
from chiron.enclave.distributed.messages import (
    WireTrace,
    header_kind,
    header_sender,
    member_name,
)
from chiron.enclave.distributed.settings import Rendezvous

_LISTEN_BACKLOG = 128


@contextlib.contextmanager
def rendezvous_store(rendezvous: Rendezvous, *, rank: int, timeout: float) -> Iterator[dist.Store]:
    """The store at the rendezvous; the parameter server creates it when asked to host it.

    A hosted store listens on the rendezvous host only (127.0.0.1 for a job on one
    machine), on the given port or, for port 0, on a free one (see `store_port`).
    """
    wait = datetime.timedelta(seconds=timeout)
    try:
        if rendezvous.host_store and rank == 0:
            listener = socket.create_server(
                (rendezvous.host, rendezvous.port), backlog=_LISTEN_BACKLOG
            )
            with listener:
                store = dist.TCPStore(
                    rendezvous.host,
                    listener.getsockname()[1],
                    is_master=True,
                    wait_for_workers=False,
                    master_listen_fd=listener.detach(),
                    timeout=wait,
                )
        else:
            store = dist.TCPStore(rendezvous.host, rendezvous.port, is_master=False, timeout=wait)
    except (OSError, RuntimeError) as exc:
        raise EnclaveError(
            f"cannot reach the rendezvous at {rendezvous.host}:{rendezvous.port} ({_short(exc)})"
        ) from None
    try:
        yield store
    finally:
        del store


def store_port(store: dist.Store) -> int:
    return int(store.port)  # type: ignore[attr-defined]


class Board:
    """One run's namespace in the store: members post and fetch public or sealed values.

    Named by the job and the manifest of this run: a job resumed with new enclaves signs
    a new manifest, so a store that outlived the last run (a node agent's) holds nothing
    this run could take for its own.
    """

    def __init__(self, store: dist.Store, *, job_id: str, manifest: str, trace: WireTrace) -> None:
        self._store = dist.PrefixStore(f"chiron/job/{job_id}/{manifest}/", store)
        self._trace = trace

    def post(self, key: str, value: bytes | bytearray, *, to: int, kind: str) -> None:
        self._store.set(key, bytes(value))  # type: ignore[arg-type]  # bytes work; stubs say str
        self._trace.record("send", to, kind, len(value))

    def fetch(self, key: str, *, sender: int, kind: str, timeout: float) -> bytes:
        self._store.set_timeout(datetime.timedelta(seconds=timeout))
        try:
            value = bytes(self._store.get(key))
        except RuntimeError:
            raise PeerFailure(
                f"{member_name(sender)} did not answer within {timeout:g} s ({kind})"
            ) from None
        self._trace.record("receive", sender, kind, len(value))
        return value

    def prefixed(self, name: str) -> dist.Store:
        return dist.PrefixStore(name, self._store)


class Transport:
    """Fixed-size messages between the members over gloo; every wait bounded."""

    def __init__(
        self,
        board: Board,
        *,
        rank: int,
        world_size: int,
        address: str | None,
        timeout: float,
        trace: WireTrace,
    ) -> None:
        # Gloo's options, its devices and its point-to-point calls are not in torch's
        # type stubs; they are the API torch.distributed itself uses for gloo.
        options = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
        options._timeout = datetime.timedelta(seconds=timeout)
        device = (
            dist.ProcessGroupGloo.create_device(hostname=address)
            if address
            else dist.ProcessGroupGloo.create_default_device()
        )
        options._devices = [device]
        try:
            self._group: dist.ProcessGroupGloo | None = dist.ProcessGroupGloo(
                board.prefixed("gloo/"), rank, world_size, options
            )
        except RuntimeError as exc:
            raise PeerFailure(f"the group could not connect ({_short(exc)})") from None
        self._timeout = datetime.timedelta(seconds=timeout)
        self._trace = trace

    def send(self, peer: int, message: bytearray) -> None:
        for _ in self.send_each([(peer, message)]):
            pass

    def receive(self, peer: int, nbytes: int) -> bytearray:
        for _, message in self.receive_each([peer], nbytes):
            return message
        raise AssertionError("receive_each yields one message per peer")

    def receive_each(self, peers: Sequence[int], nbytes: int) -> Iterator[tuple[int, bytearray]]:
        """A message from each of `peers`, in that order; every receive is posted first,
        so later messages arrive while the caller handles the earlier ones. gloo writes
        into the returned buffers itself: no copy on the way in."""
        posted = []
        for peer in peers:
            message = bytearray(nbytes)
            buffer = torch.frombuffer(message, dtype=torch.uint8)
            posted.append((peer, message, self._open().recv([buffer], peer, 0)))  # type: ignore[attr-defined]
        for peer, message, work in posted:
            self._wait(work, peer, "receive from")
            self._trace.record("receive", peer, header_kind(message), nbytes)
            yield peer, message

    def send_each(self, messages: Sequence[tuple[int, bytearray]]) -> Iterator[int]:
        """Send every message at once; yield each peer as its message has gone, in order.
        gloo sends from each message's own buffer (no copy; it is ours until the wait)."""
        posted = []
        for peer, message in messages:
            buffer = torch.frombuffer(message, dtype=torch.uint8)
            posted.append((peer, message, self._open().send([buffer], peer, 0)))  # type: ignore[attr-defined]
        for peer, message, work in posted:
            self._wait(work, peer, "send to")
            self._trace.record("send", peer, header_kind(message), len(message))
            yield peer

    def receive_any(self, nbytes: int) -> bytearray:
        """The next message from any member; its authenticated header names the sender."""
        message = bytearray(nbytes)
        buffer = torch.frombuffer(message, dtype=torch.uint8)
        self._wait(self._open().recv_anysource([buffer], 0), None, "receive from")  # type: ignore[attr-defined]
        self._trace.record("receive", header_sender(message), header_kind(message), nbytes)
        return message

    def _open(self) -> dist.ProcessGroupGloo:
        if self._group is None:
            raise EnclaveError("the group's connections are closed")
        return self._group

    def close(self) -> None:
        """Close every connection now, so peers still waiting fail at once.

        Only dropping the process group closes gloo's sockets (shutdown and abort leave
        them open until the process exits, and this process lives on after the call).
        """
        if self._group is not None:
            with contextlib.suppress(RuntimeError):
                self._group.shutdown()
            self._group = None

    def _wait(self, work: dist.Work, peer: int | None, action: str) -> None:
        try:
            work.wait(self._timeout)
        except RuntimeError as exc:
            who = "the group" if peer is None else member_name(peer)
            raise PeerFailure(f"could not {action} {who}: {_short(exc)}") from None


def _short(error: BaseException) -> str:
    """A transport error in a few words (gloo's messages carry source paths and addresses)."""
    text = str(error).lower()
    if "closed" in text or "reset" in text or "broken pipe" in text:
        return "the connection closed: it left the job"
    if "timed out" in text or "timeout" in text:
        return "it stopped answering (timed out)"
    if "refused" in text:
        return "connection refused"
    return "transport error"
