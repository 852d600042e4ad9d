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


class MissingExtra(TasklogError):
    """A component's dependencies are not installed."""
