"""OpenAI request bodies -> engine requests, engine outputs -> OpenAI responses.

Also vLLM's tokenizer route (``POST /tokenize``, ``vllm/entrypoints/openai/protocol.py``):
``TokenizeCompletionRequest`` {model, prompt, add_special_tokens=true} or
``TokenizeChatRequest`` {model, messages, add_generation_prompt=true,
continue_final_message=false, add_special_tokens=false} -> ``TokenizeResponse`` {count,
max_model_len, tokens, token_strs}. Prompts are tokenized by ``ensemble.tokens``, as the
engines tokenize them (raw text gets the tokenizer's special tokens, chat messages go through
the chat template, or become plain text for a model without one); the request's flags override.
Left out, ``add_special_tokens`` follows that rule too: vLLM's defaults for a model with a chat
template, the tokenizer's BOS for messages as plain text.
"""
from __future__ import annotations

import time
import uuid
from typing import Any

from ensemble.engines.base import (
    ChoiceRequest,
    GenOutput,
    GenRequest,
    Sample,
    SamplingSettings,
)
from ensemble.serve.schemas import MAX_TOP_LOGPROBS


class ApiError(Exception):
    """An OpenAI-style error response: ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind


def _number(body: dict[str, Any], name: str, default: Any, lo: float, hi: float, *, integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return default
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise ApiError(400, f"field '{name}' must be {kind} in [{lo}, {hi}], got {value!r}", name)
    return value


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"field '{name}' must be true or false, got {value!r}", name)
    return value


def _optional_flag(body: dict[str, Any], name: str) -> bool | None:
    """A flag the client may leave out (or null): None then."""
    return None if body.get(name) is None else _flag(body, name, False)


def _sampling(body: dict[str, Any], chat: bool) -> SamplingSettings:
    """Body fields -> engine settings. Types and ranges were checked by ``ensemble.serve.schemas``;
    ``_number`` re-checks them so these functions also stand alone on plain dicts."""
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or not all(isinstance(x, str) and x for x in stop):
        raise ApiError(400, "field 'stop' must be a non-empty string or a list of them", "stop")
    if chat:
        want_logprobs = _flag(body, "logprobs", False)
        top = _number(body, "top_logprobs", 0, 0, MAX_TOP_LOGPROBS, integer=True)
        if top and not want_logprobs:
            raise ApiError(400, "when using `top_logprobs`, `logprobs` must be set to true", "top_logprobs")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    else:  # completions: logprobs = k means the chosen token's logprob plus the k most likely
        k = _number(body, "logprobs", None, 0, MAX_TOP_LOGPROBS, integer=True)
        want_logprobs, top = k is not None, k or 0
        max_tokens = body.get("max_tokens")
        if body.get("echo") and want_logprobs:
            raise ApiError(400, "echo with logprobs (prompt logprobs) is not supported: engines score options, "
                                "not prompt tokens; use POST /v1/ensemble/score_choices", "echo")
    max_tokens = _number({"max_tokens": max_tokens}, "max_tokens", 16, 1, 1 << 20, integer=True)
    return SamplingSettings(n=_number(body, "n", 1, 1, 128, integer=True),
                            temperature=float(_number(body, "temperature", 1.0, 0.0, 2.0)),
                            top_p=float(_number(body, "top_p", 1.0, 1e-9, 1.0)), max_new_tokens=max_tokens,
                            seed=_number(body, "seed", None, -(1 << 63), (1 << 64) - 1, integer=True),
                            stop=tuple(stop), logprobs=want_logprobs, top_logprobs=top)


def messages(body: dict[str, Any]) -> tuple[dict[str, str], ...]:
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "field 'messages' must be a non-empty list of {role, content}", "messages")
    out = []
    for m in msgs:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list):  # content parts: only text parts can be served
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ApiError(400, "only text content parts are supported", "messages")
            content = "".join(str(p.get("text", "")) for p in content)
        if not isinstance(content, str) or m.get("role") not in ("system", "user", "assistant"):
            raise ApiError(400, "each message needs role system|user|assistant and string content", "messages")
        out.append({"role": m["role"], "content": content})
    return tuple(out)


def prompts(body: dict[str, Any]) -> list[str]:
    prompt = body.get("prompt")
    items = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(items, list) or not items or not all(isinstance(p, str) for p in items):
        raise ApiError(400, "field 'prompt' must be a string or a non-empty list of strings "
                            "(token-id prompts are not supported)", "prompt")
    return items


def gen_requests(body: dict[str, Any], adapter: str | None, *, chat: bool) -> list[GenRequest]:
    """One GenRequest per prompt (completions may batch prompts; chat has one conversation)."""
    s = _sampling(body, chat)
    if chat:
        return [GenRequest(adapter=adapter, messages=messages(body), sampling=s)]
    return [GenRequest(adapter=adapter, prompt=p, sampling=s) for p in prompts(body)]


def choice_request(body: dict[str, Any], adapter: str | None) -> ChoiceRequest:
    """The ``/v1/ensemble/score_choices`` body: model, prompt | messages, options, mode,
    normalize, assistant_prefix (the ``ChoiceRequest`` fields)."""
    options = body.get("options")
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise ApiError(400, "field 'options' must be a non-empty list of strings", "options")
    mode, normalize = body.get("mode", "cloze"), body.get("normalize", "mean")
    if mode not in ("cloze", "letter") or normalize not in ("sum", "mean"):
        raise ApiError(400, "field 'mode' must be cloze|letter and 'normalize' sum|mean", "mode")
    prefix = body.get("assistant_prefix", "")
    if not isinstance(prefix, str):
        raise ApiError(400, "field 'assistant_prefix' must be a string", "assistant_prefix")
    if ("messages" in body) == ("prompt" in body):
        raise ApiError(400, "set exactly one of 'prompt' and 'messages'", "prompt")
    text = {"messages": messages(body)} if "messages" in body else {"prompt": prompts(body)[0]}
    return ChoiceRequest(adapter=adapter, options=tuple(options), mode=mode, normalize=normalize,
                         assistant_prefix=prefix, **text)


def top_of(sample: Sample, k: int, engine_name: str = "the engine") -> list[dict[str, float]]:
    """The sample's top-``k`` alternatives per token as ``{token: logprob}`` (k = 0: none)."""
    if k == 0 or sample.n_tokens == 0:
        return []
    if len(sample.top_logprobs) != len(sample.token_logprobs):
        raise ApiError(501, f"{engine_name} does not report top logprobs; ask with top_logprobs 0 "
                            "(completions: logprobs 0)", "top_logprobs", "not_implemented", "server_error")
    return [dict(step[:k]) for step in sample.top_logprobs]


