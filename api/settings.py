"""Settings of `tasklog api`, read from `TASKLOG_*` environment variables."""

from __future__ import annotations

from pydantic import Field, SecretStr

from tasklog.core.errors import ConfigError
from tasklog.core.settings import Common

#: The shortest `TASKLOG_API_TOKEN` accepted: 16 random characters are beyond guessing even
#: without the login throttle (hex: 64 bits), and `openssl rand -hex 32` gives 64.
MIN_TOKEN_LENGTH = 16


class ApiSettings(Common):
    api_host: str = Field("127.0.0.1", description="Address the API listens on.")
    api_port: int = Field(8000, ge=0, le=65535, description="Port the API listens on.")
    api_token: SecretStr | None = Field(
        None,
        description="Token required by every route but health (bearer header or login cookie),"
        f" at least {MIN_TOKEN_LENGTH} characters; without it the API binds to loopback only"
        " and answers only to loopback Host names.",
    )
    api_insecure_bind: bool = Field(
        False,
        description="Allow a non-loopback TASKLOG_API_HOST and any Host name without a token"
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
    api_read_url: SecretStr | None = Field(
        None,
        description="Postgres URL of a read replica the API reads lists, task pages, search,"
        " workflows and raw logs from; a live stream fills in from TASKLOG_DATABASE_URL"
        " what a lagging replica lacks (default: TASKLOG_DATABASE_URL).",
    )
    api_db_pool_size: int = Field(10, ge=1, description="Postgres connections per API process.")
    api_search_connections: int = Field(
        2,
        ge=1,
        le=32,
        description="Postgres connections per API process for searches, apart from the pool of"
        " every other route: searches wait for one of these, never for the others.",
    )
    api_search_timeout: float = Field(
        10.0, gt=0, le=300, description="Seconds a text search may run in Postgres."
    )
    api_regex_timeout: float = Field(
        5.0,
        gt=0,
        le=300,
        description="Seconds a regex search may run in Postgres (a pathological pattern is"
        " cancelled then).",
    )
    api_db_wait: float = Field(
        5.0,
        gt=0,
        description="Seconds a request waits for a Postgres connection before it answers 503"
        " (streams keep waiting).",
    )
    api_shutdown_timeout: float = Field(
        10.0, gt=0, description="Seconds given to open requests and streams at shutdown."
    )
    api_demo_launch: bool = Field(
        False,
        description="Serve the page and route that launch the demo tasks (`tasklog demo` turns"
        " it on).",
    )
    api_max_streams: int = Field(
        10_000,
        ge=1,
        description="SSE streams one API process serves at once; beyond it a new stream gets"
        " 503 with Retry-After.",
    )
    api_session_epoch: int = Field(
        0,
        ge=0,
        description="Change it (and restart) to log every browser out: login cookies carry it;"
        " rotating TASKLOG_API_TOKEN does the same.",
    )

    def read_url(self) -> str:
        """Where the API reads from: the replica's URL, else the database URL."""
        if self.api_read_url is not None:
            return self.api_read_url.get_secret_value()
        return self.require_database_url()

    def token(self) -> str | None:
        """The API token, or None when the API runs without one; a weak one stops the start."""
        if self.api_token is None:
            return None
        value = self.api_token.get_secret_value()
        if not value.strip():
            raise ConfigError(
                "TASKLOG_API_TOKEN is set but empty: unset it to serve loopback only, or set"
                f" at least {MIN_TOKEN_LENGTH} characters (openssl rand -hex 32)"
            )
        if len(value) < MIN_TOKEN_LENGTH or value != value.strip() or not value.isprintable():
            raise ConfigError(
                f"TASKLOG_API_TOKEN is too weak: at least {MIN_TOKEN_LENGTH} printable"
                " characters, without spaces around them (openssl rand -hex 32)"
            )
        return value
