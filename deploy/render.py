#!/usr/bin/env python3
"""Render a kustomization offline: a strict, documented subset of ``kustomize build``.

A ``kustomize``/``kubectl`` binary cannot be installed from the package registries Glassbox's CI can
reach, so the deploy checks render the overlays under ``deploy/k8s`` with this file and validate what it
prints (where a ``kubectl`` happens to exist, its output is compared too, see below). It implements only the
kustomization fields the overlays use and **fails** on any other field, so an overlay can never rely on a
feature that was silently not rendered:

- ``resources``: files and directories (a directory must hold a ``kustomization.yaml``), in order; files
  and patches must lie under the kustomization's folder (kustomize's default load restriction);
- ``namespace``: set on every namespaced object (not on ``Namespace`` and other cluster-scoped kinds);
- ``labels``: ``pairs`` added to ``metadata.labels`` (``includeSelectors`` and ``includeTemplates`` are
  rejected: selectors stay as written in the base);
- ``images``: ``name`` matched against container images, replaced by ``newName``/``newTag``/``digest``;
- ``patches``: ``path`` to a strategic-merge patch, one object per file (no ``target``; the patch names
  its object by ``apiVersion``/``kind``/``metadata.name``). Merge keys follow the Kubernetes API for the lists used
  here (containers, volumes, env, ports, volumeMounts, ...), patch items first as kustomize orders them;
  other lists are replaced. ``null`` deletes a
  field, ``$patch: delete`` on a whole object removes that object, ``$patch: replace`` replaces a map.

Where the real ``kustomize`` (or ``kubectl kustomize``) is on PATH, ``scripts/check-deploy.sh`` also
compares its output with this renderer's, object by object, and fails on any difference.

Usage: ``python deploy/render.py DIR`` prints a multi-document YAML stream;
``python deploy/render.py DIR --out FILE`` writes it to FILE.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "resources", "namespace", "labels", "images", "patches"}

CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "IngressClass",
    "RuntimeClass",
    "ValidatingWebhookConfiguration",
    "MutatingWebhookConfiguration",
    "APIService",
}

# Strategic-merge keys of the list fields that appear in Glassbox manifests (from the Kubernetes API's
# x-kubernetes-patch-merge-key). Lists not named here are replaced wholesale, as kustomize does for
# lists without a merge key.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
}
# A Service's ports merge on `port`, not `containerPort`.
SERVICE_MERGE_KEYS = {**MERGE_KEYS, "ports": "port"}


class RenderError(Exception):
    """The kustomization uses something this renderer does not implement, or is inconsistent."""


def _load_yaml_stream(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        docs = [doc for doc in yaml.safe_load_all(handle) if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise RenderError(f"{path}: every document must be a Kubernetes object with apiVersion and kind")
    return docs


def _kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise RenderError(f"{directory}: no kustomization.yaml")


def _object_id(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
    meta = obj.get("metadata") or {}
    return (group, obj["kind"], meta.get("namespace", ""), meta.get("name", ""))


def _merge_list(base: list[Any], patch: list[Any], key: str | None, keys: dict[str, str]) -> list[Any]:
    """Strategic merge of a list with a merge key, in kustomize's (kyaml's) order: the patch's items first,
    in patch order (merged into their base item when one has the same key), then the base items the patch
    does not name. ``$patch: delete`` items remove their base item."""
    if key is None or not all(isinstance(item, dict) for item in base + patch):
        return _strip_directives(copy.deepcopy(patch))
    by_key = {item.get(key): item for item in base}
    named = {item.get(key) for item in patch}
    merged: list[Any] = []
    for item in patch:
        if item.get("$patch") == "delete":
            continue
        original = by_key.get(item.get(key))
        merged.append(_merge(original, item, keys) if original is not None else _strip_directives(copy.deepcopy(item)))
    merged.extend(copy.deepcopy(item) for item in base if item.get(key) not in named)
    return merged


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if k != "$patch"}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def _merge(base: Any, patch: Any, keys: dict[str, str]) -> Any:
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return _strip_directives(copy.deepcopy(patch))
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip_directives(copy.deepcopy(patch))
    if directive not in (None, "merge"):
        raise RenderError(f"unsupported $patch directive {directive!r} inside an object")
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if key == "$patch":
            continue
        if value is None:
            merged.pop(key, None)
        elif key in merged and isinstance(merged[key], dict) and isinstance(value, dict):
            merged[key] = _merge(merged[key], value, keys)
        elif key in merged and isinstance(merged[key], list) and isinstance(value, list):
            merged[key] = _merge_list(merged[key], value, keys.get(key), keys)
        else:
            merged[key] = _strip_directives(copy.deepcopy(value))
    return merged


def _apply_patch(objects: list[dict[str, Any]], patch: dict[str, Any], source: Path) -> list[dict[str, Any]]:
    wanted = _object_id(patch)
    matches = [
        i
        for i, obj in enumerate(objects)
        if _object_id(obj)[:2] == wanted[:2]
        and _object_id(obj)[3] == wanted[3]
        and (not wanted[2] or _object_id(obj)[2] == wanted[2])
    ]
    if len(matches) != 1:
        raise RenderError(f"{source}: patch for {wanted} matches {len(matches)} objects, expected exactly one")
    position = matches[0]
    if patch.get("$patch") == "delete":
        return objects[:position] + objects[position + 1 :]
    keys = SERVICE_MERGE_KEYS if objects[position]["kind"] == "Service" else MERGE_KEYS
    result = list(objects)
    result[position] = _merge(objects[position], patch, keys)
    return result


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or (spec if obj["kind"] == "Pod" else {})
    return [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]


def _apply_images(objects: list[dict[str, Any]], images: list[dict[str, Any]], source: Path) -> None:
    for entry in images:
        unknown = set(entry) - {"name", "newName", "newTag", "digest"}
        if unknown or "name" not in entry:
            raise RenderError(f"{source}: unsupported images entry {entry}")
        for obj in objects:
            for container in _containers(obj):
                image = container.get("image", "")
                name, tag = image, ""
                if "@" in name:
                    name, tag = name.split("@", 1)[0], ""
                elif ":" in name.rsplit("/", 1)[-1]:
                    name, tag = name.rsplit(":", 1)
                if name != entry["name"]:
                    continue
                new_name = entry.get("newName", name)
                if "digest" in entry:
                    container["image"] = f"{new_name}@{entry['digest']}"
                elif "newTag" in entry:
                    container["image"] = f"{new_name}:{entry['newTag']}"
                else:
                    container["image"] = f"{new_name}:{tag}" if tag else new_name


def _inside(directory: Path, entry: str, kfile: Path) -> Path:
    """kustomize's default load restriction: files (not kustomization folders) must be under the root."""
    path = (directory / entry).resolve()
    if not path.is_relative_to(directory.resolve()):
        raise RenderError(f"{kfile}: {entry!r} is outside the kustomization root (kustomize rejects it)")
    return path


