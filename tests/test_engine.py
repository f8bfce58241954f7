"""Unit tests of the engine: prompts and offsets, detokenization, sampling, the decode loop."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.common import ChatMessage
from service.engine.detokenize import IncrementalDetokenizer
from service.engine.prompt import build_prompt
from service.engine.sampling import SamplingParams, filter_logits
from service.errors import InvalidRequest
from service.models.loaded import LoadedModel
from service.serving.deadline import Deadline
from tests.support.run import generate
from tests.support.tiny_model import CHATML


def test_schemas_import_without_torch() -> None:
    code = "import sys, schemas.generate, schemas.common; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_prompt_raw_offsets_point_at_token_text(tiny_lm: LoadedModel) -> None:
    text = "The capital of France is Paris. Café 東京"
    prompt = build_prompt(tiny_lm.tokenizer, prompt=text)
    assert prompt.text == text and not prompt.is_chat
    rebuilt = "".join(prompt.token_text(i, tiny_lm.tokenizer) for i in range(len(prompt)))
    assert rebuilt == text
    assert [s for s, _ in prompt.offsets] == sorted(s for s, _ in prompt.offsets)


def test_prompt_chat_marks_messages_roles_and_template(tiny_lm: LoadedModel) -> None:
    messages = [
        ChatMessage(role="system", content="You explain things."),
        ChatMessage(role="user", content="What is the capital of France?"),
    ]
    prompt = build_prompt(tiny_lm.tokenizer, messages=messages)
    assert prompt.is_chat and prompt.text.endswith("<|im_start|>assistant\n")
    for i, content in enumerate(m.content for m in messages):
        start, end = prompt.messages[i]
        assert prompt.text[start:end] == content
        inside = [k for k in range(len(prompt)) if prompt.message_index[k] == i and not prompt.template[k]]
        assert "".join(prompt.token_text(k, tiny_lm.tokenizer) for k in inside) == content
        assert all(prompt.role[k] == messages[i].role for k in inside)
    specials = [k for k in range(len(prompt)) if prompt.special[k]]
    assert specials and all(prompt.template[k] for k in specials)
    # the generation prompt belongs to no message
    assert prompt.message_index[-1] is None and prompt.template[-1]


def test_prompt_chat_without_template_is_refused(tiny_lm: LoadedModel) -> None:
    tokenizer = tiny_lm.tokenizer
    saved = tokenizer.chat_template
    tokenizer.chat_template = None
    try:
        with pytest.raises(InvalidRequest, match="no chat template"):
            build_prompt(tokenizer, messages=[ChatMessage(role="user", content="hi")])
    finally:
        tokenizer.chat_template = saved


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=399), min_size=1, max_size=40))
def test_detokenizer_matches_full_decode(tiny_lm: LoadedModel, ids: list[int]) -> None:
    detok = IncrementalDetokenizer(tiny_lm.tokenizer)
    pieces = [detok.add(i) for i in ids]
    pieces.append(detok.flush())
    assert "".join(pieces) == tiny_lm.tokenizer.decode(ids, clean_up_tokenization_spaces=False)


def test_filter_logits_top_k_and_top_p() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    top_k = filter_logits(logits, SamplingParams(temperature=1.0, top_k=2))
    assert torch.isfinite(top_k).tolist() == [True, True, False, False]
    top_p = filter_logits(logits, SamplingParams(temperature=1.0, top_p=0.7))
    assert torch.isfinite(top_p).tolist() == [True, True, False, False]
    top_p_all = filter_logits(logits, SamplingParams(temperature=1.0, top_p=0.96))
    assert torch.isfinite(top_p_all).all()


def test_generate_greedy_matches_transformers_generate(tiny_lm: LoadedModel) -> None:
    prompt = build_prompt(tiny_lm.tokenizer, prompt="What is the capital of France?")
    ours = generate(tiny_lm, prompt, SamplingParams(max_new_tokens=12))
    with torch.inference_mode():
        ref = tiny_lm.model.generate(
            torch.tensor([prompt.ids]), max_new_tokens=12, do_sample=False, eos_token_id=list(tiny_lm.eos_ids)
        )
    ref_ids = [i for i in ref[0, len(prompt) :].tolist() if i not in tiny_lm.eos_ids]
    assert ours.ids == ref_ids[: len(ours.ids)]
    assert ours.finish_reason in ("length", "stop")


def test_generate_logprobs_match_full_forward(tiny_lm: LoadedModel) -> None:
    prompt = build_prompt(tiny_lm.tokenizer, prompt="Glassbox explains")
    out = generate(tiny_lm, prompt, SamplingParams(max_new_tokens=6, temperature=1.0, seed=3, top_logprobs=5))
    ids = prompt.ids + out.ids
    with torch.inference_mode():
        logits = tiny_lm.model(input_ids=torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    for k, token in enumerate(out.tokens):
        position = len(prompt) - 1 + k
        assert token.logprob == pytest.approx(float(logprobs[position, token.id]), abs=1e-4)
        values = [lp for _, lp in token.top]
        assert values == sorted(values, reverse=True) and len(values) == 5
        assert token.top[0][0] == int(torch.argmax(logprobs[position]))


def test_generate_seeded_sampling_is_reproducible(tiny_lm: LoadedModel) -> None:
    prompt = build_prompt(tiny_lm.tokenizer, prompt="Hello")
    params = SamplingParams(max_new_tokens=16, temperature=1.5, seed=1234)
    first = generate(tiny_lm, prompt, params)
    second = generate(tiny_lm, prompt, params)
    other = generate(tiny_lm, prompt, SamplingParams(max_new_tokens=16, temperature=1.5, seed=99))
    assert first.ids == second.ids and first.seed == 1234
    assert first.ids != other.ids


def test_generate_unseeded_sampling_reports_its_seed(tiny_lm: LoadedModel) -> None:
    prompt = build_prompt(tiny_lm.tokenizer, prompt="Hello")
    out = generate(tiny_lm, prompt, SamplingParams(max_new_tokens=8, temperature=1.0))
    assert out.seed is not None
    replay = generate(tiny_lm, prompt, SamplingParams(max_new_tokens=8, temperature=1.0, seed=out.seed))
    assert replay.ids == out.ids


def test_generate_stop_sequence_cuts_text_and_tokens(tiny_lm: LoadedModel) -> None:
    prompt = build_prompt(tiny_lm.tokenizer, prompt="Hello")
    full = generate(tiny_lm, prompt, SamplingParams(max_new_tokens=24, temperature=1.0, seed=7))
    assert len(full.text) > 6
    stop = full.text[3:5]
    cut = full.text.find(stop)
    streamed = []
    out = generate(
        tiny_lm,
        prompt,
        SamplingParams(max_new_tokens=24, temperature=1.0, seed=7, stop=(stop,)),
        on_token=streamed.append,
    )
    assert out.finish_reason == "stop_sequence"
    assert out.text == full.text[:cut]
    assert "".join(t.text for t in out.tokens) == out.text
    assert "".join(t.text for t in streamed) == out.text  # stop text is never streamed


def test_generate_streams_every_token_once(tiny_lm: LoadedModel) -> None:
    prompt = build_prompt(tiny_lm.tokenizer, prompt="Hello")
    streamed = []
    out = generate(
        tiny_lm, prompt, SamplingParams(max_new_tokens=10, temperature=1.0, seed=5), on_token=streamed.append
    )
    assert [t.id for t in streamed] == out.ids
    assert [t.offset for t in out.tokens] == [
        len("".join(t.text for t in out.tokens[:k])) for k in range(len(out.tokens))
    ]


def test_generate_cancel_stops_at_next_token(tiny_lm: LoadedModel) -> None:
    prompt = build_prompt(tiny_lm.tokenizer, prompt="Hello")
    count = []
    deadline = Deadline(60)
    out = generate(
        tiny_lm,
        prompt,
        SamplingParams(max_new_tokens=50, temperature=1.0, seed=1),
        on_token=lambda token: (count.append(token), len(count) >= 3 and deadline.cancel()),
        deadline=deadline,
    )
    # seed 1's first tokens are whole characters, so each is streamed as it is chosen
    assert all(t.text for t in out.tokens[:3]), out.tokens
    assert out.finish_reason == "cancelled" and len(out.tokens) == 3


def test_prompt_chat_injected_system_text_belongs_to_no_message(tiny_lm: LoadedModel) -> None:
    tokenizer = tiny_lm.tokenizer
    saved = tokenizer.chat_template
    tokenizer.chat_template = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are helpful.<|im_end|>\n{% endif %}" + CHATML
    )
    try:
        prompt = build_prompt(tokenizer, messages=[ChatMessage(role="user", content="hello world")])
    finally:
        tokenizer.chat_template = saved
    injected = prompt.text.index("You are helpful.")
    header = prompt.text.index("<|im_start|>user")
    for k, (start, _) in enumerate(prompt.offsets):
        if start < header:
            assert prompt.message_index[k] is None and prompt.template[k], (k, start, injected)
        elif start < prompt.messages[0][1]:
            assert prompt.message_index[k] == 0


def test_streamed_text_includes_an_incomplete_character_flushed_at_the_end(tiny_lm: LoadedModel) -> None:
    """Before: the last token's held-back bytes (decoded to U+FFFD at the end) went into the final text but
    never into the stream, since that token had been streamed with empty text."""
    from service.engine.generation import SequenceDecoder
    from service.engine.sampling import Pick

    tok = tiny_lm.tokenizer
    lead = next(i for i in range(tok.vocab_size) if tok.decode([i]) == "\ufffd")  # half of a UTF-8 character
    word = tok.encode("Hi", add_special_tokens=False)
    streamed: list[str] = []
    decoder = SequenceDecoder(tiny_lm, SamplingParams(max_new_tokens=len(word) + 1), lambda t: streamed.append(t.text))
    for token_id in [*word, lead]:
        decoder.accept(Pick(token_id, 0.0, []))
    out = decoder.finish(0.0, 0.0)
    assert out.text.endswith("\ufffd")
    assert "".join(streamed) == out.text
