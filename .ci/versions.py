"""Say which releases an environment runs that the lock does not: `versions.py LOCK PYTHON`.

CI prints it before testing the newest and the lowest releases, so that a failure there names
the release that brought it.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

LISTING = (
    "import json, importlib.metadata as m; "
    "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main(lock: Path, python: str) -> None:
    locked: dict[str, str] = {}
    for line in lock.read_text().splitlines():
        pinned = re.match(r"^([A-Za-z0-9._-]+)==([^\s;]+)", line)
        if pinned:
            locked[canonical(pinned[1])] = pinned[2]
    listing = subprocess.run([python, "-c", LISTING], check=True, capture_output=True, text=True)
    installed = {canonical(k): v for k, v in json.loads(listing.stdout).items()}
    changed = [
        f"{name} {locked[name]} -> {version}"
        for name, version in sorted(installed.items())
        if name in locked and locked[name] != version
    ]
    print(f"ci: {len(changed)} releases differ from {lock}: " + (", ".join(changed) or "none"))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
