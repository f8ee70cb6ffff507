"""The REST API's request and response bodies (pydantic models).

Binary values travel as base64 strings; every size limit here is the limit the service
checks again when it acts, taken from where that limit is defined.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from chiron.core.limits import MAX_RECIPE_BYTES, MAX_SEALED_KEY_BYTES
from chiron.core.manifest import MAX_MANIFEST_BYTES
from chiron.core.recipe_statement import MAX_STATEMENT_BYTES
from chiron.host.job_records import RESULT_NAMES
from chiron.host.recipes import MAX_DESCRIPTION_CHARS

HEX64 = r"^[0-9a-f]{64}$"
ResultName = Literal["model", "receipt", "owner_report", "owner_report_signature"]
assert set(get_args(ResultName)) == set(RESULT_NAMES)


def _b64_chars(limit: int) -> int:
    """The longest base64 text of at most `limit` bytes."""
    return 4 * -(-limit // 3)


class ErrorOut(BaseModel):
    error: str
    message: str
    reason_class: str | None = None


class HealthOut(BaseModel):
    status: Literal["ok"]
    version: str
    platform: str


class AccountOut(BaseModel):
    name: str
    role: str


class EvidenceOut(BaseModel):
    evidence: str = Field(description="the enclave's evidence, base64")


class SimRootOut(BaseModel):
    type: str
    version: int
    key: str = Field(description="Ed25519 public key, base64")
    fingerprint: str


class RecipeIn(BaseModel):
    # No field may name a provider: only the signed statement does.
    model_config = ConfigDict(extra="forbid")

    name: str = Field(max_length=64, description="lowercase letters, digits, '_' or '-'")
    description: str = Field(default="", max_length=MAX_DESCRIPTION_CHARS)
    task: str = Field(default="classification", max_length=64)
    input_schema: dict[str, Any] | None = Field(
        default=None, description="DatasetSchema the recipe takes (input_shape, dtype, ...)"
    )
    source: str = Field(
        max_length=_b64_chars(MAX_RECIPE_BYTES),
        description="the recipe file, base64 (stays on the host)",
    )
    statement: str = Field(
        max_length=_b64_chars(MAX_STATEMENT_BYTES),
        description="the provider's signed recipe statement over `source`, base64",
    )


class RecipeOut(BaseModel):
    name: str
    description: str
    task: str
    input_schema: dict[str, Any] | None
    source_sha256: str
    statement: str | None = Field(
        description="the provider's signed statement, base64; verify it before believing it"
    )
    recipe_statement_sha256: str | None = Field(
        description="the statement's digest, as a job manifest names it"
    )
    version: str | None = Field(description="the version the provider signed")
    provider_public: str | None = Field(
        description="the 64-byte public identity the statement names, base64"
    )
    provider_fingerprint: str | None
    created: int


class UploadIn(BaseModel):
    kind: Literal["dataset", "model"]
    size: int = Field(gt=0, le=2**53)
    sha256: str = Field(pattern=HEX64, description="SHA-256 of the whole file, hex")


class UploadOut(BaseModel):
    id: str
    kind: str
    size: int
    sha256: str
    offset: int = Field(description="bytes the service holds: where to continue")
    chunk_bytes: int = Field(description="largest chunk the service accepts")
    complete: bool
    result_id: str | None = Field(description="the dataset or model made from it")


class DatasetOut(BaseModel):
    id: str
    dataset_id: str
    schema_: dict[str, Any] = Field(alias="schema")
    record_count: int
    size: int
    sha256: str
    created: int


class ModelOut(BaseModel):
    id: str
    model_id: str
    job: str | None
    schema_: dict[str, Any] = Field(alias="schema")
    query_policy: dict[str, Any]
    size: int
    sha256: str
    created: int


class JobIn(BaseModel):
    recipe: str = Field(max_length=64, description="a registered recipe's name")
    dataset: str = Field(max_length=64, description="id of one of your datasets")


class JobStartIn(BaseModel):
    # Everything the enclave acts on is in the owner's signed manifest.
    model_config = ConfigDict(extra="forbid")

    manifest: str = Field(
        max_length=_b64_chars(MAX_MANIFEST_BYTES),
        description="the owner's signed job manifest (SignedManifest.to_wire()), base64",
    )
    sealed_data_key: str = Field(
        max_length=_b64_chars(MAX_SEALED_KEY_BYTES),
        description="the data key HPKE-sealed to the job's attested enclave, base64",
    )
    sealed_job_secret: str | None = Field(
        default=None,
        max_length=_b64_chars(MAX_SEALED_KEY_BYTES),
        description="the owner's secret for this job (checkpoints are sealed under it), "
        "HPKE-sealed like the data key, base64",
    )


class JobOut(BaseModel):
    id: str
    recipe: str
    dataset: str | None = Field(description="the owner's dataset (owner only)")
    state: str
    status: str
    step: int
    total: int
    reason: str | None
    message: str | None = Field(description="the enclave's failure message (owner only)")
    model: str | None
    created: int
    updated: int


class QuerySessionIn(BaseModel):
    model: str = Field(max_length=64, description="id of one of your models")


class QuerySessionOut(BaseModel):
    id: str
    model: str
    model_id: str


class CallIn(BaseModel):
    args: dict[str, Any] = Field(
        default_factory=dict, description='call arguments; bytes as {"$bytes": base64}'
    )


class CallOut(BaseModel):
    result: dict[str, Any]
