"""Settings shared by the collector and the API, read from `TASKLOG_*` environment variables.

Each program has its own class (`collector.settings`, `api.settings`) built on `Common`; a bad
value stops the program with one line naming the variable, never a traceback.
"""

from __future__ import annotations

import socket
from typing import Any, Literal, TypeVar

try:
    from pydantic import Field, SecretStr, ValidationError
    from pydantic_settings import BaseSettings, SettingsConfigDict
except ImportError as exc:  # pragma: no cover - exercised by the packaging test
    from tasklog.core.errors import MissingExtra

    raise MissingExtra(
        "pydantic-settings is missing: install celery-tasklog[collector] or celery-tasklog[api]"
    ) from exc

from tasklog.core.errors import ConfigError

ENV_PREFIX = "TASKLOG_"


class Common(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", extra="ignore", validate_default=True
    )

    database_url: SecretStr | None = Field(
        None, description="Postgres URL (postgresql://user:pass@host:5432/db); required."
    )
    redis_url: SecretStr | None = Field(
        None, description="Redis URL for live updates (redis://host:6379/0); optional."
    )
    redis_cluster: Literal["auto", "true", "false"] = Field(
        "auto",
        description="Whether TASKLOG_REDIS_URL is a node of a Redis Cluster (then sharded pub/sub,"
        " Redis >= 7): auto asks the server (INFO cluster).",
    )
    host: str = Field(
        default_factory=socket.gethostname,
        description="Name of this host as shown in the task list and diagnostics.",
    )
    log_level: str = Field("INFO", description="Log level of the daemon itself.")
    search: bool = Field(
        True,
        description="Keep the trigram index that makes search fast (costs ingest time);"
        " `tasklog migrate` creates or drops it. Without it search scans every line.",
    )

    def require_database_url(self) -> str:
        if self.database_url is None:
            raise ConfigError(f"{ENV_PREFIX}DATABASE_URL is not set (a Postgres URL is required)")
        return self.database_url.get_secret_value()

    def redis(self) -> str | None:
        return self.redis_url.get_secret_value() if self.redis_url else None

    def masked(self) -> dict[str, Any]:
        """The effective settings with secrets and URL passwords masked."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = mask_url(value.get_secret_value())
            out[ENV_PREFIX + name.upper()] = value
        return out


def mask_url(value: str) -> str:
    """Hide the password of a URL (and anything that is not a URL)."""
    if "://" not in value:
        return "********" if value else ""
    scheme, rest = value.split("://", 1)
    if "@" not in rest:
        return value
    creds, hostpart = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:********@{hostpart}"


S = TypeVar("S", bound=BaseSettings)


def load(cls: type[S], **overrides: Any) -> S:
    """Build a settings object, turning a validation error into one line naming the variable."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = ENV_PREFIX + str(err["loc"][0]).upper() if err["loc"] else "settings"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        raise ConfigError(f"{name}: {err['msg']}{shown}") from None
