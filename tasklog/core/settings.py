"""Settings shared by the collector and the API, read from `TASKLOG_*` environment variables.

Each program has its own class (`collector.settings`, `api.settings`) built on `Common`; a bad
value stops the program with one line naming the variable, never a traceback.
"""

from __future__ import annotations

import re
import socket
from typing import Any, Literal, TypeVar
from urllib.parse import unquote

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
    database_prepared_statements: bool = Field(
        True,
        description="Let the collector and the API prepare the statements they run often; false"
        " behind PgBouncer in transaction pooling without max_prepared_statements (< 1.21).",
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
        description="Keep the search indexes (trigram indexes of each closed day and of today's"
        " hours and two-minute slices, built by the collector and `tasklog index`); off drops"
        " them, search then scans.",
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


#: Query or keyword parameters whose value is a secret (libpq and redis-py both read these).
_SECRET_PARAMS = frozenset({"password", "sslpassword"})
#: libpq's connection keywords: a ``key=value`` string made only of these is a conninfo.
_LIBPQ_KEYWORDS = _SECRET_PARAMS | frozenset(
    "host hostaddr port dbname user passfile channel_binding connect_timeout client_encoding"
    " options application_name fallback_application_name keepalives keepalives_idle"
    " keepalives_interval keepalives_count tcp_user_timeout replication gssencmode sslmode"
    " requiressl sslcompression sslcert sslkey sslcertmode sslrootcert sslcrl sslcrldir sslsni"
    " sslnegotiation requirepeer ssl_min_protocol_version ssl_max_protocol_version krbsrvname"
    " gsslib gssdelegation service target_session_attrs load_balance_hosts require_auth".split()
)
_CONNINFO_PAIR = re.compile(r"\s*(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|[^\s']\S*)\s*")
MASK = "********"


def mask_url(value: str) -> str:
    """Hide the secrets of a connection string; anything that is not one is hidden whole.

    A URL keeps its user, host and path: the password after ``user:`` and the value of a
    ``password=`` (or ``sslpassword=``) query parameter are masked, whatever their encoding.
    A libpq ``key=value`` string keeps its keywords, with the password's value masked.
    """
    if not value:
        return ""
    if "://" in value:
        return _mask_uri(value)
    pairs = list(_CONNINFO_PAIR.finditer(value))
    if (
        pairs
        and "".join(m.group(0) for m in pairs) == value
        and all(m.group(1).lower() in _LIBPQ_KEYWORDS for m in pairs)
    ):
        return " ".join(
            f"{m.group(1)}={MASK if m.group(1).lower() in _SECRET_PARAMS else m.group(2)}"
            for m in pairs
        )
    return MASK


def _mask_uri(value: str) -> str:
    scheme, rest = value.split("://", 1)
    # libpq ends the user info at an "@" before the first "/", URL parsers at the last "@"
    # before the path or query, and a password may hold a raw "/", "?" or "@": everything up
    # to the last "@" ahead of either is taken for user info (over-masking is safe).
    at = max(_last_at(rest, "?"), _last_at(rest, "/"))
    if at >= 0:
        user, colon, _ = rest[:at].partition(":")
        if any(c in user for c in "/?#&="):  # not a plain user name: show none of it
            user, colon = MASK, ""
        rest = (f"{user}:{MASK}@" if colon else f"{user}@") + rest[at + 1 :]
    before, question, query = rest.partition("?")
    if question:
        query = "&".join(_mask_param(param) for param in query.split("&"))
    return f"{scheme}://{before}{question}{query}"


def url_secrets(value: str) -> list[str]:
    """The secrets a connection string holds, as written and percent-decoded, even when it is
    malformed: a driver's message may quote them, and such a message must be scrubbed."""
    found: list[str] = []
    if "://" in value:
        rest = value.split("://", 1)[1]
        at = max(_last_at(rest, "?"), _last_at(rest, "/"))
        if at >= 0:
            _, colon, password = rest[:at].partition(":")
            if colon:
                found.append(password)
        for param in rest.partition("?")[2].split("&"):
            key, equals, secret = param.partition("=")
            if equals and unquote(key).strip().lower() in _SECRET_PARAMS:
                found.append(secret)
    else:
        for match in _CONNINFO_PAIR.finditer(value):
            if match.group(1).lower() in _SECRET_PARAMS:
                found.append(match.group(2).strip("'"))
    found += [unquote(secret) for secret in found]
    # Longest first, so that a secret holding another is replaced whole.
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


def scrub(text: str, conninfo: str) -> str:
    """`text` with the connection string and each of its secrets masked."""
    if conninfo and conninfo in text:
        text = text.replace(conninfo, mask_url(conninfo))
    for secret in url_secrets(conninfo):
        text = text.replace(secret, MASK)
    return text


def _last_at(text: str, stop: str) -> int:
    end = text.find(stop)
    return text.rfind("@", 0, len(text) if end < 0 else end)


def _mask_param(param: str) -> str:
    key, equals, _ = param.partition("=")
    if equals and unquote(key).strip().lower() in _SECRET_PARAMS:
        return f"{key}={MASK}"  # a "#" in the value would be the password's, not a fragment
    return param


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
