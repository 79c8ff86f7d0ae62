"""The openpi-triton Helm chart: linted, rendered over its value sets, every object validated offline against
Kubernetes' own schemas (built-in kinds) or its project's Go types (custom resources), and the chart's contract
with the image and the bridge checked (ports, probes, Services, secrets, autoscaling, drain).

Run by ``make k8s-check``, which builds helm and crdcheck first (``HELM`` / ``CRDCHECK`` / ``K8S_VERSION``).
"""

from __future__ import annotations

import copy
import json
import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest
import yaml

from openpi_triton.bridge_config import BridgeConfig

REPO = pathlib.Path(__file__).resolve().parents[3]
CHART = REPO / "deploy" / "helm" / "openpi-triton"
ADAPTER_RULES = REPO / "deploy" / "helm" / "prometheus-adapter-rules.yaml"
K8S_VERSION = os.environ.get("K8S_VERSION", "1.34.0")
# Without make: the helm that `make k8s-check` builds, named after the Makefile's HELM_VERSION.
_HELM_VERSION = re.search(r"^HELM_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
HELM = os.environ.get("HELM", str(REPO / ".cache" / "k8s-tools" / f"helm-{_HELM_VERSION and _HELM_VERSION[1]}"))
CRDCHECK = os.environ.get("CRDCHECK", str(REPO / ".cache" / "k8s-tools" / "crdcheck"))
RELEASE, NAMESPACE = "fleet", "robots"
PREFIX = f"{RELEASE}-openpi-triton"
VALUE_SETS = {
    "default": None,
    "cpu-small": CHART / "ci" / "cpu-small-values.yaml",
    "multi-gpu": CHART / "ci" / "multi-gpu-values.yaml",
}
# values.yaml refuses to render without a Secret (robots on LoadBalancers): "default" is the documented install,
# values.yaml plus the Secret's name.
DEFAULT_SECRET = "openpi-auth"
SET_ARGS = {"default": ["--set", f"auth.existingSecret={DEFAULT_SECRET}"]}
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "PodMonitor"), ("keda.sh/v1alpha1", "ScaledObject")}


def _tool(path: str) -> str:
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run `make k8s-check`, which builds it")
    return path


def helm(*args: str) -> str:
    done = subprocess.run([_tool(HELM), *args], capture_output=True, text=True)
    assert done.returncode == 0, f"helm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def value_args(value_set: str) -> list[str]:
    path = VALUE_SETS[value_set]
    return ([] if path is None else ["-f", str(path)]) + SET_ARGS.get(value_set, [])


def render_error(*args: str) -> str:
    """helm template's error for values the chart must refuse (it must refuse them)."""
    command = [_tool(HELM), "template", RELEASE, str(CHART), "-n", NAMESPACE, "--kube-version", K8S_VERSION, *args]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode != 0, f"helm rendered {args} instead of refusing them"
    return done.stderr


def render(value_set: str, *extra: str) -> list[dict[str, Any]]:
    text = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, "--kube-version", K8S_VERSION,
                *value_args(value_set), *extra)  # fmt: skip
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module", params=list(VALUE_SETS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, got {[(o['kind'], o['metadata']['name']) for o in objects]}"
    return matches[0]


def kinds(objects: list[dict[str, Any]]) -> set[str]:
    return {o["kind"] for o in objects}


def pod_spec(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return find(objects, "Deployment", f"{PREFIX}-{component}")["spec"]["template"]["spec"]


def container(objects: list[dict[str, Any]], component: str, name: str | None = None) -> dict[str, Any]:
    spec = pod_spec(objects, component)
    (match,) = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == (name or component)]
    return match


def ports(c: dict[str, Any]) -> dict[str, tuple[int, str]]:
    return {p["name"]: (p["containerPort"], p["protocol"]) for p in c["ports"]}


