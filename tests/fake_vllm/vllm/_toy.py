"""The fake vLLM's toy model: a character tokenizer and fixed, LoRA-dependent logits.

Token ids: 0 = ``<s>`` (BOS), 1 = ``</s>`` (EOS), then one id per printable ASCII
character and newline. ``next_logprobs(lora_name, context)`` is a pure function, so tests
can recompute any logprob the fake returns.
"""
from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from typing import Any

VOCAB: list[str] = ["<s>", "</s>"] + [chr(c) for c in range(32, 127)] + ["\n"]
BOS, EOS = 0, 1
_IDS = {tok: i for i, tok in enumerate(VOCAB) if i > EOS}


class ToyTokenizer:
    """The subset of a Hugging Face tokenizer's API that vLLM's ``get_tokenizer()`` gives."""

    bos_token_id = BOS
    eos_token_id = EOS
    chat_template = ("<s>{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}"
                     "{% if add_generation_prompt %}<assistant>{% endif %}")  # what apply_chat_template does

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Special tokens written as text ("<s>", "</s>") map to their ids, like HF tokenizers."""
        ids: list[int] = []
        for i, part in enumerate(re.split(r"(<s>|</s>)", text)):
            ids += [VOCAB.index(part)] if i % 2 else [_IDS.get(ch, _IDS["?"]) for ch in part]
        return [BOS, *ids] if add_special_tokens else ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return "".join(VOCAB[i] for i in ids if not (skip_special_tokens and i <= EOS))

    def apply_chat_template(self, conversation: Sequence[dict[str, Any]], *, tokenize: bool = True,
                            add_generation_prompt: bool = False, **kwargs: Any) -> str | list[int]:
        text = "<s>" + "".join(f"<{m['role']}>{m['content']}\n" for m in conversation)
        text += "<assistant>" if add_generation_prompt else ""
        return self.encode(text, add_special_tokens=False) if tokenize else text


def next_logprobs(lora_name: str | None, context: Sequence[int]) -> list[float]:
    """log p(token | context) for every token id; depends on the LoRA, last token, position."""
    salt = zlib.crc32((lora_name or "").encode())
    last, pos = context[-1], len(context)
    logits = [((salt + 131 * last + 17 * pos + 101 * v) % 97) / 8.0 for v in range(len(VOCAB))]
    top = max(logits)
    log_z = top + math.log(sum(math.exp(x - top) for x in logits))
    return [x - log_z for x in logits]
