"""The client of a Chiron service (`--url`).

`transport`       HTTP plumbing: requests, the error mapping, downloads, retries.
`service_client`  `ServiceClient`: every endpoint of the REST API (docs/api.md).
`progress`        the terminal's progress bar for uploads.
`sessions`        `RemoteJobSession`, `RemoteQuerySession`: a service's enclaves
                  behind the same interface as a local enclave process.
"""

from __future__ import annotations

from chiron.client.remote.file_digests import file_sha256
from chiron.client.remote.service_client import ServiceClient
from chiron.client.remote.sessions import RemoteJobSession, RemoteQuerySession

__all__ = ["RemoteJobSession", "RemoteQuerySession", "ServiceClient", "file_sha256"]
