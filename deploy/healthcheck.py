"""Container health check for `tasklog api`: GET /tasklog/healthz on this container.

Standard library only, so it also runs where the API's dependencies would not import. Exit
status 0 when the API answers 200, 1 otherwise (what Docker's HEALTHCHECK expects).
"""

from __future__ import annotations

import os
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("TASKLOG_API_PORT", "8000")
    url = f"http://127.0.0.1:{port}/tasklog/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            ok = response.status == 200
    except OSError as exc:  # URLError and HTTPError (a non-2xx answer) included
        print(f"{url}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