def render(directory: Path | str) -> list[dict[str, Any]]:
    """The objects that ``kustomize build DIRECTORY`` would print, in resource order."""
    directory = Path(directory)
    kfile = _kustomization_file(directory)
    with kfile.open(encoding="utf-8") as handle:
        spec = yaml.safe_load(handle) or {}
    unknown = set(spec) - SUPPORTED_FIELDS
    if unknown:
        raise RenderError(f"{kfile}: fields not supported by deploy/render.py: {sorted(unknown)}")

    objects: list[dict[str, Any]] = []
    for entry in spec.get("resources") or []:
        path = (directory / entry).resolve()
        if path.is_dir():
            objects.extend(render(path))
        elif path.is_file():
            objects.extend(_load_yaml_stream(_inside(directory, entry, kfile)))
        else:
            raise RenderError(f"{kfile}: resource {entry!r} does not exist")

    seen: set[tuple[str, str, str, str]] = set()
    for obj in objects:
        ident = _object_id(obj)
        if ident in seen:
            raise RenderError(f"{kfile}: duplicate object {ident}")
        seen.add(ident)

    for entry in spec.get("patches") or []:
        if set(entry) != {"path"}:
            raise RenderError(f"{kfile}: only `patches: - path: FILE` is supported, got {entry}")
        patch_path = _inside(directory, entry["path"], kfile)
        patches = _load_yaml_stream(patch_path)
        if len(patches) != 1:
            # kustomize 5.5 crashes on some multi-document patch files: one object per patch file.
            raise RenderError(f"{patch_path}: a patch file must hold exactly one object")
        objects = _apply_patch(objects, patches[0], patch_path)

    labels = spec.get("labels") or []
    for entry in labels:
        if set(entry) - {"pairs"}:
            raise RenderError(f"{kfile}: only `labels: - pairs: {{...}}` is supported, got {entry}")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])

    _apply_images(objects, spec.get("images") or [], kfile)

    namespace = spec.get("namespace")
    if namespace:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED_KINDS:
                obj.setdefault("metadata", {})["namespace"] = namespace
    return objects


def dump(objects: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="folder holding a kustomization.yaml")
    parser.add_argument("--out", type=Path, help="write the rendered stream here instead of stdout")
    args = parser.parse_args(argv)
    try:
        text = dump(render(args.directory))
    except RenderError as exc:
        print(f"render.py: {exc}", file=sys.stderr)
        return 2
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
