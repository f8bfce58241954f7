"""Fixtures for the explain tests: a tiny float64 Llama for the maths, a longer-context tiny served model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from transformers import LlamaConfig, LlamaForCausalLM

from service.api.app import create_app
from service.api.routes import explain as explain_route
from service.explain.task import Chunks, Task
from service.models.loaded import LoadedModel
from service.models.loader import load_model
from service.settings import Settings
from tests.conftest import wait_ready
from tests.support.tiny_model import build_tokenizer

VOCAB = 48


@pytest.fixture(scope="session")
def model() -> LlamaForCausalLM:
    """Random tiny Llama in float64, so comparisons with references test the algorithm, not rounding."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    m = LlamaForCausalLM(config).double().eval()
    with torch.no_grad():
        m.model.embed_tokens.weight.mul_(3)
    m.requires_grad_(False)
    return m


@pytest.fixture(scope="session")
def ids() -> tuple[int, ...]:
    generator = torch.Generator().manual_seed(1)
    return tuple(torch.randint(0, VOCAB, (14,), generator=generator).tolist())


def make_task(ids: tuple[int, ...], methods: dict[str, Any], **kw: Any) -> Task:
    """A task over ``ids`` with a 9-token prompt; every answer token a row, token units."""
    prompt_len = kw.pop("prompt_len", 9)
    defaults: dict[str, Any] = {
        "rows": tuple(range(prompt_len, len(ids))),
        "span": (prompt_len, len(ids)),
        "scopes": frozenset({"tokens", "sequence"}),
        "units": tuple((p,) for p in range(len(ids))),
        "chunks": Chunks(targets=3, steps=3, sequences=4),
    }
    defaults.update(kw)
    return Task(ids=ids, prompt_len=prompt_len, methods=methods, **defaults)


def build_long_tiny_model(folder: Path) -> Path:
    """The project's tiny model recipe with a 1,024-token context (for size tests)."""
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    m = LlamaForCausalLM(config)
    with torch.no_grad():
        m.model.embed_tokens.weight.mul_(4)
    m.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def explain_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    folder = build_long_tiny_model(tmp_path_factory.mktemp("tiny-long"))
    return Settings(
        models=f"tiny={folder}", cache_dir=tmp_path_factory.mktemp("cache"), device="cpu", offline=True, warmup=False
    )


@pytest.fixture(scope="session")
def lm(explain_settings: Settings) -> LoadedModel:
    name, source = explain_settings.model_specs()[0]
    return load_model(name, source, explain_settings)


class StubRegistry:
    """The use case needs only ``get``."""

    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm

    def get(self, name: str | None) -> LoadedModel:
        return self.lm


@pytest.fixture(scope="session")
def registry(lm: LoadedModel) -> StubRegistry:
    return StubRegistry(lm)


@pytest.fixture(scope="session")
def client(explain_settings: Settings) -> Iterator[TestClient]:
    app = create_app(explain_settings)
    if not any(getattr(r, "path", None) == "/explain" for r in app.routes):
        app.include_router(explain_route.router)
    with TestClient(app) as c:
        wait_ready(c)
        yield c
