"""The project's exceptions. A subclass's docstring is its message when none is given."""

from __future__ import annotations


class TasklogError(Exception):
    """celery-tasklog failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigError(TasklogError):
    """The configuration is invalid."""


class StoreUnavailable(TasklogError):
    """Postgres cannot be reached."""

    # A subclass narrows the cause; code that retries (the collector, an SSE stream) catches
    # this one class.


class MissingExtra(TasklogError):
    """A component's dependencies are not installed."""


class SchemaMissing(StoreUnavailable):
    """The database has no tasklog schema: run `tasklog migrate`."""


class StorePermissionDenied(StoreUnavailable):
    """Postgres refused the tasklog user."""
