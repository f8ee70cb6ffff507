"""The query channel: one sealed, signed opening, then AES-256-GCM per query and answer.

Shared by the owner's client (which opens channels, seals queries and opens answers)
and the query enclave (which accepts an opening, opens queries and seals answers), so
both derive the exact same keys, nonces and associated data.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from chiron.core.crypto import KEY_BYTES, NONCE_BYTES, aead_decrypt, aead_encrypt, derive_key
from chiron.core.encoding import canonical_json
from chiron.core.errors import InputError, IntegrityError

# -- the query channel -------------------------------------------------------------------
#
# The owner's client opens a channel to an attested query enclave once: it draws a fresh
# 32-byte secret, seals it to the enclave's attested key (HPKE, purpose
# `query-channel-secret`, context {model_id, channel_id}) and signs the opening with the
# key the model file names as the owner's. Both ends then derive two AES-256-GCM keys
# from the secret, one per direction, and every query and answer travels under them,
# with the query's sequence number as the nonce and in the associated data:
#
# - only the owner and that one enclave know the keys, so a sealed query is the owner's
#   (the host cannot ask) and a sealed answer is the enclave's, for exactly that query
#   of that channel, with exactly that budget left (the host cannot forge, swap or
#   rewrite one);
# - each direction has its own key and a sequence number is used once per channel, so
#   no (key, nonce) pair ever repeats, and the enclave answers only sequence numbers
#   above the last one it accepted: a replayed or reordered query is refused unopened.
#
# So the asymmetric work (an HPKE seal and open, a signature and its check) is done once
# per channel instead of four times per query: docs/query.md gives the whole argument.

CHANNEL_SECRET_BYTES = KEY_BYTES
# The highest sequence number a channel accepts (nonces are its 8 bytes, zero-padded).
MAX_SEQUENCE = 2**64 - 2
_CHANNEL_LABEL = b"chiron/query-channel/v1\x00"
_SEQUENCE = struct.Struct(">Q")
_BUDGET = struct.Struct(">?q")  # has a budget, budget left
_NONCE_PAD = bytes(NONCE_BYTES - _SEQUENCE.size)


def channel_secret_context(model_id: str, channel_id: str) -> dict[str, str]:
    """The sealing context of a channel's secret, sealed by the owner to the enclave."""
    return {"model_id": model_id, "channel_id": channel_id}


def channel_opening_message(model_id: str, channel_id: str, sealed_secret: bytes) -> bytes:
    """What the owner signs to open one query channel to the enclave its secret is sealed to."""
    return canonical_json(
        {
            "model_id": model_id,
            "channel_id": channel_id,
            "secret_sha256": hashlib.sha256(sealed_secret).hexdigest(),
        }
    )


@dataclass(frozen=True)
class ChannelKeys:
    """A query channel's two keys, as the owner's client and the enclave both derive them."""

    model_id: str
    channel_id: str
    inputs_key: bytes = field(repr=False)
    answers_key: bytes = field(repr=False)

    @classmethod
    def derive(cls, secret: bytes, model_id: str, channel_id: str) -> ChannelKeys:
        if len(secret) != CHANNEL_SECRET_BYTES:
            raise IntegrityError("a query channel's secret is 32 bytes")

        def key(direction: bytes) -> bytes:
            info = _CHANNEL_LABEL + direction + b"\x00" + bytes.fromhex(model_id)
            return derive_key(secret, salt=bytes.fromhex(channel_id), info=info)

        return cls(model_id, channel_id, key(b"inputs"), key(b"answers"))

    def _associated(self, direction: bytes, sequence: int) -> bytes:
        return (
            _CHANNEL_LABEL
            + direction
            + b"\x00"
            + bytes.fromhex(self.model_id)
            + bytes.fromhex(self.channel_id)
            + _SEQUENCE.pack(sequence)
        )

    def seal_inputs(self, sequence: int, plaintext: bytes) -> bytes:
        return aead_encrypt(
            self.inputs_key, _nonce(sequence), plaintext, self._associated(b"inputs", sequence)
        )

    def open_inputs(self, sequence: int, sealed: bytes) -> bytes:
        return aead_decrypt(
            self.inputs_key,
            _nonce(sequence),
            sealed,
            self._associated(b"inputs", sequence),
            what="the query (not the owner's, for this channel and sequence number)",
        )

    def seal_answers(self, sequence: int, budget_left: int | None, plaintext: bytes) -> bytes:
        associated = self._associated(b"answers", sequence) + _budget(budget_left)
        return aead_encrypt(self.answers_key, _nonce(sequence), plaintext, associated)

    def open_answers(self, sequence: int, budget_left: int | None, sealed: bytes) -> bytes:
        return aead_decrypt(
            self.answers_key,
            _nonce(sequence),
            sealed,
            self._associated(b"answers", sequence) + _budget(budget_left),
            what="the answers (not the attested enclave's, for this query and budget)",
        )


def _nonce(sequence: int) -> bytes:
    if not 0 <= sequence <= MAX_SEQUENCE:
        raise InputError(f"a query channel's sequence number is 0 to {MAX_SEQUENCE}")
    return _NONCE_PAD + _SEQUENCE.pack(sequence)


def _budget(budget_left: int | None) -> bytes:
    """The budget left as bound into an answer: whether there is one, then its value.

    "No budget" and every number are distinct bindings, so a host cannot turn one into
    the other; a number no enclave sends (negative, beyond 64 bits) opens nothing.
    """
    if budget_left is None:
        return _BUDGET.pack(False, 0)
    if isinstance(budget_left, bool) or not 0 <= budget_left < 2**63:
        raise IntegrityError("the answers' budget left is out of range")
    return _BUDGET.pack(True, budget_left)
