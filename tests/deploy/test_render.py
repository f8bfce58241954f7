"""deploy/render.py, the offline kustomize subset the deploy checks validate: it must follow kustomize's
rules for what the overlays use and refuse everything else."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.manifests import K8S, _renderer

OVERLAY_DIRS = ["base", "overlays/cpu", "overlays/gpu", "overlays/dev"]

DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "app"},
    "spec": {
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "app",
                        "image": "app:1",
                        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                        "resources": {"limits": {"cpu": "1"}},
                    },
                    {"name": "sidecar", "image": "side:1"},
                ]
            }
        }
    },
}
SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "app"},
    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8000}]},
}
NAMESPACE = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns"}}


def write(folder: Path, name: str, *docs: object) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(yaml.safe_dump_all(docs))


def kustomization(folder: Path, **fields: object) -> Path:
    write(
        folder,
        "kustomization.yaml",
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", **fields},
    )
    return folder


def test_overlay_patches_merge_by_key_and_set_namespace_labels_images(tmp_path: Path) -> None:
    base = tmp_path / "base"
    write(base, "all.yaml", DEPLOYMENT, SERVICE)
    kustomization(base, resources=["all.yaml"])
    overlay = tmp_path / "overlay"
    write(overlay, "ns.yaml", NAMESPACE)
    write(
        overlay,
        "patch.yaml",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "app"},
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "app",
                                "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
                                "resources": {"limits": {"nvidia.com/gpu": 1}},
                            }
                        ]
                    }
                }
            },
        },
    )
    write(overlay, "svc.yaml", {**SERVICE, "spec": {"ports": [{"port": 80, "name": "web"}]}})
    kustomization(
        overlay,
        namespace="ns",
        resources=["ns.yaml", "../base"],
        labels=[{"pairs": {"team": "x"}}],
        images=[{"name": "app", "newName": "reg/app", "newTag": "2"}],
        patches=[{"path": "patch.yaml"}, {"path": "svc.yaml"}],
    )
    objects = {o["kind"]: o for o in _renderer().render(overlay)}
    assert "namespace" not in objects["Namespace"]["metadata"]
    assert objects["Deployment"]["metadata"]["namespace"] == "ns"
    assert objects["Service"]["metadata"]["labels"] == {"team": "x"}
    app, sidecar = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert app["image"] == "reg/app:2" and sidecar["image"] == "side:1"
    # kustomize order: the patch's items first, then the base items it does not name
    assert app["env"] == [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}, {"name": "A", "value": "1"}]
    assert app["resources"]["limits"] == {"cpu": "1", "nvidia.com/gpu": 1}
    assert app["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert objects["Service"]["spec"]["ports"] == [{"name": "web", "port": 80, "targetPort": 8000}]


def test_delete_directives_and_null(tmp_path: Path) -> None:
    base = tmp_path / "base"
    write(base, "all.yaml", DEPLOYMENT, SERVICE)
    write(base, "drop-svc.yaml", {**SERVICE, "$patch": "delete"})
    write(
        base,
        "trim.yaml",
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "app"},
            "spec": {
                "template": {
                    "spec": {
                        "containers": [{"name": "sidecar", "$patch": "delete"}, {"name": "app", "resources": None}]
                    }
                }
            },
        },
    )
    kustomization(base, resources=["all.yaml"], patches=[{"path": "drop-svc.yaml"}, {"path": "trim.yaml"}])
    objects = _renderer().render(base)
    assert [o["kind"] for o in objects] == ["Deployment"]
    containers = objects[0]["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["app"] and "resources" not in containers[0]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"namePrefix": "x-"}, "not supported"),
        ({"resources": ["../outside.yaml"]}, "outside the kustomization root"),
        ({"resources": ["missing.yaml"]}, "does not exist"),
        ({"patches": [{"path": "two.yaml"}]}, "exactly one object"),
        ({"patches": [{"path": "p.yaml", "target": {"kind": "Deployment"}}]}, "only `patches: - path: FILE`"),
        ({"labels": [{"pairs": {"a": "b"}, "includeSelectors": True}]}, "only `labels"),
    ],
)
def test_unsupported_or_unsafe_kustomizations_fail(tmp_path: Path, fields: dict[str, object], message: str) -> None:
    write(tmp_path, "outside.yaml", SERVICE)
    folder = tmp_path / "k"
    write(folder, "two.yaml", SERVICE, DEPLOYMENT)
    kustomization(folder, **fields)
    with pytest.raises(_renderer().RenderError, match=message):
        _renderer().render(folder)


@pytest.mark.skipif(not shutil.which("kubectl"), reason="no kubectl (kustomize) to compare with")
@pytest.mark.parametrize("scenario", ["merge", "delete", *OVERLAY_DIRS])
def test_same_output_as_kubectl_kustomize(tmp_path: Path, scenario: str) -> None:
    if scenario == "merge":
        test_overlay_patches_merge_by_key_and_set_namespace_labels_images(tmp_path)
        folder = tmp_path / "overlay"
    elif scenario == "delete":
        test_delete_directives_and_null(tmp_path)
        folder = tmp_path / "base"
    else:
        folder = K8S / scenario
    real = subprocess.run(["kubectl", "kustomize", str(folder)], check=True, capture_output=True, text=True)

    def by_id(objects: list[dict]) -> dict[tuple[str, str, str], dict]:
        return {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o for o in objects}

    ours = _renderer().render(folder)
    assert by_id([d for d in yaml.safe_load_all(real.stdout) if d]) == by_id(ours)
