"""Settings of `tasklog api`, read from `TASKLOG_*` environment variables."""

from __future__ import annotations

from pydantic import Field, SecretStr

from tasklog.core.settings import Common


class ApiSettings(Common):
    api_host: str = Field("127.0.0.1", description="Address the API listens on.")
    api_port: int = Field(8000, ge=0, le=65535, description="Port the API listens on.")
    api_token: SecretStr | None = Field(
        None,
        description="Token required by every route but health (bearer header or login cookie);"
        " without it the API binds to loopback only.",
    )
    api_insecure_bind: bool = Field(
        False,
        description="Allow a non-loopback TASKLOG_API_HOST without a token"
        " (only behind a proxy that authenticates).",
    )
    api_sse_heartbeat: float = Field(
        15.0, gt=0, description="Seconds between SSE heartbeat comments on idle streams."
    )
    api_sse_resync: float = Field(
        20.0,
        gt=0,
        description="Seconds an SSE stream waits without news before re-checking Postgres.",
    )
    api_poll_interval: float = Field(
        1.0, gt=0, description="Seconds between Postgres polls while Redis is unreachable."
    )
    api_client_buffer: int = Field(
        1000,
        ge=10,
        description="Events buffered per SSE client; a client that falls further behind is cut"
        " off and resumes with Last-Event-ID.",
    )
    api_send_timeout: float = Field(
        30.0, gt=0, description="Seconds a write to an SSE client may take before it is dropped."
    )
    api_workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Processes serving the API's one port (`tasklog api --workers N` overrides);"
        " each has its own Postgres pool and Redis subscriptions.",
    )
    api_db_pool_size: int = Field(10, ge=1, description="Postgres connections per API process.")
    api_shutdown_timeout: float = Field(
        10.0, gt=0, description="Seconds given to open requests and streams at shutdown."
    )
    api_demo_launch: bool = Field(
        True, description="Serve the page and route that launch the demo tasks."
    )
