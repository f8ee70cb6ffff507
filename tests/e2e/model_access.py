"""Test-only: open an escrowed model with BOTH parties' private keys.

No real party can do this (each holds one share); tests do it to compare weights.
"""

from __future__ import annotations

from pathlib import Path

from chiron.core import modelfile, purposes
from chiron.core.crypto import open_sealed
from chiron.core.keys import load_identity


def open_model(model: Path, owner_key: Path, provider_key: Path) -> modelfile.ModelPayload:
    data = model.read_bytes()
    header = modelfile.read_model_header(data)
    shares = []
    for party, key in (("owner", owner_key), ("provider", provider_key)):
        shares.append(
            open_sealed(
                load_identity(key).hpke_key,
                header.share_for(party),
                purpose=purposes.MODEL_SHARE_ESCROW,
                context={"model_id": header.model_id, "party": party},
            )
        )
    model_key = bytes(a ^ b for a, b in zip(*shares, strict=True))
    return modelfile.decrypt_model(data, model_key)[1]
