"""Finished files kept for a failover (`collector.keep`): when each may go."""

from __future__ import annotations

from collector.keep import KeptFiles


def test_a_file_goes_once_every_standby_flushed_past_its_commit() -> None:
    kept = KeptFiles(grace=600)
    kept.keep("a", now=0)
    # The first check learns the primary's position (at or past a's commit): 100.
    assert kept.release(written=100, confirmed=90, now=1) == []
    kept.keep("b", now=1)
    assert kept.release(written=200, confirmed=99, now=2) == []
    assert kept.release(written=250, confirmed=100, now=3) == ["a"]
    assert "b" in kept and "a" not in kept
    assert kept.release(written=300, confirmed=200, now=4) == ["b"]
    assert len(kept) == 0


def test_without_a_standby_position_a_file_waits_for_the_grace_period() -> None:
    kept = KeptFiles(grace=10)
    kept.keep("a", now=0)
    assert kept.release(written=100, confirmed=None, now=9.9) == []
    assert kept.release(written=None, confirmed=None, now=10) == ["a"]


def test_keeping_again_does_not_extend_the_grace_period() -> None:
    kept = KeptFiles(grace=10)
    kept.keep("a", now=0)
    kept.keep("a", now=5)
    assert kept.release(written=None, confirmed=None, now=10) == ["a"]


def test_a_reload_forgets_every_kept_file() -> None:
    kept = KeptFiles(grace=10)
    kept.keep("a", now=0)
    kept.clear()
    assert len(kept) == 0 and kept.release(written=1, confirmed=1, now=100) == []


def test_off_when_the_grace_period_is_zero() -> None:
    assert not KeptFiles(grace=0).enabled
    assert KeptFiles(grace=0.5).enabled
