"""What one running service is configured with: where state lives and how much runs at once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MAX_CHUNK_BYTES = 64 * 1024 * 1024
MAX_UPLOAD_BYTES = 64 * 1024**3
QUERY_SESSION_IDLE_SECONDS = 30 * 60.0


@dataclass(frozen=True)
class ServiceConfig:
    """Settings of one `chiron serve`.

    `state_dir` always holds the service's local, non-secret state (the token pepper,
    the operator token, enclave state, upload staging); `db_url` and `store_url` default
    to SQLite and a content-addressed folder inside it, and point elsewhere when several
    machines share one service.
    """

    state_dir: Path
    db_url: str | None = None
    store_url: str | None = None
    s3_endpoint: str | None = None
    concurrency: int = 1
    platform: str = "sim"
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    query_session_idle_seconds: float = QUERY_SESSION_IDLE_SECONDS

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.state_dir / 'chiron.db'}"

    @property
    def enclave_state_dir(self) -> Path:
        return self.state_dir / "enclave"

    @property
    def logs_dir(self) -> Path:
        """Each enclave process's stderr (the enclave's own log, never a party's secret)."""
        return self.state_dir / "logs"
