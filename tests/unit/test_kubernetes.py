"""deploy/kubernetes: every resource valid for Kubernetes, and shaped as docs/deploy.md says.

Without a cluster the manifests are checked three ways: `kubernetes-validate --strict` against
the API schema of the oldest Kubernetes the docs support (1.29: native sidecars on by default);
`kubectl kustomize` renders the kustomization when kubectl is installed; and the assertions below
read the rendered objects for what a reviewer would check (who may read the Secret, the sidecar,
the shared spool, probes, resources, what SSE needs from the ingress).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from collector.settings import CollectorSettings
from tests.unit.test_deploy_files import run

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / "deploy" / "kubernetes"
#: The oldest Kubernetes the manifests support: native sidecars are on by default from 1.29.
OLDEST = "1.29.0"
SECRET = "tasklog-secrets"

Obj = dict[str, Any]


def _resources() -> Iterator[Obj]:
    """The kustomization's resources as kustomize would emit them (no patches are used)."""
    kustomization = yaml.safe_load((KUSTOMIZE / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((KUSTOMIZE / name).read_text()):
            if doc:
                if doc["kind"] != "Namespace":
                    doc["metadata"]["namespace"] = kustomization["namespace"]
                yield doc


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], Obj]:
    return {(o["kind"], o["metadata"]["name"]): o for o in _resources()}


def pod(objects: dict[tuple[str, str], Obj], kind: str, name: str) -> Obj:
    spec: Obj = objects[kind, name]["spec"]["template"]["spec"]
    return spec


def containers(spec: Obj) -> list[Obj]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def secret_keys(container: Obj) -> set[str]:
    """The keys of the tasklog Secret a container can read, through env or envFrom."""
    keys = {
        env["valueFrom"]["secretKeyRef"]["key"]
        for env in container.get("env", [])
        if env.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == SECRET
    }
    if any(src.get("secretRef", {}).get("name") == SECRET for src in container.get("envFrom", [])):
        keys.add("*")
    return keys


def test_every_resource_is_valid_for_the_oldest_supported_kubernetes() -> None:
    for obj in _resources():
        kubernetes_validate.validate(obj, OLDEST, strict=True)


