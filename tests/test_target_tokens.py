"""A target (or contrast) is tokenized as it follows the prompt: a SentencePiece-style tokenizer with a dummy
prefix (Metaspace, prepend_scheme "first") starts a text tokenized alone with a word start that it does not
have after the prompt, so the tokens alone are not the tokens the model would see."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from fastapi.testclient import TestClient
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from service.api.app import create_app
from service.engine.continuation import tokenize_continuation
from service.settings import Settings
from tests.conftest import wait_ready
from tests.support.tiny_model import CORPUS

PROMPT = "The capital of France is Paris. The capital"
TARGET = "-city is Paris"


def metaspace_tokenizer(scheme: str = "first") -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator([*CORPUS, "-city"], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def _ids(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("scheme", ["first", "always"])
def test_continuation_is_tokenized_as_after_the_prompt(scheme: str) -> None:
    tokenizer = metaspace_tokenizer(scheme)
    alone = _ids(tokenizer, TARGET)
    in_context = _ids(tokenizer, PROMPT + TARGET)[len(_ids(tokenizer, PROMPT)) :]
    assert alone != in_context  # the premise: a dummy "▁" starts the target alone
    answer = tokenize_continuation(tokenizer, TARGET, "target", after=PROMPT)
    assert answer.ids == in_context
    assert "".join(answer.token_text(i) for i in range(len(answer.ids))) == TARGET
    assert _ids(tokenizer, PROMPT) + answer.ids == _ids(tokenizer, PROMPT + TARGET)


def test_continuation_alone_when_it_merges_with_the_prompt() -> None:
    """When the prompt's tokens do not come first in the joint tokenization, no split is exact: alone."""
    tokenizer = metaspace_tokenizer()
    prompt, target = "The capi", "tal"
    assert _ids(tokenizer, prompt + target)[: len(_ids(tokenizer, prompt))] != _ids(tokenizer, prompt)
    assert tokenize_continuation(tokenizer, target, "target", after=prompt).ids == _ids(tokenizer, target)


@pytest.fixture(scope="module")
def metaspace_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    folder = tmp_path_factory.mktemp("metaspace-model")
    tokenizer = metaspace_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    settings = Settings(models=f"tiny={folder}", cache_dir=tmp_path_factory.mktemp("cache"), device="cpu", offline=True)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def test_api_explain_target_tokens_are_those_after_the_prompt(metaspace_client: TestClient) -> None:
    tokenizer = metaspace_tokenizer()
    in_context = _ids(tokenizer, PROMPT + TARGET)[len(_ids(tokenizer, PROMPT)) :]
    body = {"prompt": PROMPT, "target": TARGET, "contrast": TARGET, "methods": ["attention"]}
    r = metaspace_client.post("/explain", json=body)
    assert r.status_code == 200, r.text
    tokens = r.json()["target_tokens"]
    assert [t["id"] for t in tokens] == in_context
    assert "".join(t["text"] for t in tokens) == TARGET
