"""capture_shim.group: the CI markers around a block, also when the block raises."""

from __future__ import annotations

import contextlib
import io

import pytest

import capture_shim


def test_a_group_prints_its_markers_around_the_block() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), capture_shim.group("Fetch\n  orders"):
        print("page 1")
    assert out.getvalue().splitlines() == ["::group::Fetch orders", "page 1", "::endgroup::"]


def test_a_group_ends_when_its_block_raises() -> None:
    out = io.StringIO()
    with (
        contextlib.redirect_stdout(out),
        pytest.raises(ValueError, match="bad row"),
        capture_shim.group("Validate"),
    ):
        print("row 7")
        raise ValueError("bad row")
    assert out.getvalue().splitlines() == ["::group::Validate", "row 7", "::endgroup::"]
