"""deploy/monitoring: the alert rules and the Grafana dashboard over the metrics the daemons export.

`promtool` (Debian's `prometheus` package) checks the rules, runs their unit tests (each alert
fires on the series that should fire it), and parses every query of the dashboard; every metric
they name must be one the collector or the API really exports.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from api import metrics as api_metrics
from collector import metrics as collector_metrics
from tests.unit.test_deploy_files import run

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
RULES = MONITORING / "alerts.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
_METRIC = re.compile(r"\b(tasklog_[a-z_]+)\b")
_SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")

# .ci/run installs promtool and sets TASKLOG_REQUIRE_TOOLS=1: there the skip fails.
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian package prometheus)",
)


def exported() -> set[str]:
    """Every metric family name the collector and the API expose."""
    snapshot = collector_metrics.Snapshot(
        counters={},
        status="ok",
        spool_free_bytes=1,
        spool_size_bytes=2,
        heartbeat=3.0,
    )
    text = generate_latest(collector_metrics.registry(lambda: snapshot)).decode()
    text += generate_latest(api_metrics.REGISTRY).decode()
    return set(re.findall(r"^# TYPE (\S+) ", text, re.M))


def family(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panel_exprs() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p.get("targets", [])]


def test_every_metric_named_is_exported() -> None:
    names = exported()
    for expr in rule_exprs() + panel_exprs():
        for metric in _METRIC.findall(expr):
            assert family(metric) in names or metric in names, f"{metric} in {expr!r}"


def test_the_alerts_the_issue_asks_for_exist() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    alerts = {rule["alert"] for group in groups for rule in group["rules"]}
    assert {
        "TasklogCollectorDown",
        "TasklogBacklogGrowing",
        "TasklogSpoolNearlyFull",
        "TasklogStoreFailures",
        "TasklogQuarantinedFiles",
    } <= alerts


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = run("promtool", "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_each_alert_fires_on_its_series_and_not_on_healthy_ones() -> None:
    result = run("promtool", "test", "rules", "alerts.test.yml", cwd=MONITORING)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """Each panel's query, with Grafana's variables filled in, as a recording rule."""
    exprs = [e.replace("$__rate_interval", "5m").replace("$instance", ".*") for e in panel_exprs()]
    rules = [{"record": f"tasklog:panel_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    result = run("promtool", "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(exprs)} rules found" in result.stdout


def test_the_dashboard_is_importable() -> None:
    data = dashboard()
    assert data["uid"] and data["title"]
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
    # Collectors and API are both on it.
    text = json.dumps(data)
    assert "tasklog_collector_" in text and "tasklog_api_" in text
