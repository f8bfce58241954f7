"""The deployment files agree with the service they deploy.

Static checks read the rendered kustomize overlays (deploy/render.py), the Dockerfile and the compose
files; the app checks build or run the real app (with the tiny test model). Schema and policy checks of
the same files are in scripts/check-deploy.sh.
"""

from __future__ import annotations

import itertools
import os
import re
import tomllib
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from packaging.requirements import Requirement
from prometheus_client.parser import text_string_to_metric_families
from pydantic import AliasChoices

from service.api.app import create_app
from service.cli import _parser as cli_parser
from service.serving.server import EXIT_BUDGET_S
from service.settings import Settings
from tests.conftest import wait_ready
from tests.deploy.manifests import (
    COMPOSE_GPU,
    DEPLOY,
    K8S,
    OVERLAYS,
    ROOT,
    SERVER,
    compose,
    config_data,
    dockerignore_excludes,
    duration_s,
    final_stage,
    find,
    healthcheck_command,
    one,
    parse_dockerfile,
    render,
    server_container,
)

# A replica must be allowed at least this long to load and warm its model before Kubernetes gives up on
# it: the first start on an empty cache converts the default model's GGUF file (~20 s on a fast machine).
MIN_STARTUP_BUDGET_S = 120
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


def setting_env_names() -> dict[str, str]:
    """Every environment variable Settings reads (upper case) -> its field name."""
    prefix = Settings.model_config.get("env_prefix", "")
    names: dict[str, str] = {}
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            for choice in alias.choices:
                if isinstance(choice, str):
                    names[choice.upper()] = name
        elif isinstance(alias, str):
            names[alias.upper()] = name
        else:
            names[f"{prefix}{name}".upper()] = name
    return names


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings exactly as the container would build them from these variables (and nothing else)."""
    for key in list(os.environ):
        if key.upper().startswith("GLASSBOX_") or key.upper() == "REDIS_URL":
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


def status_of(client: TestClient, path: str) -> int:
    """What the running app answers to a GET of ``path`` (the tiny model is loaded and warm)."""
    return client.get(path).status_code


def glassbox_env(data: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in data.items() if k.startswith("GLASSBOX_")}


# --- probes ----------------------------------------------------------------------------------------------


def test_probe_paths_exist_on_the_app(overlay: tuple[str, list[dict[str, Any]]], app_client: TestClient) -> None:
    name, objects = overlay
    container = server_container(objects)
    for probe in PROBES:
        assert probe in container, f"{name}: the server has no {probe}"
        path = container[probe]["httpGet"]["path"]
        status = status_of(app_client, path)
        assert status == 200, f"{name}: {probe} GETs {path}; the ready app answers {status}"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness must not depend on the model"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz", "startup must wait for the model"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in PROBES:
        assert container[probe]["httpGet"]["port"] in ports, f"{name}: {probe} targets an unnamed port"


def test_probes_are_sized_for_model_load(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = overlay
    container = server_container(objects)
    startup = container["startupProbe"]
    budget = startup.get("periodSeconds", 10) * startup.get("failureThreshold", 3)
    assert budget >= MIN_STARTUP_BUDGET_S, f"{name}: startup allows {budget} s for loading the model"
    liveness = container["livenessProbe"]
    assert liveness.get("timeoutSeconds", 1) >= 2 and liveness.get("failureThreshold", 3) >= 3, (
        f"{name}: liveness is so strict that a busy replica would be restarted"
    )
    readiness = container["readinessProbe"]
    assert readiness.get("periodSeconds", 10) <= 10, f"{name}: a draining replica leaves the Service too late"


def test_container_health_checks_use_app_paths(app_client: TestClient) -> None:
    dockerfile_check = healthcheck_command(final_stage())
    compose_check = compose()["services"][SERVER]["healthcheck"]["test"]
    for where, command in (("Dockerfile HEALTHCHECK", dockerfile_check), ("compose healthcheck", compose_check)):
        assert command[-2] == "/opt/glassbox/healthcheck.py", f"{where}: {command}"
        status = status_of(app_client, command[-1])
        assert status == 200, f"{where} GETs {command[-1]}; the ready app answers {status}"
    assert (ROOT / "deploy" / "healthcheck.py").is_file()


# --- settings --------------------------------------------------------------------------------------------


def test_configmap_and_secret_keys_are_settings(
    overlay: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, objects = overlay
    known = setting_env_names()
    for kind, field_name in (("ConfigMap", "data"), ("Secret", "stringData")):
        for obj in find(objects, kind):
            unknown = sorted(k for k in obj.get(field_name, {}) if k.upper() not in known)
            assert not unknown, (
                f"{name}: {kind} {obj['metadata']['name']} sets {unknown}, which service.settings.Settings "
                "does not read"
            )
    # ...and their values are valid settings.
    settings = settings_from(glassbox_env(config_data(objects)), monkeypatch)
    assert settings.port == server_container(objects)["ports"][0]["containerPort"]
    mounts = {m["mountPath"] for m in server_container(objects)["volumeMounts"]}
    assert str(settings.cache_dir) in mounts, f"{name}: GLASSBOX_CACHE_DIR is not a mounted (writable) volume"
    assert settings.host == "0.0.0.0", f"{name}: the server must listen on all interfaces in a pod"


def test_image_environment_is_settings_and_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    stage = final_stage()
    known = setting_env_names()
    unknown = sorted(k for k in stage.env if k.startswith("GLASSBOX_") and k not in known)
    assert not unknown, f"Dockerfile ENV sets {unknown}, which Settings does not read"
    assert stage.env.get("HF_HUB_OFFLINE") == "1", "the image must default to HF_HUB_OFFLINE=1"
    settings = settings_from(glassbox_env(stage.env), monkeypatch)
    assert [str(settings.port)] == stage.expose, "EXPOSE and GLASSBOX_PORT disagree"
    for overlay_name in OVERLAYS:
        container = server_container(render(overlay_name))
        assert {"name": "HF_HUB_OFFLINE", "value": "1"} in container["env"], overlay_name


def test_compose_environment_is_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    known = setting_env_names()
    for path in (ROOT / "docker-compose.yml", COMPOSE_GPU):
        env = compose(path)["services"][SERVER].get("environment", {})
        unknown = sorted(k for k in env if k.upper() not in known)
        assert not unknown, f"{path.name} sets {unknown}, which Settings does not read"
        settings_from({k: str(v) for k, v in env.items()}, monkeypatch)


#: Slack on top of the exit budget before the orchestrator's SIGKILL (scheduling, a loaded node).
EXIT_MARGIN_S = 5

# --- shutdown --------------------------------------------------------------------------------------------


def _drain_timeout_s(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> float:
    settings = settings_from(glassbox_env(env), monkeypatch)
    drain = getattr(settings, "drain_timeout_s", None)
    assert drain is not None, "Settings has no drain_timeout_s (GLASSBOX_DRAIN_TIMEOUT_S) yet"
    return float(drain)


def _prestop_s(container: dict[str, Any]) -> float:
    pre_stop = container.get("lifecycle", {}).get("preStop")
    if not pre_stop:
        return 0.0
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = " ".join(pre_stop.get("exec", {}).get("command", []))
    match = re.search(r"sleep\s+(\d+(?:\.\d+)?)", command)
    assert match, f"cannot tell how long preStop takes: {pre_stop}"
    return float(match.group(1))


def test_grace_period_covers_prestop_and_drain(
    overlay: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, objects = overlay
    pod = one(objects, "Deployment", SERVER)["spec"]["template"]["spec"]
    container = server_container(objects)
    pre_stop = _prestop_s(container)
    assert pre_stop > 0, f"{name}: no preStop pause; endpoints would still route to a terminating pod"
    drain = _drain_timeout_s(config_data(objects), monkeypatch)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    needed = pre_stop + drain + EXIT_BUDGET_S + EXIT_MARGIN_S
    assert grace >= needed, (
        f"{name}: grace {grace} s < preStop {pre_stop} s + drain {drain} s + exit {EXIT_BUDGET_S} s "
        f"+ margin {EXIT_MARGIN_S} s"
    )


def test_deploy_readme_states_the_shutdown_budget() -> None:
    text = (DEPLOY / "README.md").read_text()
    objects = render("base")
    grace = one(objects, "Deployment", SERVER)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert "Shutdown budget" in text and f"terminationGracePeriodSeconds: {grace}" in text
    assert f"exit {EXIT_BUDGET_S:g} s" in text


def test_compose_stop_grace_covers_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    service = compose()["services"][SERVER]
    drain = _drain_timeout_s({k: str(v) for k, v in service.get("environment", {}).items()}, monkeypatch)
    assert duration_s(service["stop_grace_period"]) >= drain + EXIT_BUDGET_S + EXIT_MARGIN_S
    assert service.get("stop_signal", "SIGTERM") == "SIGTERM"


# --- autoscaling -----------------------------------------------------------------------------------------


def hpa_metric_names(objects: list[dict[str, Any]]) -> set[str]:
    names = set()
    for hpa in find(objects, "HorizontalPodAutoscaler"):
        for metric in hpa["spec"]["metrics"]:
            kind = metric["type"]
            if kind in ("Pods", "Object", "External"):
                names.add(metric[kind[0].lower() + kind[1:]]["metric"]["name"])
    return names


def _all_scaling_metric_names() -> set[str]:
    names: set[str] = set()
    for overlay_name in ("base", *OVERLAYS):
        names |= hpa_metric_names(render(overlay_name))
    return names


def test_hpa_metrics_are_exported_by_the_running_app(app_client: TestClient) -> None:
    response = app_client.get("/metrics")
    assert response.status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    wanted = _all_scaling_metric_names()
    assert "glassbox_queue_depth" in wanted, "the HPA must scale on the queue depth"
    for metric in sorted(wanted):
        assert metric in families, f"the HPA scales on {metric}, which GET /metrics does not export"
        assert families[metric].type == "gauge", f"{metric} is a {families[metric].type}, the HPA needs a gauge"
        for sample in families[metric].samples:
            assert "model" in sample.labels, f"{metric} samples should carry the model label"

    # The Prometheus adapter rules and the KEDA alternative name the same exported metrics.
    adapter = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    exposed = {rule["name"]["as"] for rule in adapter["rules"]["custom"]}
    assert wanted <= exposed, f"the adapter does not expose {sorted(wanted - exposed)}"
    for rule in adapter["rules"]["custom"]:
        assert rule["name"]["as"] in families
    keda = yaml.safe_load((K8S / "keda" / "scaledobject.yaml").read_text())
    for trigger in keda["spec"]["triggers"]:
        queried = set(re.findall(r"glassbox_[a-z_]+", trigger["metadata"]["query"]))
        assert queried and queried <= set(families), f"KEDA queries {queried}"


def test_hpa_targets_the_server_within_admission_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    for overlay_name in ("cpu", "gpu"):
        objects = render(overlay_name)
        hpa = one(objects, "HorizontalPodAutoscaler", SERVER)["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": SERVER}
        assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
        assert "replicas" not in one(objects, "Deployment", SERVER)["spec"], "the HPA owns the replica count"
        settings = settings_from(glassbox_env(config_data(objects)), monkeypatch)
        targets = {
            m["pods"]["metric"]["name"]: float(m["pods"]["target"]["averageValue"])
            for m in hpa["metrics"]
            if m["type"] == "Pods"
        }
        max_queue = getattr(settings, "max_queue", None)
        max_concurrency = getattr(settings, "max_concurrency", None)
        assert max_queue is not None and max_concurrency is not None, "Settings lacks max_queue/max_concurrency"
        assert targets["glassbox_queue_depth"] < max_queue, f"{overlay_name}: scale-out after shedding starts"
        if "glassbox_inflight_requests" in targets:
            assert targets["glassbox_inflight_requests"] <= max_concurrency, overlay_name
        pdb = one(objects, "PodDisruptionBudget", SERVER)["spec"]
        if "minAvailable" in pdb:
            assert int(pdb["minAvailable"]) < hpa["minReplicas"], f"{overlay_name}: the PDB blocks every drain"

    keda = yaml.safe_load((K8S / "keda" / "scaledobject.yaml").read_text())["spec"]
    base_hpa = one(render("base"), "HorizontalPodAutoscaler", SERVER)["spec"]
    assert keda["scaleTargetRef"]["name"] == SERVER
    assert (keda["minReplicaCount"], keda["maxReplicaCount"]) == (base_hpa["minReplicas"], base_hpa["maxReplicas"])


def test_selectors_match_the_server_pods(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = overlay
    deployment = one(objects, "Deployment", SERVER)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = one(objects, "Service", SERVER)
    assert service["spec"]["selector"].items() <= labels.items(), f"{name}: the Service selects no server pod"
    ports = {p["name"] for p in server_container(objects)["ports"]}
    assert all(p["targetPort"] in ports for p in service["spec"]["ports"])
    for pdb in find(objects, "PodDisruptionBudget"):
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    policy = one(objects, "NetworkPolicy", SERVER)
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()


# --- pod security ----------------------------------------------------------------------------------------


def test_pods_meet_the_restricted_pod_security_standard(overlay: tuple[str, list[dict[str, Any]]]) -> None:
    name, objects = overlay
    uid = int(final_stage().user.split(":")[0])  # type: ignore[union-attr]
    for namespace in find(objects, "Namespace"):
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for deployment in find(objects, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        where = f"{name}: {deployment['metadata']['name']}"
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, where
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), where
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), where
            assert sc["readOnlyRootFilesystem"] is True, where
            assert not sc.get("privileged"), where
            assert sc.get("runAsUser", pod["securityContext"].get("runAsUser", 0)) != 0, where
            assert container["resources"]["limits"]["memory"] and container["resources"]["requests"]["cpu"], where
    pod = one(objects, "Deployment", SERVER)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == uid, "the pod's user is not the image's USER"
    mounts = {m["mountPath"] for m in server_container(objects)["volumeMounts"]}
    assert "/tmp" in mounts, f"{name}: no writable /tmp with a read-only root filesystem"


def test_gpu_overlay_requests_a_gpu_and_cpu_overlays_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    for overlay_name in OVERLAYS:
        objects = render(overlay_name)
        container = server_container(objects)
        settings = settings_from(glassbox_env(config_data(objects)), monkeypatch)
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        if overlay_name == "gpu":
            assert gpus and int(gpus) >= 1
            assert settings.device.startswith("cuda")
            assert container["image"].endswith("-cuda")
        else:
            assert gpus is None, overlay_name
            assert settings.device == "cpu", overlay_name
            assert container["image"].endswith("-cpu"), overlay_name
    gpu = compose(COMPOSE_GPU)["services"][SERVER]
    assert gpu["build"]["args"]["VARIANT"] == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


# --- redis -----------------------------------------------------------------------------------------------


def _assert_cache_config(args: list[str], where: str) -> None:
    pairs = dict(itertools.pairwise(args))  # each flag -> the word after it
    assert pairs.get("--maxmemory"), f"{where}: no maxmemory"
    assert pairs.get("--maxmemory-policy", "").endswith("-lru"), f"{where}: eviction is not LRU"
    assert pairs.get("--save") == "", f"{where}: RDB snapshots are on"
    assert pairs.get("--appendonly") == "no", f"{where}: AOF is on"


def test_redis_is_configured_as_a_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    services = compose()["services"]
    _assert_cache_config(services["redis"]["command"], "compose")
    env = {k: str(v) for k, v in services[SERVER]["environment"].items()}
    assert settings_from(env, monkeypatch).redis_url == "redis://redis:6379/0"
    assert services[SERVER]["depends_on"]["redis"]["condition"] == "service_healthy"

    dev = render("dev")
    redis = one(dev, "Deployment", "glassbox-redis")["spec"]["template"]["spec"]["containers"][0]
    _assert_cache_config(redis["args"], "dev overlay")
    url = settings_from(glassbox_env(config_data(dev)), monkeypatch).redis_url
    service = one(dev, "Service", "glassbox-redis")
    assert url == f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/0"
    for overlay_name in ("cpu", "gpu"):
        assert not find(render(overlay_name), "Deployment", "glassbox-redis"), "production uses a managed Redis"


# --- image -----------------------------------------------------------------------------------------------


def test_image_entrypoint_is_exec_form_glassbox_serve() -> None:
    stage = final_stage()
    assert isinstance(stage.entrypoint, list), "ENTRYPOINT must use the exec form (the server gets SIGTERM)"
    assert stage.cmd is None or isinstance(stage.cmd, list), "CMD must use the exec form"
    argv = [*stage.entrypoint, *(stage.cmd or [])]
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(rf'^{re.escape(argv[0])}\s*=\s*"service\.cli:main"', pyproject, re.M), argv[0]
    args = cli_parser().parse_args(argv[1:])
    assert args.command == "serve"
    user = stage.user or "0"
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0, "USER must be a numeric non-root uid"


def test_cuda_variant_differs_only_in_torch_build() -> None:
    cpu, cuda = parse_dockerfile(), parse_dockerfile(build_args={"VARIANT": "cuda"})
    assert [(s.name, s.base) for s in cpu] == [(s.name, s.base) for s in cuda]
    assert cpu[-1].entrypoint == cuda[-1].entrypoint and cpu[-1].env == cuda[-1].env
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "download.pytorch.org/whl/cpu" in text and "download.pytorch.org/whl/${TORCH_CUDA}" in text
    # The image's torch is the one the project pins.
    torch_version = re.search(r"^ARG TORCH_VERSION=(\S+)$", text, re.M)
    assert torch_version, "no ARG TORCH_VERSION"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    server = pyproject["project"]["optional-dependencies"]["server"]
    torch_spec = next(Requirement(d) for d in server if d.startswith("torch"))
    assert torch_spec.specifier.contains(torch_version.group(1)), f"{torch_version.group(1)} vs {torch_spec}"
    assert '"./[server]"' in text, "the image does not install the server extra"
    model_extra = pyproject["project"]["optional-dependencies"]["model"]
    assert any(f'"{req}"' in text for req in model_extra), f"the image does not install {model_extra}"


def test_dockerignore_sends_what_the_build_copies_and_nothing_else() -> None:
    for stage in parse_dockerfile():
        for copy in stage.copies:
            if any(flag.startswith("--from") for flag in copy):
                continue
            for source in [s for s in copy[:-1] if not s.startswith("--")]:
                assert (ROOT / source).exists(), f"COPY {source}: missing"
                assert not dockerignore_excludes(source), f"COPY {source} is excluded by .dockerignore"
    for path in (".venv/bin/python", ".git/HEAD", ".cache/x", "tests/conftest.py", "service/__pycache__/a.pyc"):
        assert dockerignore_excludes(path), f"{path} would be sent to the Docker daemon"


def test_overlays_render_the_expected_objects() -> None:
    expected_common = {
        ("ServiceAccount", SERVER),
        ("ConfigMap", "glassbox-config"),
        ("Secret", "glassbox-secrets"),
        ("Deployment", SERVER),
        ("Service", SERVER),
        ("NetworkPolicy", SERVER),
    }
    for overlay_name in OVERLAYS:
        kinds = {(o["kind"], o["metadata"]["name"]) for o in render(overlay_name)}
        assert expected_common <= kinds, overlay_name
        autoscaled = {("HorizontalPodAutoscaler", SERVER), ("PodDisruptionBudget", SERVER)}
        if overlay_name == "dev":
            assert not (autoscaled & kinds)
            assert {("Deployment", "glassbox-redis"), ("Service", "glassbox-redis")} <= kinds
        else:
            assert autoscaled <= kinds
        namespaces = {o["metadata"].get("namespace") for o in render(overlay_name) if o["kind"] != "Namespace"}
        assert len(namespaces) == 1 and None not in namespaces, f"{overlay_name}: {namespaces}"


def test_readme_documents_every_path_it_mentions() -> None:
    readme = (ROOT / "deploy" / "README.md").read_text()
    for ref in sorted(set(re.findall(r"`((?:deploy|scripts|loadtest|tests)/[\w./-]+)`", readme))):
        if ref.startswith("loadtest/"):
            continue  # the serving work's load test, referred to by name
        assert (ROOT / ref).exists(), f"deploy/README.md mentions {ref}, which does not exist"
    assert "loadtest/locustfile.py" in readme


def test_files_are_where_ci_expects_them() -> None:
    for path in ("deploy/Dockerfile", ".dockerignore", "docker-compose.yml", "docker-compose.gpu.yml"):
        assert (ROOT / path).is_file(), path
    assert os.access(ROOT / "scripts" / "check-deploy.sh", os.X_OK), "scripts/check-deploy.sh is not executable"


def test_probes_and_metrics_need_no_api_key(tiny_settings: Settings) -> None:
    """The kubelet's probes and Prometheus' scrapes carry no API key: with keys configured (the Secret),
    /healthz, /readyz and /metrics must still answer."""
    secret = yaml.safe_load((K8S / "base" / "secret.yaml").read_text())
    keyed = tiny_settings.model_copy(update={"api_keys": secret["stringData"]["GLASSBOX_API_KEYS"]})
    with TestClient(create_app(keyed)) as client:
        wait_ready(client)
        for path in ("/healthz", "/readyz", "/metrics"):
            status = status_of(client, path)
            assert status == 200, f"{path} answers {status} without an API key"
