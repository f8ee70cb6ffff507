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
# An HPKE-sealed 256-bit key, with room for the encapsulated key and the tag.
MAX_SEALED_KEY_BYTES = 4096
