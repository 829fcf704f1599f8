"""``stream: true``: a finished generation as OpenAI server-sent events.

Engines generate whole samples (one batched call for all voters), not token by token, so
the stream starts once the batch is done: per choice, (chat) a role chunk, then one chunk
with the sample's whole text and its logprobs, then a chunk with ``finish_reason``; with
``stream_options.include_usage`` a last chunk with empty ``choices`` and the ``usage``;
then ``data: [DONE]``. These are the chunk shapes of vLLM's ``serving_chat.py`` /
``serving_completion.py``, so any OpenAI client can read them.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from ensemble.engines.base import GenOutput
from ensemble.serve.protocol import choice_logprobs, completion_id, usage


def sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def chunks(body: dict[str, Any], outs: list[GenOutput], *, chat: bool, prompt_tokens: int | None = None,
           engine_name: str = "the engine") -> list[dict[str, Any]]:
    """The stream's JSON chunks, in order (without ``[DONE]``)."""
    head = {"id": completion_id(chat), "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()), "model": body["model"]}
    with_usage = bool((body.get("stream_options") or {}).get("include_usage"))

    def chunk(choice: dict[str, Any]) -> dict[str, Any]:
        return {**head, "choices": [choice], **({"usage": None} if with_usage else {})}

    out: list[dict[str, Any]] = []
    for p, gen in enumerate(outs):
        for j, s in enumerate(gen.samples):
            index = p * len(gen.samples) + j
            lps = choice_logprobs(s, gen.request.sampling, chat=chat, engine_name=engine_name)
            if chat:
                out.append(chunk({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                  "finish_reason": None}))
                out.append(chunk({"index": index, "delta": {"content": s.text}, "logprobs": lps,
                                  "finish_reason": None}))
                out.append(chunk({"index": index, "delta": {}, "logprobs": None, "finish_reason": s.finish_reason}))
            else:
                text = (gen.request.prompt or "") + s.text if body.get("echo") else s.text
                out.append(chunk({"index": index, "text": text, "logprobs": lps, "finish_reason": None}))
                out.append(chunk({"index": index, "text": "", "logprobs": None, "finish_reason": s.finish_reason}))
    if with_usage:
        out.append({**head, "choices": [], "usage": usage(outs, prompt_tokens)})
    return out


def events(body: dict[str, Any], outs: list[GenOutput], *, chat: bool, prompt_tokens: int | None = None,
           engine_name: str = "the engine") -> Iterator[str]:
    """The server-sent events of one streamed response. Chunks are built before the first
    event is sent, so an error (e.g. top logprobs the engine cannot give) is a JSON error
    response, not a broken stream."""
    built = chunks(body, outs, chat=chat, prompt_tokens=prompt_tokens, engine_name=engine_name)
    return iter([*map(sse, built), sse("[DONE]")])
