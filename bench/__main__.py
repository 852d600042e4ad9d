"""``python -m bench SUITE [options]`` (``python -m bench --help`` lists them): run benchmarks."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
from types import ModuleType

from bench import (
    api_latency,
    collector,
    fanout,
    fleet,
    hostile,
    latency,
    livepath,
    logview,
    pertask,
    prune,
    search,
    shim,
    steps,
    topology,
)
from bench.common import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL

SUITES: dict[str, ModuleType] = {
    "shim": shim,
    "pertask": pertask,
    "collector": collector,
    "latency": latency,
    "steps": steps,
    "fanout": fanout,
    "prune": prune,
    "api": api_latency,
    "search": search,
    "livepath": livepath,
    "logview": logview,
    "fleet": fleet,
    "topology": topology,
    "hostile": hostile,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--database-url",
        default=os.environ.get("TASKLOG_BENCH_DATABASE_URL", DEFAULT_DATABASE_URL),
        help="a Postgres server URL whose user may create databases "
        "(env TASKLOG_BENCH_DATABASE_URL)",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("TASKLOG_BENCH_REDIS_URL", DEFAULT_REDIS_URL),
        help="a Redis database the benchmarks may use (env TASKLOG_BENCH_REDIS_URL)",
    )
    sub = parser.add_subparsers(dest="suite", metavar="SUITE")
    for name, module in SUITES.items():
        module.add_arguments(sub.add_parser(name, help=(module.__doc__ or "").splitlines()[0]))
    sub.add_parser("all", help="every suite with its default sizes")
    args = parser.parse_args()
    _machine()
    if args.suite in (None, "all"):
        for name, module in SUITES.items():
            defaults = sub.choices[name].parse_args([])
            module.run(argparse.Namespace(**{**vars(defaults), **_common(args)}))
    else:
        SUITES[args.suite].run(args)


def _common(args: argparse.Namespace) -> dict[str, object]:
    return {"database_url": args.database_url, "redis_url": args.redis_url}


def _machine() -> None:
    model = "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        model = next(
            (ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")),
            "?",
        )
    except OSError:
        pass
    print(
        f"machine: {os.cpu_count()} cores, {model}; Python {platform.python_version()}", flush=True
    )


if __name__ == "__main__":
    main()
