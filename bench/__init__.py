"""Benchmarks of celery-tasklog against the real alternatives, side by side in one run.

Run them with ``python -m bench`` (see ``bench/README.md``); they are not part of the tests.
"""
