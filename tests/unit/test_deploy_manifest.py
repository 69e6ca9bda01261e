"""deploy/kubernetes/triton.yaml: parsed as YAML, its pieces refer to each other correctly
(selectors, ports, probes, the model volume, the autoscaler's target) and it serves Triton's
HTTP, gRPC and metrics ports."""

from __future__ import annotations

from pathlib import Path

import yaml

MANIFEST = Path(__file__).parents[2] / "deploy" / "kubernetes" / "triton.yaml"
TRITON_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}  # Triton's defaults
KINDS = {"PersistentVolumeClaim", "Deployment", "Service", "HorizontalPodAutoscaler"}
PROBES = {"readinessProbe": "/v2/health/ready", "livenessProbe": "/v2/health/live"}
REPOSITORY_FLAG = "--model-repository="


def _docs() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_the_deployment_serves_the_shared_repository_on_tritons_ports() -> None:
    docs = _docs()
    assert set(docs) == {
        "PersistentVolumeClaim",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
    }
    deployment = docs["Deployment"]
    pod = deployment["spec"]["template"]
    assert (
        deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    )
    (container,) = pod["spec"]["containers"]
    image = container["image"]
    assert ":" in image and not image.endswith(":latest")  # pinned by tag
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == TRITON_PORTS
    # The model repository is the read-only volume of the claim above.
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    repo = next(
        a.split("=", 1)[1] for a in container["args"] if a.startswith("--model-repository=")
    )
    (mount,) = [m for m in mounts.values() if m["mountPath"] == repo]
    assert mount["readOnly"]
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]
    for probe, path in (
        ("readinessProbe", "/v2/health/ready"),
        ("livenessProbe", "/v2/health/live"),
    ):
        assert container[probe]["httpGet"]["path"] == path
        assert container[probe]["httpGet"]["port"] in ports
    annotations = pod["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == TRITON_PORTS["metrics"]


def test_the_service_and_autoscaler_point_at_the_deployment() -> None:
    docs = _docs()
    deployment, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} == set(TRITON_PORTS)
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
