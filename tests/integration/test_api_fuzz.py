"""The API's own OpenAPI document, fuzzed by schemathesis against a running API process (real
Postgres and Redis, a few tasks stored): no 5xx, no stack trace in any response body, and
every answer conforms to the document (status, content type, body).

schemathesis runs as its CLI in a subprocess: its pytest plugin and its warnings do not mix
with this suite's ``filterwarnings = error``. The seed is random (printed on failure;
``TASKLOG_FUZZ_SEED`` replays it); ``TASKLOG_FUZZ_EXAMPLES=500`` fuzzes deeper. Streams
(``/sse/``) are left out: a valid request opens a stream that stays open; their parameters are
checked in tests/integration/test_api.py and their events in tests/integration/test_contract.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ProcessFactory, free_port
from tests.integration.api_support import PREFIX, FakeCollector

pytestmark = pytest.mark.asyncio(loop_scope="session")

#: No 5xx, no stack trace, and every answer as documented: its status, its content type and
#: its body (the models forbid extra fields, so an undocumented field fails too).
CHECKS = (
    "not_a_server_error",
    "no_stack_trace",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
HOOKS = '''
import schemathesis


@schemathesis.hook
def filter_failure(ctx, failure, case, response):
    """A request line past 8190 bytes (a 1,024-character id of 4-byte characters, encoded) is
    refused by aiohttp's HTTP parser in plain text before the API sees it, as the document's
    description says: not an answer of the API."""
    text = response.content.decode("utf-8", "replace")
    parser = response.status_code == 400 and "Got more than 8190 bytes when reading" in text
    return not parser


@schemathesis.check
def no_stack_trace(ctx, response, case):
    """A response body never carries a Python traceback."""
    text = response.content.decode("utf-8", "replace")
    for needle in ("Traceback (most recent call last)", 'File "/', "psycopg.errors"):
        if needle in text:
            raise AssertionError(f"a stack trace in the response: {text[:300]!r}")
'''


def schemathesis_cli() -> list[str]:
    exe = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))
    if not Path(exe).exists():
        pytest.skip("schemathesis is not installed (pip install -e '.[dev]')")
    return [exe]


async def test_openapi_fuzz_no_server_error_no_traceback(
    procs: ProcessFactory, database_url: str, redis_url: str, tmp_path: Path
) -> None:
    cli = schemathesis_cli()
    async with FakeCollector.connect(database_url, redis_url) as fake:
        for i in range(3):
            await fake.start(f"fuzz-{i}")
            await fake.lines(f"fuzz-{i}", [f"line {n} <b>&</b> \x1b[31m" for n in range(5)])
        await fake.finish("fuzz-0")
    port = free_port()
    procs.start(
        "api",
        [sys.executable, "-m", "tasklog", "api"],
        env={
            "TASKLOG_DATABASE_URL": database_url,
            "TASKLOG_REDIS_URL": redis_url,
            "TASKLOG_API_PORT": str(port),
        },
        ready="listening on http",
    )
    hooks = tmp_path / "fuzz_hooks.py"
    hooks.write_text(HOOKS)
    base = f"http://127.0.0.1:{port}"
    argv = [
        *cli,
        "run",
        f"{base}{PREFIX}/api/openapi.json",
        "--url",
        base,
        "--checks",
        ",".join(CHECKS),
        "--exclude-path-regex",
        "/sse/",
        "--max-examples",
        os.environ.get("TASKLOG_FUZZ_EXAMPLES", "40"),
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--no-color",
        "--suppress-health-check",
        "all",
    ]
    if os.environ.get("TASKLOG_FUZZ_SEED"):  # replays a failure's printed seed
        argv += ["--seed", os.environ["TASKLOG_FUZZ_SEED"]]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(hooks), "NO_COLOR": "1"}
    run = subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120, check=False
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert "No issues found" in output or "passed" in output.lower(), output[-3000:]
