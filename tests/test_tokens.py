"""ensemble.tokens on a hand-built tokenizer whose ids are spelled out below.

The tokenizer is a byte-level BPE with a fixed vocabulary (so every id is known) and
a post-processor that prepends BOS when special tokens are asked for; built with and
without a chat template. The HF engine, the vLLM engine and training all call this
module; the last tests check that they agree for a model without a chat template
(before, one raised, one crashed inside ``apply_chat_template``, one used plain text).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from ensemble import tokens
from ensemble.errors import EnsembleError

SPECIALS = ["<|end|>", "<|bos|>", "<|user|>", "<|assistant|>"]  # ids 0-3 (EOS, BOS, ...)
CHARS = ["Ġ", "Ċ", "A", "B", "Q", ":", "?", "2", "4", "f", "i", "v", "e", "x"]  # ids 4-17 ("Ġ" = " ", "Ċ" = "\n")
MERGED = ["ĠA", "Ġ4", "Ġf", "iv", "ive", "Ġfive"]  # ids 18-23
EOS, BOS, USER, ASSISTANT, SPACE, NL = 0, 1, 2, 3, 4, 5
A, B, Q, COLON, QMARK, TWO, FOUR, X = 6, 7, 8, 9, 10, 11, 12, 17
SP_A, SP_FOUR, SP_FIVE = 18, 19, 23
CHAT = ("<|bos|>{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
MSGS = ({"role": "user", "content": "Q: 2?"},)


def make_tok(chat_template: str | None) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS + MERGED)}
    merges = [("Ġ", "A"), ("Ġ", "4"), ("Ġ", "f"), ("i", "v"), ("iv", "e"), ("Ġf", "ive")]
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.add_special_tokens(SPECIALS)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", BOS)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|end|>")
    fast.chat_template = chat_template
    return fast


@pytest.fixture(scope="module")
def chat() -> Any:
    return make_tok(CHAT)


@pytest.fixture(scope="module")
def plain() -> Any:
    return make_tok(None)


def test_the_vocabulary_is_what_the_tests_spell_out(plain) -> None:
    assert plain.encode("Q: 2?", add_special_tokens=False) == [Q, COLON, SPACE, TWO, QMARK]
    assert plain.encode(" A", add_special_tokens=False) == [SP_A]
    assert plain.encode(" B", add_special_tokens=False) == [SPACE, B]  # no " B" token
    assert plain.encode("x", add_special_tokens=True) == [BOS, X]


# --- prompt -> ids ------------------------------------------------------------------------


def test_chat_template_renders_the_prompt_and_adds_no_second_bos(chat) -> None:
    assert tokens.render(chat, MSGS) == ("<|bos|><|user|>Q: 2?<|end|>\n<|assistant|>", False)
    ids = [BOS, USER, Q, COLON, SPACE, TWO, QMARK, EOS, NL, ASSISTANT]
    assert tokens.prompt_ids(chat, messages=MSGS) == ids
    assert tokens.prompt_ids(chat, prompt="Q: 2?") == [BOS, Q, COLON, SPACE, TWO, QMARK]  # raw text: BOS added


def test_without_a_chat_template_messages_are_plain_text_with_bos(plain) -> None:
    msgs = ({"role": "system", "content": ""}, *MSGS)  # an empty system message leaves no gap
    assert tokens.render(plain, msgs) == ("Q: 2?\n\n", True)
    ids = [BOS, Q, COLON, SPACE, TWO, QMARK, NL, NL]
    assert tokens.prompt_ids(plain, messages=msgs) == ids
    assert tokens.prompt_ids(plain, prompt="Q: 2?\n\n") == ids  # the same as sending that prompt


def test_request_needs_exactly_one_of_prompt_and_messages(chat) -> None:
    for prompt, messages in [(None, None), ("x", MSGS)]:
        with pytest.raises(EnsembleError, match=r"request: set exactly one of 'prompt' and 'messages'"):
            tokens.request_text(chat, prompt, messages)
    assert tokens.request_text(chat, "Q", None, suffix=":") == ("Q:", True)


# --- cloze split ----------------------------------------------------------------------------


def test_cloze_split_moves_trailing_spaces_into_the_continuation(plain) -> None:
    # Encoding "x " alone would give [x, " "] and leave "4" as the continuation; lm-eval's
    # split scores " 4" (one token, as the model writes it after "x").
    assert plain.encode("x ", add_special_tokens=False) == [X, SPACE]
    assert tokens.cloze_ids(plain, "x ", False, ["4", "five"]) == ([X], [[SP_FOUR], [SP_FIVE]])
    assert tokens.cloze_ids(plain, "x", False, [" 4", " five"]) == ([X], [[SP_FOUR], [SP_FIVE]])
    assert tokens.cloze_ids(plain, "x", True, [" 4"]) == ([BOS, X], [[SP_FOUR]])


def test_cloze_after_chat_prompt_and_assistant_prefix(chat) -> None:
    text, special = tokens.request_text(chat, None, MSGS, suffix="A:")
    context, conts = tokens.cloze_ids(chat, text, special, [" 4", " five", " B"])
    assert context == [BOS, USER, Q, COLON, SPACE, TWO, QMARK, EOS, NL, ASSISTANT, A, COLON]
    assert conts == [[SP_FOUR], [SP_FIVE], [SPACE, B]]


def test_cloze_empty_context_starts_from_eos_and_empty_option_is_refused(plain) -> None:
    assert tokens.cloze_ids(plain, "", False, [" 4"]) == ([EOS], [[SP_FOUR]])
    assert tokens.context_ids(plain, "", False) == [EOS]
    with pytest.raises(EnsembleError, match=r"choice request 'q1': option 1 \(''\) is empty after tokenization; "
                                            r"give every option some text"):
        tokens.cloze_ids(plain, "x", False, [" 4", ""], where="choice request 'q1'")


# --- option letters ------------------------------------------------------------------------


def test_letter_ids_are_the_single_token_spellings(plain) -> None:
    assert tokens.letter_ids(plain, "A") == [A, SP_A]  # "A" and " A" both single tokens
    assert tokens.letter_ids(plain, " A") == [A, SP_A]  # the option may arrive with its separator
    assert tokens.letter_ids(plain, "B") == [B]  # " B" is two tokens: only "B" counts
    with pytest.raises(EnsembleError, match=r"letter option 'AB' is not a single token for this tokenizer; "
                                            r"use mode='cloze'"):
        tokens.letter_ids(plain, "AB")


# --- the three callers agree ---------------------------------------------------------------


def test_training_trains_on_the_tokens_the_engines_score(chat, plain) -> None:
    from ensemble.training.recipe import Example, choice_tokens, encode

    ex = Example("q", MSGS, target="A: 4", prefix="A:", choices=(" 4", " five"), gold=0)
    for tok in (chat, plain):
        text, special = tokens.render(tok, MSGS)
        prompt = tokens.prompt_ids(tok, messages=MSGS)
        seq, n_answer = encode(tok, ex, 256)
        assert seq == prompt + [A, COLON, SP_FOUR, EOS] and n_answer == 4  # answer = prefix + gold + EOS
        context, conts = choice_tokens(tok, ex, 256)
        assert (context, conts) == tokens.cloze_ids(tok, text + "A:", special, ex.choices)
        assert seq[:-1] == context + conts[ex.gold]  # the trained sequence is the scored one


@dataclass
class _Completion:
    index: int = 0
    text: str = ""
    token_ids: list[int] = field(default_factory=lambda: [EOS])
    logprobs: Any = None
    finish_reason: str = "stop"


@dataclass
class _Output:
    outputs: list[_Completion]


class _StubLLM:
    """Just enough of ``vllm.LLM`` to see which token ids the engine sends."""

    tokenizer: Any = None

    def __init__(self, model: str, **kwargs: Any) -> None:
        self.sent: list[list[int]] = []

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def generate(self, prompts: list[dict], params: Any, lora_request: Any = None, use_tqdm: bool = False) -> list:
        self.sent += [p["prompt_token_ids"] for p in prompts]
        return [_Output([_Completion()]) for _ in prompts]


@pytest.mark.parametrize("template", [CHAT, None])
def test_vllm_engine_and_training_send_the_same_prompt_ids(template) -> None:
    from ensemble.engines.base import EngineSpec, GenRequest
    from ensemble.engines.vllm import VLLMEngine
    from ensemble.training.recipe import prompt_ids

    tok = make_tok(template)
    _StubLLM.tokenizer = tok
    engine = VLLMEngine(EngineSpec("vllm", "/m", {}), _StubLLM, lambda **kw: kw, lambda *a: a)
    engine.generate([GenRequest(adapter=None, messages=MSGS)])
    expected = ([BOS, USER, Q, COLON, SPACE, TWO, QMARK, EOS, NL, ASSISTANT] if template
                else [BOS, Q, COLON, SPACE, TWO, QMARK, NL, NL])
    assert engine.llm.sent == [expected] == [prompt_ids(tok, MSGS)]


def test_hf_engine_sends_the_same_prompt_ids(tiny_model) -> None:
    """The HF engine on a tiny model whose vocabulary covers these ids: a request's
    messages score exactly like the prompt ids above sent as text."""
    from transformers import AutoModelForCausalLM

    from ensemble.engines.base import ChoiceRequest
    from ensemble.engines.hf.engine import HFEngine

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    # As a raw prompt the tokenizer adds BOS; the chat template writes its own.
    for template, as_text in [(CHAT, "<|user|>Q: 2?<|end|>\n<|assistant|>"), (None, "Q: 2?\n\n")]:
        engine = HFEngine.from_model(model, make_tok(template))
        via_messages, via_text, other = engine.score_choices([
            ChoiceRequest(None, (" 4", " five"), messages=MSGS, assistant_prefix="A:"),
            ChoiceRequest(None, (" 4", " five"), prompt=as_text + "A:"),
            ChoiceRequest(None, (" 4", " five"), prompt="x A:")])
        assert via_messages.logliks == via_text.logliks != other.logliks


# --- vote serve's /tokenize ----------------------------------------------------------------------


@pytest.mark.parametrize("template", ["chat", "plain"])
def test_serve_tokenize_route_gives_the_ids_of_this_module(template, request) -> None:
    """/tokenize (vLLM's route on `vote serve`) answers the ids the engines send. Before, it
    tokenized by itself and, for a model without a chat template, failed on messages."""
    from conftest_serve import FakeEngine, http, loopback

    tok = request.getfixturevalue(template)
    with loopback(FakeEngine(tokenizer=tok)) as server:
        route = server.url.removesuffix("/v1") + "/tokenize"
        for body, text in (({"messages": list(MSGS)}, {"messages": MSGS}), ({"prompt": "Q: 2?"}, {"prompt": "Q: 2?"})):
            status, resp = http("POST", route, {"model": "a", **body})
            assert status == 200, resp
            assert resp["tokens"] == tokens.prompt_ids(tok, **text)
    assert tokens.prompt_ids(tok, messages=MSGS)[0] == BOS  # the template's BOS, or the tokenizer's for plain text