def choice_logprobs(sample: Sample, settings: SamplingSettings, *, chat: bool,
                    engine_name: str = "the engine") -> dict[str, Any] | None:
    """One choice's ``logprobs`` object. Engines return logprob values and the alternatives'
    texts, not the chosen tokens' texts, so a chosen token's text is "" (chat) / null."""
    if not settings.logprobs:
        return None
    lps, top = list(sample.token_logprobs), top_of(sample, settings.top_logprobs, engine_name)
    if chat:
        alts = top or [{} for _ in lps]
        return {"content": [{"token": "", "logprob": lp, "bytes": None, "top_logprobs": [
            {"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in alt.items()]}
            for lp, alt in zip(lps, alts)]}
    return {"tokens": None, "token_logprobs": lps, "top_logprobs": top or None, "text_offset": None}


def usage(outs: list[GenOutput], prompt_tokens: int | None) -> dict[str, int | None]:
    """Real counts: every sample's generated tokens and the prompts' tokens (null when the
    engine has no tokenizer to count them: unknown, not zero)."""
    used = sum(s.n_tokens for out in outs for s in out.samples)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": used,
            "total_tokens": None if prompt_tokens is None else prompt_tokens + used}


def completion_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]


def completion_response(body: dict[str, Any], outs: list[GenOutput], *, chat: bool,
                        prompt_tokens: int | None = None, engine_name: str = "the engine") -> dict[str, Any]:
    """Engine outputs -> an OpenAI (chat) completion; choice index = prompt * n + sample."""
    choices = []
    for p, out in enumerate(outs):
        for j, s in enumerate(out.samples):
            choice: dict[str, Any] = {"index": p * len(out.samples) + j, "finish_reason": s.finish_reason,
                                      "logprobs": choice_logprobs(s, out.request.sampling, chat=chat,
                                                                  engine_name=engine_name)}
            if chat:
                choice["message"] = {"role": "assistant", "content": s.text}
            else:
                choice["text"] = (out.request.prompt or "") + s.text if body.get("echo") else s.text
            choices.append(choice)
    return {"id": completion_id(chat), "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": body["model"], "choices": choices,
            "usage": usage(outs, prompt_tokens)}


# --- tokenization (vLLM's /tokenize) -----------------------------------------------------------


def tokenize_args(body: dict[str, Any]) -> dict[str, Any]:
    """A /tokenize body -> ``ensemble.tokens.prompt_ids`` keyword arguments (plus
    ``return_token_strs``). ``add_special_tokens`` left out: None, the engines' rule."""
    if ("messages" in body) == ("prompt" in body):
        raise ApiError(400, "set exactly one of 'prompt' and 'messages'", "prompt")
    strs = _flag(body, "return_token_strs", False)
    if "prompt" in body:
        if not isinstance(body["prompt"], str):
            raise ApiError(400, "field 'prompt' must be a string", "prompt")
        return {"prompt": body["prompt"], "add_special_tokens": _optional_flag(body, "add_special_tokens"),
                "return_token_strs": strs}
    gen, cont = _flag(body, "add_generation_prompt", True), _flag(body, "continue_final_message", False)
    if gen and cont:  # vLLM's TokenizeChatRequest.check_generation_prompt
        raise ApiError(400, "Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
                       "continue_final_message")
    return {"messages": messages(body), "add_special_tokens": _optional_flag(body, "add_special_tokens"),
            "add_generation_prompt": gen, "continue_final_message": cont, "return_token_strs": strs}
