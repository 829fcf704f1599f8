"""Option scoring over an OpenAI-compatible server by token ids (vLLM's extras).

Token *text* cannot mark where a prompt ends and an option begins: a SentencePiece token
decoded alone drops its leading space ("▁B" decodes to "B"), and vLLM names prompt tokens
by decoding each one alone (``_get_decoded_token``, ``tokenizer.decode([token_id])``). So
the ``openai`` engine asks the server for ids and counts tokens instead of characters:

* ``POST /tokenize`` (vLLM ``serving_tokenization.py``; ``vote serve`` has it too) turns the
  context and context + option into ids, with the lm-eval split the in-process engines
  use: trailing spaces of the context move to the option, the option is the tail of
  tokenize(context + option) after the context's ids. Chat messages are rendered by the
  server's chat template (``continue_final_message`` for an assistant prefix).
* cloze: ``/v1/completions`` with the ids as the prompt, ``echo``, ``logprobs=1``,
  ``max_tokens=0``: the option's logprobs are the positions after the context's ids.
* letter: ``/v1/completions`` with ``max_tokens=1``, the top-20 logprobs and
  ``return_tokens_as_token_ids`` (keys "token_id:N"); a letter's logprob is the max over
  its single-token spellings ("A", " A") found by ``/tokenize`` -- as the vLLM engine does.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ensemble.engines.base import ChoiceRequest
from ensemble.engines.vllm import MISSING_LOGPROB, TOP_LOGPROBS
from ensemble.errors import EnsembleError


class NoTokenizeRoute(Exception):
    """The server has no ``/tokenize`` (HTTP 404): not vLLM / vote serve."""


class TokenScorer:
    """``score(request, model)`` for one server; ``post(path, body)`` is the client's raw POST
    (absolute URL), ``completions`` its ``completions.create``."""

    def __init__(self, root_url: str, post: Any, completions: Any, not_found: type[Exception]) -> None:
        self.root, self._post, self._completions, self._not_found = root_url, post, completions, not_found
        self._letters: dict[tuple[str, str], list[int]] = {}  # (model, letter) -> single-token ids

    def tokenize(self, model: str, **body: Any) -> list[int]:
        try:
            data = self._post(self.root + "/tokenize", cast_to=object, body={"model": model, **body})
        except self._not_found:
            raise NoTokenizeRoute from None
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list):
            raise EnsembleError(f"{self.root}/tokenize answered without a 'tokens' list; the server does not "
                                "tokenize as vLLM does (use vLLM or vote serve)")
        return [int(t) for t in tokens]

    def prompt_ids(self, r: ChoiceRequest, model: str, tail: str) -> list[int]:
        """Ids of the request's prompt followed by ``tail`` (chat: the assistant's reply so far)."""
        if r.messages is None:
            return self.tokenize(model, prompt=(r.prompt or "") + tail, add_special_tokens=True)
        if not tail:
            return self.tokenize(model, messages=list(r.messages), add_generation_prompt=True)
        msgs = [*r.messages, {"role": "assistant", "content": tail}]
        return self.tokenize(model, messages=msgs, add_generation_prompt=False, continue_final_message=True)

    def cloze(self, r: ChoiceRequest, model: str) -> tuple[float, ...]:
        if r.messages is None:  # the whole text is the prompt
            text = (r.prompt or "") + r.assistant_prefix

            def encode(s: str) -> list[int]:
                return self.tokenize(model, prompt=s, add_special_tokens=True)
        else:  # the text is the assistant's reply so far, after the rendered messages
            text = r.assistant_prefix

            def encode(s: str) -> list[int]:
                return self.prompt_ids(r, model, s)
        context = text.rstrip(" ")
        spaces = text[len(context):]
        prefix = encode(context)
        if not prefix:
            raise EnsembleError("choice request: the prompt is empty after tokenization; give it some text")
        rows = []
        for k, o in enumerate(r.options):
            cont = encode(context + spaces + o)[len(prefix):]
            if not cont:
                raise EnsembleError(f"choice option {k} ({o!r}) is empty after tokenization; give every option text")
            rows.append(prefix + cont)  # (prefix ids + option ids): exactly what the vLLM engine scores
        resp = self._completions(model=model, prompt=rows, echo=True, logprobs=1, max_tokens=0, temperature=0.0)
        choices = sorted(resp.choices, key=lambda c: c.index)
        if len(choices) != len(rows):
            raise EnsembleError(f"the server answered {len(choices)} choices for {len(rows)} option prompts")
        return tuple(_option_loglik(c, row, len(prefix), r.normalize) for c, row in zip(choices, rows))

    def letter(self, r: ChoiceRequest, model: str) -> tuple[float, ...]:
        ids = self.prompt_ids(r, model, r.assistant_prefix)
        spellings = [self._letter_ids(model, o) for o in r.options]
        resp = self._completions(model=model, prompt=ids, max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS,
                                 extra_body={"return_tokens_as_token_ids": True})
        top = _id_keyed((resp.choices[0].logprobs.top_logprobs or [None])[0])
        return tuple(max((top[t] for t in ts if t in top), default=MISSING_LOGPROB) for ts in spellings)

    def _letter_ids(self, model: str, letter: str) -> list[int]:
        key = (model, letter)
        if key not in self._letters:
            found = {tuple(self.tokenize(model, prompt=v, add_special_tokens=False)) for v in (letter, " " + letter)}
            single = sorted(t[0] for t in found if len(t) == 1)
            if not single:
                raise EnsembleError(f"letter option {letter!r} is not a single token for this tokenizer; "
                                    "use mode='cloze' for multi-token options")
            self._letters[key] = single
        return self._letters[key]


def _id_keyed(top: dict[str, float] | None) -> dict[int, float]:
    """{"token_id:N": logprob} -> {N: logprob} (vLLM's ``return_tokens_as_token_ids`` keys)."""
    if not top or not all(isinstance(k, str) and k.startswith("token_id:") for k in top):
        raise EnsembleError("the server ignored return_tokens_as_token_ids (its top logprobs are not keyed "
                            "'token_id:N'); letter scoring by token id needs vLLM")
    return {int(k.removeprefix("token_id:")): float(v) for k, v in top.items()}


def _option_loglik(choice: Any, row: Sequence[int], n_prefix: int, normalize: str) -> float:
    """Sum (or mean) of the echoed prompt logprobs at the option's positions n_prefix.."""
    lps = list(choice.logprobs.token_logprobs or []) if choice.logprobs else []
    if len(lps) != len(row):
        raise EnsembleError(f"the server returned {len(lps)} prompt logprobs for a {len(row)}-token prompt; it "
                            "does not support cloze scoring (echo with logprobs, max_tokens=0): use vLLM, "
                            "vote serve, or mode 'letter'")
    option = [float(x) for x in lps[n_prefix:]]
    total = sum(option)
    return total / len(option) if normalize == "mean" else total
