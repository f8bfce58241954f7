"""One settings class for the whole service: env vars with the ``GLASSBOX_`` prefix, validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "smollm2-135m-instruct"


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "glassbox"


class Settings(BaseSettings):
    """Everything configurable. Read once in the app factory; nothing reads env vars at import time."""

    model_config = SettingsConfigDict(env_prefix="GLASSBOX_", env_file=None, extra="ignore")

    # --- models ---
    models: str = Field(
        DEFAULT_MODEL,
        description="Comma-separated models to load; the first is the default. Each item is a built-in "
        "alias, a Hugging Face id or a local folder, optionally named: `name=source`.",
    )
    device: str = Field("auto", description="`auto` (CUDA when present), `cpu`, `cuda` or `cuda:N`.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; `auto` is float32 on CPU and bfloat16 on CUDA."
    )
    cache_dir: Path = Field(default_factory=_default_cache_dir, description="Converted model weights live here.")
    offline: bool = Field(False, description="Never contact a model hub (HF_HUB_OFFLINE=1 also does).")
    trust_remote_code: bool = Field(False, description="Allow custom model code from a hub repository.")
    max_context: int | None = Field(
        None, ge=16, description="Token limit for prompt + new tokens (default: the model's own)."
    )
    warmup: bool = Field(True, description="Run a warm-up forward pass before reporting ready.")

    # --- request limits ---
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Larger request bodies get 413.")
    body_read_timeout_s: float = Field(
        30.0, gt=0, description="A request body still arriving after this long gets 408 (a slow client)."
    )
    max_new_tokens_limit: int = Field(1024, ge=1, description="Upper bound on `max_new_tokens`.")
    max_prompt_tokens: int = Field(8192, ge=1, description="Upper bound on prompt tokens.")

    # --- server ---
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # --- cache (owned by the cache work; add cache fields here) ---
    redis_url: str | None = Field(
        None,
        # GLASSBOX_REDIS_URL, else the conventional REDIS_URL; "redis_url" keeps Settings(redis_url=...) working.
        validation_alias=AliasChoices("GLASSBOX_REDIS_URL", "REDIS_URL", "redis_url"),
        description="redis://, rediss:// (TLS, auth in the URL), redis+sentinel://host:port/service_name "
        "or redis+cluster://host:port. Unset: an in-process bounded cache.",
    )
    cache_enabled: bool = Field(True, description="Turn the response cache off entirely.")
    cache_ttl_s: int = Field(86_400, ge=1, description="Time to live of cached responses.")
    cache_ttl_jitter: float = Field(0.1, ge=0, le=1, description="TTL is randomised by up to this fraction.")
    cache_max_value_bytes: int = Field(8_000_000, ge=1024, description="Larger values are not stored.")
    cache_memory_max_bytes: int = Field(256_000_000, ge=0, description="In-process cache size bound.")
    redis_timeout_s: float = Field(0.05, gt=0, le=5, description="Socket and connect timeout for Redis.")
    cache_breaker_threshold: int = Field(5, ge=1, description="Consecutive Redis errors that open the breaker.")
    cache_breaker_reset_s: float = Field(5.0, gt=0, description="How long the breaker stays open.")
    cache_lock_lease_s: float = Field(
        5.0,
        gt=0,
        description="Cross-replica single-flight lock lease, renewed every third of it while its holder computes: "
        "a crashed holder frees the key within this time.",
    )

    # --- explain (owned by the explain work) ---
    explain_max_tokens: int = Field(
        8192,
        ge=16,
        description="/explain: upper bound on prompt + answer tokens of one explanation (the default model's "
        "whole context; memory is bounded by explain_memory_mb, which refuses up front what cannot fit).",
    )
    explain_max_targets: int = Field(256, ge=1, description="/explain: upper bound on explained answer tokens.")
    explain_max_steps: int = Field(128, ge=1, description="/explain: upper bound on integrated-gradients steps.")
    explain_max_work: int = Field(
        300_000,
        ge=1,
        description="/explain: upper bound on the estimated cost in token passes (one token through the model "
        "forward or backward); a 150-token sequence with 32 targets costs ~5,000 for input × gradient.",
    )
    explain_memory_mb: int = Field(
        2048, ge=64, description="/explain: activation memory one request may hold; backward passes are chunked to fit."
    )
    explain_max_seconds: float = Field(
        240.0,
        gt=0,
        description="/explain: upper bound on the estimated seconds of one explanation (calibrated at load); "
        "a request whose estimate exceeds this or its own deadline is refused with 422 before any model work.",
    )
    explain_max_values: int = Field(
        4_000_000, ge=1000, description="/explain: upper bound on the numbers in one response."
    )

    # --- serving (owned by the serving work) ---
    max_concurrency: int = Field(
        8, ge=1, description="Requests per model holding a slot (tokenizing, in the batch or running explain)."
    )
    max_queue: int = Field(
        64, ge=0, description="Requests per model waiting for a slot; past it, 429 with Retry-After."
    )
    max_batch_size: int = Field(8, ge=1, description="Sequences decoded together in one forward pass.")
    explain_time_share: float = Field(
        1 / 3,
        gt=0,
        lt=1,
        description="While generation waits, the share of the model's time an explanation gets (the rest goes "
        "to decode steps); with nothing waiting an explanation gets all of it.",
    )
    request_timeout_s: float = Field(
        300.0, gt=0, description="Server deadline per request (504 past it); X-Request-Timeout-Ms may lower it."
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, description="After SIGTERM, how long in-flight requests may take before the process exits."
    )
    api_keys: str | None = Field(
        None,
        description="Comma-separated SHA-256 hex digests of accepted API keys (`Authorization: Bearer KEY`); "
        "unset: no authentication. Digests, so the configuration never holds a usable key.",
    )
    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP traces endpoint, e.g. http://otel-collector:4318/v1/traces; unset: no tracing."
    )
    log_format: Literal["json", "text"] = Field("json", description="`json`: one object per line, with request id.")

    @field_validator("api_keys")
    @classmethod
    def _api_keys_are_digests(cls, value: str | None) -> str | None:
        for item in (value or "").split(","):
            digest = item.strip().lower()
            if digest and (len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest)):
                raise ValueError('GLASSBOX_API_KEYS holds SHA-256 hex digests, not keys: printf %s "$KEY" | sha256sum')
        return value

    def api_key_digests(self) -> frozenset[bytes]:
        """The accepted digests as raw bytes (empty: authentication is off)."""
        return frozenset(bytes.fromhex(d.strip()) for d in (self.api_keys or "").split(",") if d.strip())

    @field_validator("models")
    @classmethod
    def _models_not_empty(cls, value: str) -> str:
        if not [item for item in value.split(",") if item.strip()]:
            raise ValueError("GLASSBOX_MODELS must name at least one model")
        return value

    @field_validator("device")
    @classmethod
    def _device_known(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda", "mps") and not value.startswith("cuda:"):
            raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda or cuda:N")
        return value

    def model_specs(self) -> list[tuple[str, str]]:
        """(public name, source) pairs, in order; the first is the default model."""
        specs: list[tuple[str, str]] = []
        for raw in self.models.split(","):
            item = raw.strip()
            if not item:
                continue
            name, _, source = item.partition("=") if "=" in item else (item, "", item)
            specs.append((name.strip(), source.strip()))
        return specs
