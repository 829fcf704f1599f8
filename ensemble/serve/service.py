"""What the served routes do, without HTTP: one in-process engine, its dynamic batcher and
its model cards. ``ensemble.serve.http`` maps routes onto these methods.

``models()`` describes each model as vLLM does (``serving_models.py``,
``show_available_models``): ``root`` is the adapter folder (the base model path for the
base), ``parent`` the base model's name, plus ``ensemble_fingerprint``, a hash of the
adapter's files, so a client can tell a retrained voter from the one it asked before.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ensemble.engines.base import Engine, GenOutput, GenRequest
from ensemble.serve.batcher import Batcher
from ensemble.serve.protocol import (
    ApiError,
    choice_request,
    completion_response,
    gen_requests,
    tokenize_args,
)
from ensemble.tokens import prompt_ids


def max_model_len(engine: Engine) -> int | None:
    """The context length, where the engine says (HF config, then the tokenizer's limit)."""
    config = getattr(getattr(engine, "model", None), "config", None)
    for value in (getattr(engine, "max_model_len", None), getattr(config, "max_position_embeddings", None),
                  getattr(getattr(engine, "tokenizer", None), "model_max_length", None)):
        if isinstance(value, int) and 0 < value < 1 << 40:
            return value
    return None


class Service:
    """The engine behind the routes. ``base_root`` / ``adapter_roots`` (voter name -> folder)
    are what ``/v1/models`` reports as each model's ``root``; without them the served name
    stands in."""

    def __init__(self, engine: Engine, *, base_model: str = "base", base_root: str | None = None,
                 adapter_roots: Mapping[str, str] | None = None, max_wait_s: float = 0.01,
                 max_batch: int = 64) -> None:
        self.engine, self.base_model, self.created = engine, base_model, int(time.time())
        self.tokenizer = getattr(engine, "tokenizer", None)
        self.engine_name = f"engine '{getattr(engine, 'name', type(engine).__name__)}'"
        self._cards = self._model_cards(base_root, dict(adapter_roots or {}))
        self.batcher = Batcher(engine, max_wait_s=max_wait_s, max_batch=max_batch)

    def _model_cards(self, base_root: str | None, roots: dict[str, str]) -> list[dict[str, Any]]:
        from ensemble.predictions.store import fingerprint

        def card(name: str, root: str, parent: str | None) -> dict[str, Any]:
            entry = {"id": name, "object": "model", "created": self.created, "owned_by": "ensemble",
                     "root": root, "parent": parent}
            if parent is not None and Path(root).is_dir():
                entry["ensemble_fingerprint"] = fingerprint(root)
            return entry

        base = {**card(self.base_model, base_root or self.base_model, None), "max_model_len": max_model_len(self.engine)}
        return [card(a, roots.get(a, a), self.base_model) for a in self.engine.adapters] + [base]

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [dict(c) for c in self._cards]}

    def adapter_for(self, model: Any) -> str | None:
        """Request ``model`` -> engine adapter (``None`` = base); unknown -> 404."""
        if not isinstance(model, str) or not model:
            raise ApiError(400, "field 'model' is required (a voter name or the base model name)", "model")
        if model == self.base_model:
            return None
        if model in self.engine.adapters:
            return model
        served = ", ".join([*self.engine.adapters, self.base_model])
        raise ApiError(404, f"The model '{model}' does not exist. Served: {served}", "model", "model_not_found")

    def _prompt_tokens(self, reqs: list[GenRequest]) -> int | None:
        """Real prompt token counts for ``usage`` (None when the engine has no tokenizer)."""
        tok = self.tokenizer
        if tok is None:
            return None
        return int(self.batcher.call(lambda: sum(len(prompt_ids(tok, r.prompt, r.messages)) for r in reqs)))

    def generate(self, body: dict[str, Any], *, chat: bool) -> tuple[list[GenOutput], int | None]:
        """Run a (chat) completion body through the batcher: engine outputs + prompt tokens."""
        reqs = gen_requests(body, self.adapter_for(body.get("model")), chat=chat)
        outs = self.batcher.submit("generate", reqs)
        return outs, self._prompt_tokens(reqs)

    def complete(self, body: dict[str, Any], *, chat: bool) -> dict[str, Any]:
        outs, prompt_tokens = self.generate(body, chat=chat)
        return completion_response(body, outs, chat=chat, prompt_tokens=prompt_tokens, engine_name=self.engine_name)

    def score(self, body: dict[str, Any]) -> dict[str, Any]:
        out = self.batcher.submit("score", [choice_request(body, self.adapter_for(body.get("model")))])[0]
        return {"object": "ensemble.choice_scores", "model": body["model"],
                "logliks": list(out.logliks), "probs": list(out.probs)}

    def tokenize(self, body: dict[str, Any]) -> dict[str, Any]:
        self.adapter_for(body.get("model", self.base_model))  # vLLM checks the name; the tokenizer is shared
        if self.tokenizer is None:
            raise ApiError(501, "this engine exposes no tokenizer, so /tokenize cannot be answered",
                           code="not_implemented", kind="server_error")
        args, tok = tokenize_args(body), self.tokenizer
        want_strs = args.pop("return_token_strs")
        ids = self.batcher.call(lambda: prompt_ids(tok, **args))
        strs = self.batcher.call(lambda: list(tok.convert_ids_to_tokens(ids))) if want_strs else None
        return {"count": len(ids), "max_model_len": max_model_len(self.engine), "tokens": ids, "token_strs": strs}

    def close(self) -> None:
        self.batcher.close()
