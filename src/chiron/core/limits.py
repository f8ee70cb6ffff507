"""Every limit that more than one party checks, defined once.

The owner's client, the service and the enclaves all validate the same values; each
takes its bounds from here, so a value one accepts is never refused by another for a
different reason.
"""

from __future__ import annotations

# A recipe file, as registered, signed and handed to a training enclave.
MAX_RECIPE_BYTES = 1024 * 1024
# The plan of a job (core.manifest).
MAX_EPOCHS = 1000
MAX_BATCH_SIZE = 65536
MAX_SEED = 2**63 - 1
MAX_WORKERS = 64
MAX_EXCHANGE_EVERY = 1_000_000
MAX_STALENESS = 1000
# A fixed-rate job's slot period, in milliseconds (an hour at most).
MAX_PERIOD_MS = 3_600_000
# Its defaults where the owner does not choose.
DEFAULT_EXCHANGE_EVERY = 10
# An HPKE-sealed 256-bit key, with room for the encapsulated key and the tag.
MAX_SEALED_KEY_BYTES = 4096
# An enclave's evidence document, as attested, relayed and verified.
MAX_EVIDENCE_BYTES = 256 * 1024
# An Ed25519 signature.
MAX_SIGNATURE_BYTES = 64
# A policy file (TOML): the owner's verification policy, the provider's release policy.
MAX_POLICY_BYTES = 64 * 1024
# A simulation root document (sim-platform/root.pub), wherever it is read.
MAX_ROOT_DOCUMENT_BYTES = 16 * 1024

# How long a host, or a relay standing in for one, waits for an enclave's next word on an
# ordinary call (training calls report progress and have their own, longer bound).
CALL_SILENCE_SECONDS = 600.0
# ... and for a training or exchange call, which speaks at every step but may wait long
# for a slow first epoch or a group's slowest member.
TRAIN_SILENCE_SECONDS = 6 * 3600.0
