"""All settings, read from GRADTAPE_* environment variables (or a .env file)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRADTAPE_", env_file=".env", extra="ignore",
                                      env_ignore_empty=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"

    # request and graph limits
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="413 above this")
    max_nodes: int = Field(10_000, ge=1, description="nodes per graph or per run request")
    max_elements: int = Field(50_000_000, ge=1, description="elements per tensor")
    max_graphs: int = Field(10_000, ge=1, description="registered graphs kept (LRU)")

    # compile cache
    compile_cache_size: int = Field(512, ge=1)
    jit_after: int = Field(1, ge=0, description="calls run eagerly before a key is compiled")
    compile_in_background: bool = Field(
        True, description="compile in a background thread while calls go on eagerly")
    inline_max_body_bytes: int = Field(
        16384, ge=0, description="requests up to this size whose query is already compiled "
        "run on the event loop; bigger or uncompiled ones run in a worker thread")
    inline_max_elements: int = Field(
        65536, ge=0, description="...and whose inputs hold at most this many elements")

    # sessions
    session_ttl_seconds: float = Field(900, gt=0, description="idle time before expiry")
    session_max_ttl_seconds: float = Field(86_400, gt=0)
    max_sessions: int = Field(1000, ge=1)
    session_max_bytes: int = Field(1024**3, ge=1024, description="tensor bytes per session")
    total_session_bytes: int = Field(8 * 1024**3, ge=1024, description="all sessions together")
    sweep_interval_seconds: float = Field(30, gt=0)

    api_keys: str = Field("", description="comma-separated keys; when set, /v1 routes other "
                          "than health need X-API-Key or Authorization: Bearer")

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())
