"""Fake ``vllm serve``: vLLM's OpenAI routes over the fake ``LLM`` (loopback, stdlib HTTP).

Shapes follow vllm/entrypoints/openai (protocol.py, serving_completion.py, serving_chat.py,
serving_models.py, serving_tokenization.py):

* ``GET /v1/models``: ModelCards, owned_by "vllm"; the base has ``root`` = model path and
  ``max_model_len``; a LoRA has ``root`` = its folder and ``parent`` = the base name.
* ``POST /tokenize``: {model, prompt, add_special_tokens=true} or {model, messages,
  add_generation_prompt=true, continue_final_message=false, add_special_tokens=false}
  -> {count, max_model_len, tokens, token_strs}.
* ``POST /v1/completions``: prompt = text, texts, token ids or lists of token ids; echo
  with ``max_tokens=0`` returns prompt logprobs only; token strings are each token decoded
  alone, or "token_id:N" with ``return_tokens_as_token_ids``.
* ``POST /v1/chat/completions``: messages rendered with the chat template; logprobs /
  top_logprobs in the chat shape.

The HTTP side (loopback, port 0 unless given; POST bodies recorded) is the tests' ``JsonServer``.
"""
from __future__ import annotations

from conftest_serve import JsonServer  # tests/ is on sys.path whenever the fake vllm is

from ...lora.request import LoRARequest
from ...sampling_params import SamplingParams
from ..llm import LLM


