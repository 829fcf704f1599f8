"""Text -> token ids: one definition for the HF engine, the vLLM engine and training.

Everything that turns a prompt into ids goes through here, so a variant is trained on
the token sequence it is later scored on, and both engines score the same sequences.

* **Prompt.** Chat messages are rendered with the tokenizer's chat template, assistant
  turn opened (``add_generation_prompt=True``); the template writes its own special
  tokens, so the text is encoded with ``add_special_tokens=False``. A raw ``prompt``
  string is encoded with ``add_special_tokens=True`` (the tokenizer's BOS, if it adds one).
* **No chat template** (a base model): messages become plain text,
  ``prompts.plain_text`` (each non-empty content followed by a blank line, no role
  names), encoded like a raw prompt string (with the tokenizer's own BOS). That is the
  one behaviour everywhere; it is how lm-eval prompts base models.
* **Cloze split** (lm-eval's): trailing spaces of the context move to the continuation;
  the context is encoded alone; each continuation is the tail of
  encode(context + continuation) after the context's length. An empty context becomes
  ``[eos]`` (the model needs one token to predict the first continuation token from).
* **Option letters**: a letter's ids are its single-token spellings, "A" and " A"
  (whichever exist): after "Answer:" a tokenizer may produce either.

The tokenizer is duck-typed: ``encode(text, add_special_tokens=...)``,
``apply_chat_template``, ``chat_template`` and ``eos_token_id`` (a Hugging Face
tokenizer, or what vLLM's ``LLM.get_tokenizer()`` returns).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ensemble.errors import EnsembleError
from ensemble.prompts import plain_text

Message = dict[str, str]


def has_chat_template(tok: Any) -> bool:
    return bool(getattr(tok, "chat_template", None))


def encode(tok: Any, text: str, special: bool) -> list[int]:
    """Token ids of ``text``; ``special``: add the tokenizer's own special tokens (BOS)."""
    return list(tok.encode(text, add_special_tokens=special))


def render(tok: Any, messages: Sequence[Message], *, add_generation_prompt: bool = True,
           continue_final_message: bool = False) -> tuple[str, bool]:
    """(text, add_special_tokens) of chat messages, ending where the assistant's reply starts.

    The two flags are the chat template's own (vLLM's /tokenize exposes them): the engines
    always open the assistant turn. Plain text (no template) has no turns to open or continue."""
    if has_chat_template(tok):
        extra = {"continue_final_message": True} if continue_final_message else {}
        text = tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt,
                                       **extra)
        return text, False  # the template already holds the special tokens
    return plain_text(messages), True


def request_text(tok: Any, prompt: str | None, messages: Sequence[Message] | None, suffix: str = "", *,
                 add_generation_prompt: bool = True, continue_final_message: bool = False) -> tuple[str, bool]:
    """(text, add_special_tokens) of a request's ``prompt`` or ``messages`` (``render``'s
    flags), then ``suffix`` (the assistant prefix a choice is scored after)."""
    if (prompt is None) == (messages is None):
        raise EnsembleError("request: set exactly one of 'prompt' and 'messages'")
    if messages is not None:
        text, special = render(tok, messages, add_generation_prompt=add_generation_prompt,
                               continue_final_message=continue_final_message)
        return text + suffix, special
    return str(prompt) + suffix, True


def prompt_ids(tok: Any, prompt: str | None = None, messages: Sequence[Message] | None = None, *,
               add_special_tokens: bool | None = None, add_generation_prompt: bool = True,
               continue_final_message: bool = False) -> list[int]:
    """The ids a generation starts from. The keywords are vLLM's /tokenize overrides:
    ``add_special_tokens`` None follows the rule above; the others are ``render``'s."""
    text, special = request_text(tok, prompt, messages, add_generation_prompt=add_generation_prompt,
                                 continue_final_message=continue_final_message)
    return encode(tok, text, special if add_special_tokens is None else add_special_tokens)


def context_ids(tok: Any, text: str, special: bool) -> list[int]:
    """Ids of a scoring context; ``[eos]`` when empty (the model needs one token to
    predict the first scored token from, as in lm-eval)."""
    return encode(tok, text, special) or [tok.eos_token_id]


def split(tok: Any, context: str, continuations: Sequence[str], special: bool) -> tuple[list[int], list[list[int]]]:
    """lm-eval's context/continuation split: (encode(context'), per continuation the tail
    of encode(context' + spaces + continuation) after len(encode(context'))).

    context' is ``context`` without trailing spaces; those spaces start each continuation
    (byte-level BPE writes " B" as one token). Context + tail need not equal
    encode(context + continuation) when tokens merge across the boundary; lm-eval accepts
    that, and so do we, the same way for training and scoring."""
    stripped = context.rstrip(" ")
    spaces = context[len(stripped):]
    ctx = encode(tok, stripped, special)
    return ctx, [encode(tok, stripped + spaces + c, special)[len(ctx):] for c in continuations]


def cloze_ids(tok: Any, context: str, special: bool, options: Sequence[str], *,
              where: str = "choice request") -> tuple[list[int], list[list[int]]]:
    """(context ids, one continuation id list per option) by ``split``; neither is ever
    empty (an empty context becomes ``[eos]``, an empty continuation is an error)."""
    prefix, conts = split(tok, context, options, special)
    for k, cont in enumerate(conts):
        if not cont:
            raise EnsembleError(f"{where}: option {k} ({options[k]!r}) is empty after tokenization; "
                                "give every option some text")
    return prefix or [tok.eos_token_id], conts


def letter_ids(tok: Any, letter: str) -> list[int]:
    """Single-token spellings of an option letter ("A" and " A", whichever exist), sorted."""
    letter = letter.strip()
    spellings = {tuple(encode(tok, v, False)) for v in (letter, " " + letter)}
    single = sorted(t[0] for t in spellings if len(t) == 1)
    if not single:
        raise EnsembleError(f"letter option {letter!r} is not a single token for this tokenizer; "
                            "use mode='cloze' for multi-token options")
    return single
