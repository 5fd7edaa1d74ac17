"""cluster.yaml and the KubeRay manifests, checked the way their tools read them."""

import copy
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
JOB_COMMANDS = {"map_region.py": "map", "remap.py": "map", "train.py": "train", "world.py": "world"}


def _docs():
    out = []
    for p in sorted((REPO / "infra").glob("*.yaml")):
        for d in yaml.safe_load_all(p.read_text()):
            if d:
                out.append((p.name, d))
                if d["kind"] == "ConfigMap":  # a RayJob template held for the CronJob
                    out += [(p.name, yaml.safe_load(v)) for v in d["data"].values()]
    return out


def test_cluster_yaml_validates_like_ray_up():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    cfg = prepare_config(copy.deepcopy(raw))
    validate_config(cfg)  # raises on any schema or node-type error
    types = cfg["available_node_types"]
    assert types[cfg["head_node_type"]]["resources"] == {"CPU": 0}  # the head runs drivers only
    assert not re.match(r"^(g|p)\d", types[cfg["head_node_type"]]["node_config"]["InstanceType"])  # CPU-only head
    assert re.match(r"^(g|p)\d", types["gpu_worker"]["node_config"]["InstanceType"])
    assert types["cpu_reader"]["min_workers"] == 0 and types["gpu_worker"]["min_workers"] == 0
    assert types["cpu_reader"]["max_workers"] > 0 and types["gpu_worker"]["max_workers"] > 0
    # preemptible workers beside on-demand ones of the same machines; the head never spot
    for kind in ("cpu_reader", "gpu_worker"):
        spot, ondemand = types[kind]["node_config"], types[f"{kind}_ondemand"]["node_config"]
        assert spot["InstanceMarketOptions"]["MarketType"] == "spot" and "InstanceMarketOptions" not in ondemand
        assert spot["InstanceType"] == ondemand["InstanceType"] and types[f"{kind}_ondemand"]["min_workers"] == 0
    assert "InstanceMarketOptions" not in types[cfg["head_node_type"]]["node_config"]
    assert raw["docker"]["image"].startswith("rayproject/ray:2.60.0")
    text = (REPO / "cluster.yaml").read_text()
    assert not re.search(r"example\.|your-org|\.invalid|TODO|<[A-Z_]+>", text)
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "ray dashboard cluster.yaml" in text


def test_every_manifest_parses_and_is_complete():
    docs = _docs()
    kinds = [d["kind"] for _, d in docs]
    for k in ("RayCluster", "RayJob", "CronJob", "ServiceAccount"):
        assert k in kinds, k
    cron = next(d for _, d in docs if d["kind"] == "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    cluster = next(d for _, d in docs if d["kind"] == "RayCluster")
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert cluster["spec"]["enableInTreeAutoscaling"] is True
    assert all(g["minReplicas"] == 0 and g["maxReplicas"] > 0 for g in groups.values())
    for g in groups.values():  # workers on spot nodes, tolerating their taint; the head on demand
        pod = g["template"]["spec"]
        assert pod["nodeSelector"]["karpenter.sh/capacity-type"] == "spot" and pod["terminationGracePeriodSeconds"] >= 60
        assert any(t["key"] == "karpenter.sh/capacity-type" for t in pod["tolerations"])
    assert cluster["spec"]["headGroupSpec"]["template"]["spec"]["nodeSelector"]["karpenter.sh/capacity-type"] == "on-demand"
    assert any("nvidia.com/gpu" in c["resources"]["limits"] for g in groups.values() for c in g["template"]["spec"]["containers"])
    for name, d in docs:
        text = yaml.safe_dump(d)
        assert not re.search(r"AWS_(ACCESS_KEY_ID|SECRET_ACCESS_KEY|SESSION_TOKEN)|aws_secret|password", text, re.I), name
        for pod in _pod_specs(d):  # every mounted volume is declared
            declared = {v["name"] for v in pod.get("volumes", [])}
            for c in pod["containers"]:
                for m in c.get("volumeMounts", []):
                    assert m["name"] in declared, (name, m["name"])
        if d["kind"] == "RayJob":
            assert d["spec"].get("clusterSelector") or d["spec"].get("rayClusterSpec"), name
            assert d["spec"]["backoffLimit"] >= 1, name  # a failed job is submitted again (it resumes, or maps what is left)
    dockerfile = (REPO / "infra" / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=rayproject/ray:2\.60\.0", dockerfile, re.M) and "gdal-bin" in dockerfile


def _pod_specs(d):
    if d["kind"] == "RayCluster":
        spec = d["spec"]
        yield spec["headGroupSpec"]["template"]["spec"]
        for g in spec["workerGroupSpecs"]:
            yield g["template"]["spec"]
    elif d["kind"] == "CronJob":
        yield d["spec"]["jobTemplate"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("doc", [d for _, d in _docs() if d["kind"] == "RayJob"], ids=lambda d: d["metadata"].get("name") or d["metadata"]["generateName"])
def test_rayjob_entrypoints_use_only_flags_the_cli_has(doc):
    import typer

    from deepsalt.cli import app

    argv = shlex.split(doc["spec"]["entrypoint"])
    script = Path(argv[1]).name
    assert (REPO / "jobs" / script).exists(), script
    command = typer.main.get_command(app).commands[JOB_COMMANDS[script]]
    known = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    flags = [a.split("=")[0] for a in argv[2:] if a.startswith("--")]
    assert flags and not [f for f in flags if f not in known], [f for f in flags if f not in known]
    ctx = command.make_context(script, argv[2:])  # and the values parse
    assert ctx.params