class FakeVLLMServer(JsonServer):
    def __init__(self, llm: LLM, base: str, loras: dict[str, str], max_model_len: int = 2048, port: int = 0) -> None:
        self.llm, self.base, self.max_model_len = llm, base, max_model_len
        self.tok = llm.get_tokenizer()
        self.loras = {name: LoRARequest(name, i + 1, path) for i, (name, path) in enumerate(loras.items())}
        super().__init__(self._post, lambda: (200, self.models()), port)

    def _post(self, path: str, body: dict) -> tuple[int, dict]:
        route = {"/tokenize": self.tokenize, "/v1/completions": self.completions, "/v1/chat/completions": self.chat}.get(path)
        if route is None:
            return 404, {"error": {"message": "Not Found", "type": "NotFoundError", "code": 404}}
        try:
            return 200, route(body)
        except (ValueError, KeyError) as e:
            return 400, {"error": {"message": str(e), "type": "BadRequestError", "code": 400}}

    # --- routes -------------------------------------------------------------------------------
    def models(self) -> dict:
        base = {"id": self.base, "object": "model", "created": 0, "owned_by": "vllm", "root": self.llm.model,
                "parent": None, "max_model_len": self.max_model_len}
        cards = [{"id": n, "object": "model", "created": 0, "owned_by": "vllm", "root": lr.lora_path,
                  "parent": self.base, "max_model_len": None} for n, lr in self.loras.items()]
        return {"object": "list", "data": [base, *cards]}

    def _lora(self, model: str) -> LoRARequest | None:
        if model == self.base:
            return None
        if model not in self.loras:
            raise ValueError(f"The model `{model}` does not exist.")
        return self.loras[model]

    def _chat_ids(self, body: dict, add_special_default: bool) -> list[int]:
        gen, cont = body.get("add_generation_prompt", True), body.get("continue_final_message", False)
        if gen and cont:
            raise ValueError("Cannot set both `continue_final_message` and `add_generation_prompt` to True.")
        text = self.tok.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=gen,
                                            continue_final_message=cont)
        return self.tok.encode(text, add_special_tokens=body.get("add_special_tokens", add_special_default))

    def tokenize(self, body: dict) -> dict:
        self._lora(body.get("model") or self.base)
        if "messages" in body:
            ids = self._chat_ids(body, False)
        else:
            ids = self.tok.encode(body["prompt"], add_special_tokens=body.get("add_special_tokens", True))
        strs = self.tok.convert_ids_to_tokens(ids) if body.get("return_token_strs") else None
        return {"count": len(ids), "max_model_len": self.max_model_len, "tokens": ids, "token_strs": strs}

    def _token(self, token_id: int, as_id: bool) -> str:
        return f"token_id:{token_id}" if as_id else self.tok.decode([token_id])

    def _params(self, body: dict, logprobs: int | None, prompt_logprobs: int | None = None) -> SamplingParams:
        max_tokens = body.get("max_tokens", 16)
        return SamplingParams(n=body.get("n", 1), temperature=body.get("temperature", 1.0),
                              top_p=body.get("top_p", 1.0), seed=body.get("seed"), stop=body.get("stop"),
                              max_tokens=max(1, max_tokens), logprobs=logprobs, prompt_logprobs=prompt_logprobs)

    def completions(self, body: dict) -> dict:
        lora, prompt = self._lora(body["model"]), body["prompt"]
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            prompt = [prompt]
        ids = [self.tok.encode(p) if isinstance(p, str) else list(p) for p in prompt]
        k, echo, as_id = body.get("logprobs"), body.get("echo", False), body.get("return_tokens_as_token_ids", False)
        if body.get("max_tokens") == 0 and not echo:
            raise ValueError("max_tokens must be at least 1")
        params = self._params(body, k, k if echo and k is not None else None)
        outs = self.llm.generate([{"prompt_token_ids": x} for x in ids], params, lora_request=[lora] * len(ids),
                                 use_tqdm=False)
        choices = []
        for p, out in enumerate(outs):
            for c in out.outputs:
                gen = [] if body.get("max_tokens") == 0 else list(zip(c.token_ids, c.logprobs or [None] * len(c.token_ids)))
                rows = (list(zip(out.prompt_token_ids, out.prompt_logprobs or [])) if echo else []) + gen
                text = (self.tok.decode(out.prompt_token_ids) if echo else "") + ("" if body.get("max_tokens") == 0 else c.text)
                lp = None
                if k is not None:
                    lp = {"tokens": [self._token(t, as_id) for t, _ in rows],
                          "token_logprobs": [None if d is None else d[t].logprob for t, d in rows],
                          "top_logprobs": [None if d is None else {self._token(v, as_id): x.logprob
                                                                   for v, x in list(d.items())[:max(k, 1)]}
                                           for _, d in rows], "text_offset": None}
                choices.append({"index": len(choices), "text": text, "logprobs": lp, "finish_reason": c.finish_reason})
        used = sum(len(c.token_ids) for out in outs for c in out.outputs)
        n_prompt = sum(len(x) for x in ids)
        return {"id": "cmpl-fake", "object": "text_completion", "created": 0, "model": body["model"],
                "choices": choices, "usage": {"prompt_tokens": n_prompt, "completion_tokens": used,
                                              "total_tokens": n_prompt + used}}

    def chat(self, body: dict) -> dict:
        lora, ids = self._lora(body["model"]), self._chat_ids(body, False)
        top, as_id = body.get("top_logprobs") or 0, body.get("return_tokens_as_token_ids", False)
        params = self._params(body, max(top, 1) if body.get("logprobs") else None)
        out = self.llm.generate([{"prompt_token_ids": ids}], params, lora_request=[lora], use_tqdm=False)[0]
        choices = []
        for c in out.outputs:
            content = None
            if body.get("logprobs"):
                content = [{"token": self._token(t, as_id), "logprob": d[t].logprob, "bytes": None,
                            "top_logprobs": [{"token": self._token(v, as_id), "logprob": x.logprob, "bytes": None}
                                             for v, x in list(d.items())[:top]]}
                           for t, d in zip(c.token_ids, c.logprobs)]
            choices.append({"index": c.index, "message": {"role": "assistant", "content": c.text},
                            "logprobs": None if content is None else {"content": content},
                            "finish_reason": c.finish_reason})
        used = sum(len(c.token_ids) for c in out.outputs)
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": choices, "usage": {"prompt_tokens": len(ids), "completion_tokens": used,
                                              "total_tokens": len(ids) + used}}
