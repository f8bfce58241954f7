"""Readers for the deployment files: rendered kustomize overlays, the Dockerfile, compose, .dockerignore."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu", "dev")
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_GPU = ROOT / "docker-compose.gpu.yml"
SERVER = "glassbox"  # name of the Deployment, its container, the Service and the HPA


@cache
def _renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("glassbox_deploy_render", DEPLOY / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def render(overlay: str) -> list[dict[str, Any]]:
    """Objects of ``deploy/k8s/overlays/<overlay>`` (or ``base``), as ``kustomize build`` prints them."""
    directory = K8S / "base" if overlay == "base" else K8S / "overlays" / overlay
    return _renderer().render(directory)


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def server_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(objects, "Deployment", SERVER)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == SERVER)


def config_data(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The server's settings from its ConfigMap(s) and Secret(s) referenced with envFrom, in order."""
    container = server_container(objects)
    data: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            data.update(one(objects, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        if "secretRef" in source:
            data.update(one(objects, "Secret", source["secretRef"]["name"]).get("stringData", {}))
    for env in container.get("env", []):
        if "value" in env:
            data[env["name"]] = env["value"]
    return data


# --- Dockerfile ------------------------------------------------------------------------------------------


@dataclass
class Stage:
    name: str | None
    base: str
    env: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    workdir: str | None = None
    entrypoint: Any = None
    cmd: Any = None
    healthcheck: Any = None
    expose: list[str] = field(default_factory=list)
    copies: list[list[str]] = field(default_factory=list)  # [flags..., sources..., dest]


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) with line continuations joined and comment lines dropped, as Docker does."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comments inside a continued instruction are removed
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, rest = full.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def _substitute(value: str, env: dict[str, str], args: dict[str, str]) -> str:
    for key, val in {**args, **env}.items():
        value = value.replace("${" + key + "}", val).replace("$" + key, val)
    return value


def parse_dockerfile(path: Path = DOCKERFILE, build_args: dict[str, str] | None = None) -> list[Stage]:
    """Stages of a Dockerfile with what each inherits from its parent stage (ENV, USER, CMD, ...)."""
    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    args: dict[str, str] = {}
    overrides = build_args or {}
    for keyword, rest in _instructions(path.read_text(encoding="utf-8")):
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            value = overrides.get(name, default)
            (args if stages else global_args)[name] = value
            continue
        if keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            base = _substitute(words[0], {}, global_args)
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            parent = next((s for s in stages if s.name == base), None)
            stage = Stage(name=name, base=base)
            if parent:
                stage.env = dict(parent.env)
                stage.user, stage.workdir = parent.user, parent.workdir
                stage.entrypoint, stage.cmd = parent.entrypoint, parent.cmd
                stage.healthcheck, stage.expose = parent.healthcheck, list(parent.expose)
            stages.append(stage)
            args = {}
            continue
        stage = stages[-1]
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                stage.env[key] = _substitute(value, stage.env, args)
        elif keyword == "USER":
            stage.user = rest
        elif keyword == "WORKDIR":
            stage.workdir = rest
        elif keyword in ("ENTRYPOINT", "CMD"):
            try:
                parsed: Any = json.loads(rest)
            except json.JSONDecodeError:
                parsed = rest  # shell form: a string, which the exec-form test rejects
            if keyword == "ENTRYPOINT":
                stage.entrypoint = parsed
            else:
                stage.cmd = parsed
        elif keyword == "HEALTHCHECK":
            stage.healthcheck = rest
        elif keyword == "EXPOSE":
            stage.expose.extend(rest.split())
        elif keyword in ("COPY", "ADD"):
            stage.copies.append(shlex.split(rest))
    return stages


def final_stage(build_args: dict[str, str] | None = None) -> Stage:
    return parse_dockerfile(build_args=build_args)[-1]


def healthcheck_command(stage: Stage) -> list[str]:
    """The exec-form command of a HEALTHCHECK (options like --interval stripped)."""
    assert stage.healthcheck, "the final stage has no HEALTHCHECK"
    _, _, command = stage.healthcheck.partition("CMD ")
    parsed = json.loads(command)
    assert isinstance(parsed, list), "HEALTHCHECK must use the exec form"
    return [str(x) for x in parsed]


# --- .dockerignore ---------------------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(relpath: str, ignore_file: Path = ROOT / ".dockerignore") -> bool:
    """Whether Docker leaves ``relpath`` out of the build context: like moby's patternmatcher, each
    pattern in order that matches the path or one of its parent folders decides, ``!`` re-includes."""
    parts = relpath.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in ignore_file.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        regex = _pattern_regex(line.lstrip("!").strip().strip("/"))
        if any(regex.match(candidate) for candidate in candidates):
            excluded = not negated
    return excluded


# --- compose ---------------------------------------------------------------------------------------------


def compose(path: Path = COMPOSE) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def duration_s(value: str) -> float:
    """Compose durations such as ``45s``, ``1m30s``, ``500ms``."""
    total, number = 0.0, ""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    i = 0
    while i < len(value):
        ch = value[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = value[i : i + 2] if value[i : i + 2] in ("ms", "us") else ch
        total += float(number) * units[unit]
        number = ""
        i += len(unit)
    return total + (float(number) if number else 0.0)
