"""The client (and the CLI's client commands) import without torch or transformers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "accelerate", "safetensors", "fastapi", "uvicorn")


def _imported(code: str) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_client_imports_without_the_model_stack() -> None:
    modules = _imported("import service.client; from service.client import Client, AsyncClient")
    assert "service.client" in modules and "httpx" in modules
    assert not [m for m in modules if m.split(".")[0] in HEAVY]


def test_cli_client_commands_import_without_the_model_stack() -> None:
    code = (
        "import service.cli as c; p = c._parser(); p.parse_args(['explain', 'q']); p.parse_args(['explain-batch', 'x'])"
    )
    modules = _imported(code)
    assert not [m for m in modules if m.split(".")[0] in HEAVY]


def test_cli_help_runs_without_the_model_stack() -> None:
    code = (
        "import sys, runpy\nsys.argv = ['glassbox', 'explain', '--help']\n"
        "try:\n    runpy.run_module('service', run_name='__main__')\nexcept SystemExit:\n    pass"
    )
    modules = _imported(code)
    assert "service.cli" in modules and not [m for m in modules if m.split(".")[0] in HEAVY]


def _closure(requirements: list[str]) -> set[str]:
    """Every distribution that installing ``requirements`` pulls (from the installed packages' metadata)."""
    from importlib.metadata import PackageNotFoundError, requires

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        try:
            nested = requires(req.name) or []
        except PackageNotFoundError:
            continue
        for line in nested:
            child = Requirement(line)
            wanted = {"extra": ""}  # a dependency's own extras are not asked for
            if child.marker is None or child.marker.evaluate(wanted):
                todo.append(child)
    return seen


def test_the_base_distribution_is_the_client_and_pulls_no_model_stack() -> None:
    """`pip install glassbox` is the client-only install; the server is the `server` extra."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    declared = requires("glassbox") or []
    base = [r for r in declared if Requirement(r).marker is None]
    server = [Requirement(r).name for r in declared if Requirement(r).marker and "server" in str(Requirement(r).marker)]
    pulled = _closure(base)
    assert {"httpx", "pydantic", "numpy", "rich"} <= pulled
    assert not pulled & {"torch", "transformers", "accelerate", "safetensors", "fastapi", "uvicorn"}, pulled
    assert {"torch", "transformers", "fastapi", "uvicorn"} <= set(server)
