"""The fake vLLM's toy model: toy tokenizers and fixed, LoRA-dependent logits.

``ToyTokenizer`` (the default): 0 = ``<s>`` (BOS), 1 = ``</s>`` (EOS), then one id per
printable ASCII character and newline. ``SentencePieceTokenizer`` (``LLM(...,
tokenizer="toy-sentencepiece")``) behaves like a Llama/Mistral SentencePiece tokenizer:
spaces become "▁", the text gets a leading "▁", words like "▁B" are single pieces, and
``decode([id])`` of one piece drops its leading space ("▁B" -> "B").
``next_logprobs(lora_name, context, vocab_size)`` is a pure function, so tests can
recompute any logprob the fake returns.
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


class SentencePieceTokenizer:
    """A SentencePiece-style tokenizer (see the module docstring); greedy longest-piece match."""

    WORDS = ("A", "B", "C", "D", "yes", "no", "Paris", "London", "Answer", "Answer:", "Q", "The", "is")
    PIECES: tuple[str, ...] = ("<unk>", "<s>", "</s>", "\u2581", *(f"\u2581{w}" for w in WORDS),
                               *(chr(c) for c in range(33, 127)), "\n")
    bos_token_id, eos_token_id = 1, 2
    chat_template = "toy"

    def __init__(self) -> None:
        self._ids = {p: i for i, p in enumerate(self.PIECES)}
        self._longest = max(len(p) for p in self.PIECES)

    def __len__(self) -> int:
        return len(self.PIECES)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [self.bos_token_id] if add_special_tokens else []
        for k, part in enumerate(re.split(r"(<s>|</s>)", text)):
            if k % 2:
                ids.append(self._ids[part])
            elif part:
                ids += self._pieces("\u2581" + part.replace(" ", "\u2581"))
        return ids

    def _pieces(self, norm: str) -> list[int]:
        out, i = [], 0
        while i < len(norm):
            for n in range(min(self._longest, len(norm) - i), 0, -1):
                if norm[i:i + n] in self._ids:
                    out.append(self._ids[norm[i:i + n]])
                    i += n
                    break
            else:
                out.append(0)  # <unk>
                i += 1
        return out

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        text = "".join(self.PIECES[i] for i in ids if not (skip_special_tokens and i < 3))
        text = text.replace("\u2581", " ")
        return text.removeprefix(" ")  # the dummy prefix is not text

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]:
        return [self.PIECES[i] for i in ids]

    def apply_chat_template(self, conversation: Sequence[dict[str, Any]], *, tokenize: bool = True,
                            add_generation_prompt: bool = False, continue_final_message: bool = False,
                            **kwargs: Any) -> str | list[int]:
        last = len(conversation) - 1
        text = "".join(f"<{m['role']}>{m['content']}" + ("" if continue_final_message and k == last else "\n")
                       for k, m in enumerate(conversation))
        text += "<assistant>" if add_generation_prompt else ""
        return self.encode(text, add_special_tokens=False) if tokenize else text


def next_logprobs(lora_name: str | None, context: Sequence[int], vocab_size: int = len(VOCAB)) -> list[float]:
    """log p(token | context) for every token id; depends on the LoRA, last token, position."""
    salt = zlib.crc32((lora_name or "").encode())
    last, pos = context[-1], len(context)
    logits = [((salt + 131 * last + 17 * pos + 101 * v) % 97) / 8.0 for v in range(vocab_size)]
    top = max(logits)
    log_z = top + math.log(sum(math.exp(x - top) for x in logits))
    return [x - log_z for x in logits]