def test_the_validation_would_catch_a_sidecar_on_a_kubernetes_without_them(
    objects: dict[tuple[str, str], Obj],
) -> None:
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicy"):
        kubernetes_validate.validate(objects["Deployment", "celery-worker"], "1.27.0", strict=True)


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_renders_the_same_objects() -> None:
    result = run("kubectl", "kustomize", str(KUSTOMIZE))
    assert result.returncode == 0, result.stderr
    rendered = {(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(result.stdout)}
    assert rendered == {(o["kind"], o["metadata"]["name"]) for o in _resources()}
    for obj in yaml.safe_load_all(result.stdout):
        kubernetes_validate.validate(obj, OLDEST, strict=True)


def test_the_collector_is_a_native_sidecar_sharing_the_spool_and_the_pids(
    objects: dict[tuple[str, str], Obj],
) -> None:
    spec = pod(objects, "Deployment", "celery-worker")
    (collector,) = spec["initContainers"]
    (worker,) = spec["containers"]
    assert collector["args"] == ["collector"]
    assert collector["restartPolicy"] == "Always"  # a sidecar: started first, stopped last
    assert spec["shareProcessNamespace"] is True  # it checks whether a writer still runs
    spool = {v["name"]: v for v in spec["volumes"]}["spool"]
    assert "emptyDir" in spool
    env = {e["name"]: e.get("value") for e in collector["env"]}
    config = objects["ConfigMap", "tasklog-config"]["data"]
    spool_dir = config["TASKLOG_SPOOL_DIR"]
    for container in (collector, worker):
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["spool"] == spool_dir
    # It drains the spool after the worker stopped, within the pod's grace period.
    assert int(env["TASKLOG_STOP_DRAIN_TIMEOUT"]) < spec["terminationGracePeriodSeconds"]
    # Its lock and metrics live in a directory of its own, not in the spool the worker writes.
    run_dir = env["TASKLOG_LOCK_DIR"]
    assert str(Path(env["TASKLOG_METRICS_FILE"]).parent) == run_dir
    assert run_dir in {m["mountPath"] for m in collector["volumeMounts"]}
    assert run_dir not in {m["mountPath"] for m in worker["volumeMounts"]}


def test_only_the_collector_the_api_and_migrate_read_the_secret(
    objects: dict[tuple[str, str], Obj],
) -> None:
    worker_pod = pod(objects, "Deployment", "celery-worker")
    collector, worker = worker_pod["initContainers"][0], worker_pod["containers"][0]
    (api,) = pod(objects, "Deployment", "tasklog-api")["containers"]
    (migrate,) = pod(objects, "Job", "tasklog-migrate")["containers"]
    assert secret_keys(worker) == set()
    assert secret_keys(collector) == {"TASKLOG_DATABASE_URL", "TASKLOG_REDIS_URL"}
    # The API reads its own, read-only login (docs/deploy.md, "Secrets"), never the owner's.
    assert secret_keys(api) == {
        "TASKLOG_API_DATABASE_URL",
        "TASKLOG_API_READ_URL",
        "TASKLOG_REDIS_URL",
        "TASKLOG_API_TOKEN",
    }
    api_url = next(e for e in api["env"] if e["name"] == "TASKLOG_DATABASE_URL")
    assert api_url["valueFrom"]["secretKeyRef"]["key"] == "TASKLOG_API_DATABASE_URL"
    urls = objects["Secret", "tasklog-secrets"]["stringData"]
    assert urls["TASKLOG_API_DATABASE_URL"].startswith("postgresql://tasklog_api:")
    assert urls["TASKLOG_API_READ_URL"].startswith("postgresql://tasklog_api:")
    assert urls["TASKLOG_DATABASE_URL"].startswith("postgresql://tasklog:")
    assert secret_keys(migrate) == {"TASKLOG_DATABASE_URL"}
    assert worker_pod.get("automountServiceAccountToken") is False
    # The ConfigMap every container may read holds nothing secret.
    config = objects["ConfigMap", "tasklog-config"]["data"]
    secrets = {"TASKLOG_DATABASE_URL", "TASKLOG_API_READ_URL", "TASKLOG_REDIS_URL"}
    assert not {*secrets, "TASKLOG_API_TOKEN"} & set(config)


def test_settings_given_to_tasklog_containers_are_real_settings(
    objects: dict[tuple[str, str], Obj],
) -> None:
    from api.settings import ApiSettings
    from capture_shim.config import DOCUMENTED

    known = {"TASKLOG_" + name.upper() for name in CollectorSettings.model_fields}
    known |= {"TASKLOG_" + name.upper() for name in ApiSettings.model_fields}
    known |= {name for name, *_ in DOCUMENTED}
    given = set(objects["ConfigMap", "tasklog-config"]["data"])
    for obj in objects.values():
        if obj["kind"] in ("Deployment", "Job"):
            for container in containers(obj["spec"]["template"]["spec"]):
                given |= {e["name"] for e in container.get("env", [])}
    assert {name for name in given if name.startswith("TASKLOG_")} <= known


def test_every_container_has_requests_limits_and_a_locked_down_context(
    objects: dict[tuple[str, str], Obj],
) -> None:
    workloads = [
        ("Deployment", "celery-worker"),
        ("Deployment", "tasklog-api"),
        ("Job", "tasklog-migrate"),
    ]
    for kind, name in workloads:
        spec = pod(objects, kind, name)
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in containers(spec):
            where = f"{name}/{container['name']}"
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert "memory" in container["resources"]["limits"], where
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where


def test_api_probes_use_the_health_route_and_survive_a_postgres_outage(
    objects: dict[tuple[str, str], Obj],
) -> None:
    (api,) = pod(objects, "Deployment", "tasklog-api")["containers"]
    assert api["args"] == ["api"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/tasklog/healthz"
    # healthz answers 503 while Postgres is down; liveness must not restart every replica then.
    assert "httpGet" not in api["livenessProbe"]
    env = {e["name"]: e.get("value") for e in api["env"]}
    port = int(env["TASKLOG_API_PORT"])
    assert api["ports"][0]["containerPort"] == port
    service = objects["Service", "tasklog-api"]["spec"]
    assert (
        service["selector"]
        == objects["Deployment", "tasklog-api"]["spec"]["selector"]["matchLabels"]
    )


def test_the_ingress_lets_server_sent_events_through(objects: dict[tuple[str, str], Obj]) -> None:
    ingress = objects["Ingress", "tasklog-api"]
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    from api.settings import ApiSettings

    default_heartbeat = ApiSettings.model_fields["api_sse_heartbeat"].default
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > default_heartbeat
    (path,) = ingress["spec"]["rules"][0]["http"]["paths"]
    assert path["path"] == "/tasklog"
    assert path["backend"]["service"]["name"] == "tasklog-api"


def test_the_collector_liveness_probe_reads_the_file_it_writes(
    objects: dict[tuple[str, str], Obj], tmp_path: Path
) -> None:
    """The exec probe passes on a fresh metrics file and fails on a missing or stale one."""
    (collector,) = pod(objects, "Deployment", "celery-worker")["initContainers"]
    env = {e["name"]: e.get("value") for e in collector["env"]}
    metrics = env["TASKLOG_METRICS_FILE"]
    command = collector["livenessProbe"]["exec"]["command"]
    assert metrics in command[-1]
    local = tmp_path / "collector.prom"
    probe = [*command[:-1], command[-1].replace(metrics, str(local))]
    assert subprocess.run(probe, check=False).returncode != 0  # no file yet
    local.write_text("tasklog_collector_up 1\n")
    assert subprocess.run(probe, check=False).returncode == 0
    subprocess.run(["touch", "-d", "-10 minutes", str(local)], check=True)
    assert subprocess.run(probe, check=False).returncode != 0


def test_an_unedited_secret_cannot_start_the_api(objects: dict[tuple[str, str], Obj]) -> None:
    """The placeholder token is refused at start: no deployment runs with a published token."""
    from api.settings import ApiSettings
    from tasklog.core.errors import ConfigError
    from tasklog.core.settings import load

    token = objects["Secret", SECRET]["stringData"]["TASKLOG_API_TOKEN"]
    with pytest.raises(ConfigError, match="TASKLOG_API_TOKEN"):
        load(ApiSettings, api_token=token).token()