def values(value_set: str) -> dict[str, Any]:
    """The chart's values for a set: values.yaml with the set's file merged over it (as helm does)."""

    def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
        for key, value in over.items():
            base[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
        return base

    merged = yaml.safe_load((CHART / "values.yaml").read_text())
    path = VALUE_SETS[value_set]
    if value_set == "default":
        merged["auth"]["existingSecret"] = DEFAULT_SECRET
    return merge(merged, yaml.safe_load(path.read_text())) if path else merged


# --- lint and schemas ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", list(VALUE_SETS))
def test_helm_lint_is_clean(value_set: str) -> None:
    helm("lint", "--strict", str(CHART), "--kube-version", K8S_VERSION, *value_args(value_set))


def crdcheck(objects: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    text = yaml.safe_dump_all(objects)
    return subprocess.run([_tool(CRDCHECK)], input=text, capture_output=True, text=True)


def test_every_object_validates_strictly(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """Built-in kinds against Kubernetes' JSON schemas (strict: unknown fields fail), the rest by crdcheck."""
    _, objects = rendered
    custom = [o for o in objects if (o["apiVersion"], o["kind"]) in CUSTOM_KINDS]
    for obj in objects:
        if obj in custom:
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {exc.message} at {list(exc.absolute_path)}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{exc.message}: add its Go type to deploy/helm/crdcheck")
    if custom:
        done = crdcheck(custom)
        assert done.returncode == 0, done.stdout + done.stderr
        assert done.stdout.count("ok ") == len(custom), done.stdout


def test_the_validators_reject_unknown_fields() -> None:
    """The checks above can fail: one stray field in a built-in object and in a custom resource."""
    objects = render("multi-gpu")
    deployment = copy.deepcopy(find(objects, "Deployment", f"{PREFIX}-triton"))
    deployment["spec"]["template"]["spec"]["containers"][0]["shmSize"] = "4Gi"
    with pytest.raises(kubernetes_validate.ValidationError, match="shmSize"):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    for kind in ("PodMonitor", "ScaledObject"):
        obj = copy.deepcopy(next(o for o in objects if o["kind"] == kind))
        obj["spec"]["replicas"] = 2
        done = crdcheck([obj])
        assert done.returncode == 1 and 'unknown field "replicas"' in done.stdout, done.stdout


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("model.dtype=fp16", "at '/model/dtype': value must be one of 'bfloat16', 'float32'"),
        ("autoscaling.engine=cpu", "at '/autoscaling/engine': value must be one of 'prometheus-adapter', 'keda'"),
        ("model.instanses=2", "at '/model': additional properties 'instanses' not allowed"),
        ("model.batchBuckets=1;2", "at '/model/batchBuckets'"),
        (
            "--set-json=bridge.discoveryRefreshSeconds=0.1",
            "at '/bridge/discoveryRefreshSeconds': minimum: got 0.1, want 0.5",
        ),
        ("podDisruptionBudget.triton.minAvailable=0", "at '/podDisruptionBudget/triton/minAvailable'"),
        ("auth.allowUnauthenticated=yes", "at '/auth/allowUnauthenticated'"),
    ],
)
def test_bad_values_are_refused_naming_the_value(setting: str, message: str) -> None:
    """values.schema.json: helm refuses the install before anything renders."""
    error = render_error(*SET_ARGS["default"], setting if setting.startswith("--") else f"--set={setting}")
    assert message in error, error


# --- Triton pods -----------------------------------------------------------------------------------------


def test_triton_pods_ports_probes_and_drain(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    value_set, objects = rendered
    v = values(value_set)["triton"]
    triton = container(objects, "triton")
    assert triton["args"] == ["triton"]  # docker/entrypoint.sh role: Triton on 0.0.0.0, ports 8000-8002
    assert ports(triton) == {"http": (8000, "TCP"), "grpc": (8001, "TCP"), "metrics": (8002, "TCP")}
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    # Warming up never trips liveness: a startup probe covers the whole load, and liveness asks "live" only.
    startup = triton["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= v["startupTimeoutSeconds"]
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # The entrypoint restarts a crashed tritonserver after up to 30 s: liveness allows more than that.
    liveness = triton["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > 30
    # Drain: out of DNS, then SIGTERM; Triton's exit timeout inside the grace period.
    assert triton["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(v["drainSeconds"])]
    assert v["drainSeconds"] > 2 * values(value_set)["bridge"]["discoveryRefreshSeconds"]
    env = {e["name"]: e.get("value") for e in triton["env"]}
    assert env["TRITON_EXTRA_ARGS"] == f"--exit-timeout-secs={v['exitTimeoutSeconds']}"
    grace = pod_spec(objects, "triton")["terminationGracePeriodSeconds"]
    assert grace > v["drainSeconds"] + v["exitTimeoutSeconds"]


def test_triton_pods_dev_shm_and_gpus(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    value_set, objects = rendered
    v = values(value_set)["triton"]
    spec = pod_spec(objects, "triton")
    (shm,) = [vol for vol in spec["volumes"] if vol["name"] == "dshm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": v["shmSize"]}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container(objects, "triton")["volumeMounts"]
    limits = container(objects, "triton")["resources"].get("limits", {})
    gpus = v["gpu"]["count"] if v["gpu"]["enabled"] else 0
    assert limits.get("nvidia.com/gpu", 0) == gpus
    assert f"--gpus={gpus}" in container(objects, "triton", "configure-models")["command"]
    assert {"default": 1, "cpu-small": 0, "multi-gpu": 4}[value_set] == gpus


def test_model_values_reach_the_model_repository(
    rendered: tuple[str, list[dict[str, Any]]], tmp_path: pathlib.Path
) -> None:
    """The configure-models command line, run as rendered on this repository's model_repository/."""
    value_set, objects = rendered
    model = values(value_set)["model"]
    command = container(objects, "triton", "configure-models")["command"]
    assert command[:3] == ["python", "-m", "openpi_triton.triton.configure_repository"]
    args = [a for a in command[3:] if not a.startswith(("--source=", "--target="))]
    target = tmp_path / "models"
    subprocess.run(
        [sys.executable, *command[1:3], f"--source={REPO / 'model_repository'}", f"--target={target}", *args],
        check=True,
        capture_output=True,
    )
    action = (target / "action" / "config.pbtxt").read_text()
    assert f'key: "model_config_name" value: {{ string_value: "{model["configName"]}" }}' in action
    assert f'key: "dtype" value: {{ string_value: "{model["dtype"]}" }}' in action
    assert f"count: {model['instances']}" in action
    assert (target / "planner").exists() == model["planner"]
    prepare = [c for c in pod_spec(objects, "triton")["initContainers"] if c["name"] == "prepare-checkpoint"]
    if model["checkpoint"]:
        (init,) = prepare
        assert init["command"][3] == model["checkpoint"]
        checkpoint_dir = f"/cache/openpi-triton/checkpoints/{init['command'][-1]}"
        assert f'key: "checkpoint_dir" value: {{ string_value: "{checkpoint_dir}" }}' in action
    else:
        assert prepare == [] and 'key: "checkpoint_dir" value: { string_value: "" }' in action


def test_multi_gpu_checkpoint_and_instances() -> None:
    objects = render("multi-gpu")
    command = container(objects, "triton", "configure-models")["command"]
    assert "--checkpoint-dir=/cache/openpi-triton/checkpoints/pi05_droid" in command
    assert "--instances=2" in command and "--dtype=bfloat16" in command
    (cache,) = [v for v in pod_spec(objects, "triton")["volumes"] if v["name"] == "cache"]
    assert cache == {"name": "cache", "persistentVolumeClaim": {"claimName": "openpi-checkpoints"}}
    assert "envFrom" not in container(objects, "triton", "prepare-checkpoint")


def test_checkpoint_credentials_reach_prepare_checkpoint_only() -> None:
    """A private checkpoint's Secret: environment and files for the init container that copies it, nothing for
    the Triton container."""
    objects = render("multi-gpu", "--set", "model.checkpointCredentialsSecret=checkpoint-access")
    prepare = container(objects, "triton", "prepare-checkpoint")
    assert prepare["envFrom"] == [{"secretRef": {"name": "checkpoint-access"}}]
    mount = {"name": "checkpoint-credentials", "mountPath": "/etc/openpi/checkpoint-credentials", "readOnly": True}
    assert mount in prepare["volumeMounts"]
    (volume,) = [v for v in pod_spec(objects, "triton")["volumes"] if v["name"] == "checkpoint-credentials"]
    assert volume["secret"] == {"secretName": "checkpoint-access"}
    triton = container(objects, "triton")
    assert "envFrom" not in triton and all(m["name"] != "checkpoint-credentials" for m in triton["volumeMounts"])
    for obj in objects:  # the added fields are real Kubernetes fields
        if (obj["apiVersion"], obj["kind"]) not in CUSTOM_KINDS:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# --- bridge, Services, discovery -------------------------------------------------------------------------


def bridge_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return json.loads(find(objects, "ConfigMap", f"{PREFIX}-bridge")["data"]["bridge.json"])


def test_the_bridge_finds_triton_pods_through_the_headless_service(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendered
    service = find(objects, "Service", f"{PREFIX}-triton")
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is False
    pod_labels = find(objects, "Deployment", f"{PREFIX}-triton")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {"name": "grpc", "port": 8001, "targetPort": "grpc", "protocol": "TCP"} in service["spec"]["ports"]
    config = BridgeConfig(**bridge_config(objects))  # the bridge's own validation accepts it
    assert config.triton.discovery is not None
    # Absolute (trailing dot): one DNS query per refresh, not one per search domain of the pod (ndots:5).
    assert config.triton.discovery.name == f"{PREFIX}-triton.{NAMESPACE}.svc.cluster.local."
    assert config.triton.discovery.port == 8001
    assert config.triton.shared_memory == "off"  # remote pods cannot map this pod's /dev/shm
    bridge = container(objects, "bridge")
    assert bridge["args"] == ["bridge"]
    assert bridge["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "ws-action"}
    assert "tcpSocket" in bridge["livenessProbe"]  # Triton being away is not a reason to restart the bridge


def test_robots_get_websocket_on_tcp_and_quic_on_udp(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    value_set, objects = rendered
    planner = values(value_set)["model"]["planner"]
    assert ports(container(objects, "bridge")) == {
        "ws-action": (8000, "TCP"),
        "ws-planner": (8002, "TCP"),
        "quic-action": (5555, "UDP"),
        "quic-planner": (5556, "UDP"),
        "admin": (8001, "TCP"),
    }
    websocket = find(objects, "Service", f"{PREFIX}-websocket")["spec"]
    quic = find(objects, "Service", f"{PREFIX}-quic")["spec"]
    planner_ports = ({(8002, "TCP")}, {(5556, "UDP")}) if planner else (set(), set())
    assert {(p["port"], p["protocol"]) for p in websocket["ports"]} == {(8000, "TCP")} | planner_ports[0]
    assert {(p["port"], p["protocol"]) for p in quic["ports"]} == {(5555, "UDP")} | planner_ports[1]
    assert quic["sessionAffinity"] == "ClientIP"
    expected_type = "NodePort" if value_set == "cpu-small" else "LoadBalancer"
    assert websocket["type"] == quic["type"] == expected_type


def test_admin_is_in_no_service(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    value_set, objects = rendered
    for service in (o for o in objects if o["kind"] == "Service"):
        for port in service["spec"]["ports"]:
            if service["metadata"]["name"] != f"{PREFIX}-triton":  # Triton's 8001 is its gRPC port
                assert port["port"] != 8001 and port.get("targetPort") != "admin", service["metadata"]["name"]
    if values(value_set)["networkPolicy"]["enabled"]:
        policy = find(objects, "NetworkPolicy", f"{PREFIX}-bridge")["spec"]["ingress"]
        open_rule = next(rule for rule in policy if "from" not in rule)
        assert {p["port"] for p in open_rule["ports"]} == {"ws-action", "ws-planner", "quic-action", "quic-planner"}
        admin_rules = [rule for rule in policy if any(p["port"] == "admin" for p in rule["ports"])]
        if admin_host(objects) == "0.0.0.0":
            assert [rule["from"] for rule in admin_rules] == [values(value_set)["networkPolicy"]["adminFrom"]]
        else:
            assert admin_rules == []


def admin_host(objects: list[dict[str, Any]]) -> str:
    """Where the bridge's admin API listens, as the bridge reads it: the config file under the container's
    environment (which the image's entrypoint would otherwise set to 0.0.0.0)."""
    env = {e["name"]: e["value"] for e in container(objects, "bridge")["env"] if "value" in e}
    assert "OPENPI_ADMIN__HOST" in env, "the entrypoint's default (0.0.0.0) would apply"
    config = bridge_config(objects)
    config.setdefault("admin", {})["host"] = env["OPENPI_ADMIN__HOST"]  # the environment wins over the file
    return BridgeConfig(**config).admin.host


def test_admin_leaves_the_pods_loopback_only_for_prometheus_and_then_needs_the_key(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    value_set, objects = rendered
    v = values(value_set)
    host = admin_host(objects)
    assert host == ("0.0.0.0" if v["monitoring"]["podMonitor"]["enabled"] else "127.0.0.1")
    env = {e["name"] for e in container(objects, "bridge")["env"]}
    if host == "0.0.0.0":
        assert "OPENPI_API_KEY" in env  # the admin API asks for it on every route but /metrics


WEBSOCKET_OUT, QUIC_OUT = "bridge.service.websocket.type is", "bridge.service.quic.type is"
ADMIN_OUT = "monitoring.podMonitor.enabled puts the admin API"


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ([], {WEBSOCKET_OUT + " LoadBalancer", QUIC_OUT + " LoadBalancer", ADMIN_OUT}),
        (["bridge.service.websocket.type=NodePort", "bridge.service.quic.type=ClusterIP",
          "monitoring.podMonitor.enabled=false"], {WEBSOCKET_OUT + " NodePort"}),
        (["bridge.service.websocket.type=ClusterIP", "bridge.service.quic.type=NodePort",
          "monitoring.podMonitor.enabled=false"], {QUIC_OUT + " NodePort"}),
        (["bridge.service.websocket.type=ClusterIP", "bridge.service.quic.type=ClusterIP"], {ADMIN_OUT}),
    ],
)  # fmt: skip
def test_no_secret_is_refused_where_robots_or_admin_are_reachable(settings: list[str], named: set[str]) -> None:
    """values.yaml as shipped, and each way of reaching the bridge past its own pod, without a Secret: the
    error names exactly what is reachable and both ways out."""
    error = render_error(*(f"--set={s}" for s in settings))
    assert "auth.existingSecret is empty" in error and "auth.allowUnauthenticated=true" in error, error
    for what in (WEBSOCKET_OUT, QUIC_OUT, ADMIN_OUT):
        assert (what in error) == any(n.startswith(what) for n in named), f"{what!r}: {error}"
    for what in named:
        assert what in error, error


def test_unauthenticated_only_by_choice_or_inside_the_cluster() -> None:
    """The explicit opt-out renders (no key anywhere); so do ClusterIP Services with admin on loopback."""
    opted_out = render("default", "--set", "auth.existingSecret=", "--set", "auth.allowUnauthenticated=true")
    env = {e["name"] for e in container(opted_out, "bridge")["env"]}
    assert not env & {"OPENPI_API_KEY", "OPENPI_QUIC_TOKEN"}
    internal = render(
        "default", "--set", "auth.existingSecret=", "--set", "bridge.service.websocket.type=ClusterIP",
        "--set", "bridge.service.quic.type=ClusterIP", "--set", "monitoring.podMonitor.enabled=false",
    )  # fmt: skip
    assert admin_host(internal) == "127.0.0.1"
    assert find(internal, "Service", f"{PREFIX}-websocket")["spec"]["type"] == "ClusterIP"


def test_secrets_come_from_a_secret_never_from_values(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    value_set, objects = rendered
    assert "Secret" not in kinds(objects)
    env = container(objects, "bridge")["env"]
    auth = {e["name"]: e for e in env if e["name"] in ("OPENPI_API_KEY", "OPENPI_QUIC_TOKEN")}
    secret = values(value_set)["auth"]["existingSecret"]
    if secret:
        assert auth["OPENPI_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "api-key"}
        assert auth["OPENPI_QUIC_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "quic-token"}
    else:
        assert auth == {}
    assert all("value" not in e for e in auth.values())
    assert "api_key" not in bridge_config(objects)


def test_values_hold_no_secret() -> None:
    """No value that looks like a credential: the chart only names the Secret that holds them."""

    def walk(node: Any, path: str) -> Iterator[tuple[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{path}.{key}")
        else:
            yield path, node

    # Names of Secrets and of keys inside them, never their contents.
    allowed = {
        ".auth.existingSecret",
        ".auth.apiKeyKey",
        ".auth.quicTokenKey",
        ".imagePullSecrets",
        ".model.checkpointCredentialsSecret",
    }
    for value_set in VALUE_SETS:
        for path, _ in walk(values(value_set), ""):
            leaf = path.rsplit(".", 1)[-1].lower()
            if any(word in leaf for word in ("password", "token", "apikey", "api_key", "secret")):
                assert path in allowed, f"{value_set}: {path} looks like a credential in values"


# --- autoscaling, disruption, monitoring -----------------------------------------------------------------


def test_hpa_scales_triton_on_queue_time_per_request() -> None:
    objects = render("default")
    hpa = find(objects, "HorizontalPodAutoscaler", f"{PREFIX}-triton")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{PREFIX}-triton"}
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["selector"] == {"matchLabels": {"model": "action"}}
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "50000"}
    assert "replicas" not in find(objects, "Deployment", f"{PREFIX}-triton")["spec"]  # the HPA owns it
    # The metric is the one prometheus-adapter serves with the shipped rule.
    (rule,) = yaml.safe_load(ADAPTER_RULES.read_text())["rules"]["custom"]
    assert rule["name"]["as"] == metric["pods"]["metric"]["name"]
    query = rule["metricsQuery"]
    queue, divide = query.index("nv_inference_queue_duration_us"), query.index("/")
    assert queue < divide < query.index("nv_inference_request_success")
    assert "ScaledObject" not in kinds(objects)


def test_keda_scales_on_the_same_ratio() -> None:
    objects = render("multi-gpu")
    assert "HorizontalPodAutoscaler" not in kinds(objects)  # KEDA makes its own
    scaled = find(objects, "ScaledObject", f"{PREFIX}-triton")["spec"]
    assert scaled["scaleTargetRef"] == {"name": f"{PREFIX}-triton"}
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (2, 8)
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "Value"
    query = trigger["metadata"]["query"]
    selector = f'namespace="{NAMESPACE}",pod=~"{PREFIX}-triton-.*",model="action"'
    assert f"rate(nv_inference_queue_duration_us{{{selector}}}[1m])" in query
    assert f"rate(nv_inference_request_success{{{selector}}}[1m])" in query
    assert trigger["metadata"]["threshold"] == "30000"


def test_autoscaling_off_keeps_a_fixed_replica_count() -> None:
    objects = render("cpu-small")
    assert not kinds(objects) & {"HorizontalPodAutoscaler", "ScaledObject", "PodDisruptionBudget", "PodMonitor"}
    assert find(objects, "Deployment", f"{PREFIX}-triton")["spec"]["replicas"] == 1


def test_disruption_budgets_and_pod_monitors() -> None:
    objects = render("default")
    for component in ("triton", "bridge"):
        pdb = find(objects, "PodDisruptionBudget", f"{PREFIX}-{component}")["spec"]
        labels = find(objects, "Deployment", f"{PREFIX}-{component}")["spec"]["template"]["metadata"]["labels"]
        assert pdb["maxUnavailable"] == 1 and "minAvailable" not in pdb
        assert pdb["selector"]["matchLabels"].items() <= labels.items()
    # A single Triton pod: drains may be made to wait for a second one instead of evicting it.
    waiting = render("default", "--set", "podDisruptionBudget.triton.minAvailable=1")
    pdb = find(waiting, "PodDisruptionBudget", f"{PREFIX}-triton")["spec"]
    assert pdb["minAvailable"] == 1 and "maxUnavailable" not in pdb
    kubernetes_validate.validate(find(waiting, "PodDisruptionBudget", f"{PREFIX}-triton"), K8S_VERSION, strict=True)
    triton = find(objects, "PodMonitor", f"{PREFIX}-triton")["spec"]["podMetricsEndpoints"]
    bridge = find(objects, "PodMonitor", f"{PREFIX}-bridge")["spec"]["podMetricsEndpoints"]
    assert [(e["port"], e["path"]) for e in triton] == [("metrics", "/metrics")]
    assert [(e["port"], e["path"]) for e in bridge] == [("admin", "/metrics")]


def test_rollouts_never_drop_capacity() -> None:
    objects = render("default")
    for component in ("triton", "bridge"):
        strategy = find(objects, "Deployment", f"{PREFIX}-{component}")["spec"]["strategy"]
        assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
