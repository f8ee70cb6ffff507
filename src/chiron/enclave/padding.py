"""Fixed-size JSON for what the enclave seals: sizes that depend on public facts only.

A sealed document's length shows through its ciphertext. The owner's training report
and checkpoint metadata carry accuracies a recipe can steer, so they are padded to the
length of the same document with every data-dependent figure at its widest.
"""

from __future__ import annotations

from typing import Any

from chiron.core.errors import IntegrityError
from chiron.core.recipe_protocol import encode_json

# The longest JSON text of any float (sign, 17 significant digits, 3-digit exponent).
# Every accuracy in the owner's report and in checkpoint metadata is padded as if it took
# this many characters, so the digits a figure happens to need (which a recipe steers
# through its predictions) never show in the size of what is sealed.
WIDEST_FLOAT = -1.2345678901234567e300


def padded_json(value: Any, widest: Any) -> bytes:
    """`value` as JSON padded with spaces (still valid JSON) to the length of `widest`.

    `widest` is the same document with every data-dependent figure at its longest, built
    from public facts only (epochs, steps, classes, held-out records), so the padded
    size is a function of those facts alone.
    """
    data, size = encode_json(value), len(encode_json(widest))
    if len(data) > size:
        raise IntegrityError("a sealed document is larger than its fixed size")
    return data + b" " * (size - len(data))
