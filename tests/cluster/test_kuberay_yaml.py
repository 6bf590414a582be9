"""kuberay/rayjob.yaml has the shape the README describes and stays in step with ray_cluster.yaml."""
from __future__ import annotations

import shlex

import pytest
import yaml
from cluster_helpers import REPO

from cluster.cli import build_parser

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")


@pytest.fixture(scope="module")
def docs() -> dict:
    loaded = list(yaml.safe_load_all((REPO / "kuberay" / "rayjob.yaml").read_text()))
    return {d["kind"]: d for d in loaded}


@pytest.fixture(scope="module")
def cluster_yaml() -> dict:
    return yaml.safe_load((REPO / "ray_cluster.yaml").read_text())


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_rayjob_resumes_autoscales_and_keeps_work_off_the_head(docs):
    job = docs["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["backoffLimit"] >= 1 and spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert head["template"]["spec"]["nodeSelector"]["karpenter.sh/capacity-type"] == "on-demand"
    [workers] = cluster["workerGroupSpecs"]
    assert (workers["minReplicas"], workers["maxReplicas"]) == (0, 16)
    pod = workers["template"]["spec"]
    assert pod["nodeSelector"]["karpenter.sh/capacity-type"] == "spot"
    assert any(t["key"] == "karpenter.sh/capacity-type" and t["value"] == "spot" for t in pod["tolerations"])
    assert _containers(workers)[0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_metrics_port_is_exposed_bound_and_scraped(docs):
    job, monitor = docs["RayJob"], docs["PodMonitor"]
    argv = shlex.split(job["spec"]["entrypoint"])
    args = build_parser().parse_args(argv[2:])  # the entrypoint parses as the job's own CLI
    assert args.metrics_host == "0.0.0.0"
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    port = next(p for p in _containers(head)[0]["ports"] if p["containerPort"] == args.metrics_port)
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == port["name"]
    assert head["template"]["metadata"]["labels"].items() >= monitor["spec"]["selector"]["matchLabels"].items()


def test_same_image_entrypoint_and_packages_as_ray_cluster_yaml(docs, cluster_yaml):
    spec = docs["RayJob"]["spec"]
    cluster = spec["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    assert {c["image"] for g in groups for c in _containers(g)} == {cluster_yaml["docker"]["image"]}
    assert cluster_yaml["docker"]["image"].split(":")[1].startswith(cluster["rayVersion"])
    # ray_cluster.yaml's header shows the submit command; the RayJob runs the same one (plus the metrics bind)
    header = " ".join(line.lstrip("# ").rstrip(" \\") for line in (REPO / "ray_cluster.yaml").read_text()
                      .splitlines() if line.startswith("#"))
    submitted = header.split(" -- ", 1)[1].split(" #")[0].split("ray down")[0].split()
    entry = shlex.split(spec["entrypoint"])
    assert submitted[:2] == ["python", "jobs/reconstruct_dataset.py"] and entry[:len(submitted)] == submitted
    # the runtime env installs what ray_cluster.yaml's `pip install -e ".[s3]"` does
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = sorted(project["dependencies"] + project["optional-dependencies"]["s3"])
    assert "[s3]" in " ".join(cluster_yaml["setup_commands"])
    assert sorted(yaml.safe_load(spec["runtimeEnvYAML"])["pip"]) == wanted
