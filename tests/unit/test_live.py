"""`tasklog.core.live`: a cluster node's URL keeps the credentials and TLS of the one given."""

from __future__ import annotations

import pytest

from tasklog.core.live import node_url


@pytest.mark.parametrize(
    ("given", "host", "port", "expected"),
    [
        ("redis://10.0.0.1:6379/0", "10.0.0.2", 7001, "redis://10.0.0.2:7001/0"),
        (
            "rediss://user:s3cret@cache:6380",
            "10.0.0.3",
            6380,
            "rediss://user:s3cret@10.0.0.3:6380/0",
        ),
        ("redis://:pw@[::1]:7000/0", "::2", 7002, "redis://:pw@[::2]:7002/0"),
        ("redis://cache/0?ssl_cert_reqs=none", "h", "7003", "redis://h:7003/0?ssl_cert_reqs=none"),
    ],
)
def test_node_url(given: str, host: str, port: int | str, expected: str) -> None:
    assert node_url(given, host, port) == expected
