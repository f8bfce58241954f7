"""The dataset-run Job (deploy/k8s/jobs/explain-batch): its command is a real CLI invocation, it reaches the
server's Service, spreads shards over its pods, and its pods meet the same security bar as the server's."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

import pytest

from service.cli import _parser as cli_parser
from tests.deploy.manifests import K8S, SERVER, _renderer, find, one, render

JOB = "glassbox-explain-batch"


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    return list(_renderer().render(K8S / "jobs" / "explain-batch"))


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [container] = one(objects, "Job", JOB)["spec"]["template"]["spec"]["containers"]
    return container


def test_job_args_are_a_valid_explain_batch_command(objects: list[dict[str, Any]]) -> None:
    job = one(objects, "Job", JOB)["spec"]
    args = cli_parser().parse_args(_container(objects)["args"])  # the image's ENTRYPOINT is `glassbox`
    assert args.command == "explain-batch" and args.handler is not None
    assert job["completionMode"] == "Indexed" and args.shards == job["completions"]
    assert args.shard_index is None  # taken from $JOB_COMPLETION_INDEX in each pod
    assert 1 <= job["parallelism"] <= job["completions"] and job["backoffLimitPerIndex"] >= 1
    assert "{shard}" in args.out, "every index needs its own (resumable) output file"
    mounts = {m["mountPath"]: m["name"] for m in _container(objects)["volumeMounts"]}
    assert args.input.startswith("/data/") and args.out.startswith("/data/") and mounts["/data"] == "data"
    claim = next(v for v in job["template"]["spec"]["volumes"] if v["name"] == "data")["persistentVolumeClaim"]
    pvc = one(objects, "PersistentVolumeClaim", claim["claimName"])
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "parallel pods share the volume"


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_job_reaches_the_server_service_in_its_namespace(objects: list[dict[str, Any]], overlay: str) -> None:
    server = render(overlay)
    env = {e["name"]: e for e in _container(objects)["env"]}
    url = urlparse(env["GLASSBOX_URL"]["value"])
    service = one(server, "Service", SERVER)
    assert url.hostname == service["metadata"]["name"]
    assert (url.port or 80) in {p["port"] for p in service["spec"]["ports"]}
    namespaces = {o["metadata"]["namespace"] for o in objects}
    assert namespaces == {service["metadata"]["namespace"]}
    assert env["GLASSBOX_API_KEY"]["valueFrom"]["secretKeyRef"]["optional"] is True
    server_image = one(server, "Deployment", SERVER)["spec"]["template"]["spec"]["containers"][0]["image"]
    assert _container(objects)["image"].split(":")[0] == server_image.split(":")[0]


def test_job_pods_are_not_server_pods(objects: list[dict[str, Any]]) -> None:
    """The server's Service, PDB and NetworkPolicy must not select the batch pods."""
    labels = one(objects, "Job", JOB)["spec"]["template"]["metadata"]["labels"]
    server = render("cpu")
    selectors = [one(server, "Service", SERVER)["spec"]["selector"]]
    selectors += [p["spec"]["selector"]["matchLabels"] for p in find(server, "PodDisruptionBudget")]
    selectors += [p["spec"]["podSelector"]["matchLabels"] for p in find(server, "NetworkPolicy")]
    assert all(not sel.items() <= labels.items() for sel in selectors)


def test_job_pods_meet_the_restricted_pod_security_standard(objects: list[dict[str, Any]]) -> None:
    pod = one(objects, "Job", JOB)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["restartPolicy"] == "Never"  # required by backoffLimitPerIndex
    one(objects, "ServiceAccount", pod["serviceAccountName"])
    sc = _container(objects)["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True and not sc.get("privileged")
    resources = _container(objects)["resources"]
    assert resources["limits"]["memory"] and resources["requests"]["cpu"]


def test_job_network_policy_lets_the_pods_reach_the_server_port_only(objects: list[dict[str, Any]]) -> None:
    labels = one(objects, "Job", JOB)["spec"]["template"]["metadata"]["labels"]
    [policy] = [
        p for p in find(objects, "NetworkPolicy") if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    ]
    assert not policy["spec"].get("ingress") and "Ingress" in policy["spec"]["policyTypes"]
    server = render("cpu")
    server_pod = one(server, "Deployment", SERVER)["spec"]["template"]
    port = server_pod["spec"]["containers"][0]["ports"][0]["containerPort"]
    to_server = [r for r in policy["spec"]["egress"] if r.get("to")]
    assert [r["ports"][0]["port"] for r in to_server] == [port]
    assert to_server[0]["to"][0]["podSelector"]["matchLabels"].items() <= server_pod["metadata"]["labels"].items()
