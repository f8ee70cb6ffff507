"""The REST API (FastAPI) of the service.

`schemas` (request and response bodies), `deps` (what routes take from a request),
`routes` and `enclave_routes` (the handlers), `app` (`create_app` and the error shape).
"""

from __future__ import annotations

from chiron.host.api.app import create_app

__all__ = ["create_app"]
