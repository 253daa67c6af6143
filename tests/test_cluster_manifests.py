"""The cluster manifests in cluster/ checked against what their consumers require.

- ``cluster/cluster.yaml``: Ray's own launcher schema (``ray/autoscaler/ray-schema.json``, shipped
  with ray), plus usam-ray's needs (a GPU worker group, usam-ray installed, /shared mounted).
- ``cluster/kuberay.yaml`` (RayCluster) and ``cluster/rayjob.yaml`` (RayJob): the fields the KubeRay
  v1 CRDs require (ray-project/kuberay ``ray-operator/config/crd/bases/ray.io_rayclusters.yaml``
  and ``ray.io_rayjobs.yaml``: ``spec.headGroupSpec`` with a pod ``template``; each worker group a
  ``groupName`` and a ``template``; a container's ``name`` and ``image``, from the Kubernetes PodSpec)
  and what the operator's webhook rejects (``ray-operator/controllers/ray/utils/validation.go``,
  ValidateRayClusterSpec: at least one container in the head and each group, ``minReplicas <=
  replicas <= maxReplicas``, a DNS-1035 name), plus usam-ray's needs (a GPU group, the shared volume
  in every pod, the job's entrypoint a usam-ray command).
"""

import json
import re
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

CLUSTER = Path(__file__).parents[1] / "cluster"
DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _launcher_schema() -> dict:
    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def test_the_launcher_config_passes_rays_schema_and_has_a_gpu_group():
    cfg = yaml.safe_load((CLUSTER / "cluster.yaml").read_text())
    jsonschema.validate(cfg, _launcher_schema())
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    gpu = [t for t in types.values() if t["node_config"]["InstanceType"].startswith(("g", "p"))]
    assert gpu and all(t["min_workers"] <= t["max_workers"] <= cfg["max_workers"] for t in gpu)
    assert any("usam-ray" in c for c in cfg["setup_commands"])
    assert any("/shared" in c for c in cfg["initialization_commands"] + cfg["docker"]["run_options"])


def test_the_schema_check_catches_a_broken_launcher_config():
    cfg = yaml.safe_load((CLUSTER / "cluster.yaml").read_text())
    del cfg["provider"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, _launcher_schema())
    cfg = yaml.safe_load((CLUSTER / "cluster.yaml").read_text())
    cfg["available_node_types"]["gpu_worker"].pop("node_config")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, _launcher_schema())


def cluster_spec_problems(spec: dict) -> list[str]:
    """What KubeRay's CRD and webhook would reject in a RayCluster spec, and what usam-ray needs."""
    bad = []
    head = spec.get("headGroupSpec")
    if not head or "template" not in head:
        bad.append("spec.headGroupSpec.template is required")
        return bad
    groups = spec.get("workerGroupSpecs") or []
    pods = [("head", head["template"])] + [(g.get("groupName", "?"), g.get("template")) for g in groups]
    for g in groups:
        for key in ("groupName", "template"):
            if key not in g:
                bad.append(f"workerGroupSpecs[].{key} is required")
        lo, n, hi = g.get("minReplicas", 0), g.get("replicas", g.get("minReplicas", 0)), g.get("maxReplicas", 2**31)
        if not lo <= n <= hi:
            bad.append(f"group {g.get('groupName')}: minReplicas <= replicas <= maxReplicas fails ({lo}, {n}, {hi})")
    for name, template in pods:
        containers = ((template or {}).get("spec") or {}).get("containers") or []
        if not containers:
            bad.append(f"{name}: at least one container")
        for c in containers:
            if not c.get("name") or not c.get("image"):
                bad.append(f"{name}: a container needs name and image")
            if "/shared" not in [m.get("mountPath") for m in c.get("volumeMounts", [])]:
                bad.append(f"{name}: the shared volume is not mounted at /shared")
    if not any("nvidia.com/gpu" in (c.get("resources", {}).get("limits") or {})
               for g in groups for c in g["template"]["spec"]["containers"]):
        bad.append("no worker group asks for GPUs")
    return bad


def _manifest(name: str) -> dict:
    doc = yaml.safe_load((CLUSTER / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1" and DNS1035.match(doc["metadata"]["name"])
    return doc


def test_the_raycluster_has_what_kuberay_requires():
    doc = _manifest("kuberay.yaml")
    assert doc["kind"] == "RayCluster"
    assert cluster_spec_problems(doc["spec"]) == []


def test_the_rayjob_runs_usam_ray_on_such_a_cluster():
    doc = _manifest("rayjob.yaml")
    assert doc["kind"] == "RayJob"
    spec = doc["spec"]
    assert spec["entrypoint"].split()[:2] == ["usam-ray", "run"]
    assert cluster_spec_problems(spec["rayClusterSpec"]) == []
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["USAM_RAY_MODELS"].startswith("/shared")


def test_the_kuberay_check_catches_what_kuberay_rejects():
    spec = _manifest("kuberay.yaml")["spec"]
    broken = json.loads(json.dumps(spec))
    broken["workerGroupSpecs"][0]["replicas"] = 9
    broken["workerGroupSpecs"][0]["template"]["spec"]["containers"][0].pop("image")
    del broken["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    problems = cluster_spec_problems(broken)
    assert len(problems) == 3, problems
    assert cluster_spec_problems({"workerGroupSpecs": []}) == ["spec.headGroupSpec.template is required"]
