"""Training conversations: LLaMA-Factory's ``alpaca`` and ``sharegpt`` layouts (CHAT_FORMATS).

``sharegpt`` also reads OpenAI ``messages`` (role/content). A ChatExample holds the
prompt turns and the assistant reply to learn. Every problem is an EnsembleError
naming file:line (1-based) and the fix.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ensemble.data import fields
from ensemble.data.rows import read_rows
from ensemble.errors import EnsembleError, where
from ensemble.registry import Registry


@dataclass(frozen=True)
class ChatExample:
    id: str
    messages: tuple[dict[str, str], ...]  # the prompt turns (system/user/assistant history)
    target: str  # the assistant reply to learn


Turns = tuple[dict[str, str], ...]
CHAT_FORMATS: Registry[Callable[[Path, int, dict[str, Any]], tuple[Turns, str]]] = Registry("chat format")
ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@CHAT_FORMATS.register("alpaca")
def _alpaca(path: Path, no: int, row: dict[str, Any]) -> tuple[Turns, str]:
    need = "instruction and output"
    instruction = fields.string(path, no, fields.required(path, no, row, "instruction", need), "instruction",
                                required=True)
    target = fields.string(path, no, fields.required(path, no, row, "output", need), "output", required=True)
    extra = fields.string(path, no, row.get("input"), "input")
    system = fields.string(path, no, row.get("system"), "system")
    messages = [{"role": "system", "content": system}] if system else []
    history = row.get("history") or []
    for i, pair in enumerate(history if isinstance(history, list) else [None]):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise EnsembleError(f"{where(path, no, f'history[{i}]')}: expected a [user, assistant] pair of "
                                f"strings, got {pair!r}; history is a list of such pairs")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    # LLaMA-Factory joins instruction and input with one newline
    messages.append({"role": "user", "content": instruction + ("\n" + extra if extra else "")})
    return tuple(messages), target


@CHAT_FORMATS.register("sharegpt")
def _sharegpt(path: Path, no: int, row: dict[str, Any]) -> tuple[Turns, str]:
    """``conversations`` (from/value) or OpenAI ``messages`` (role/content); last assistant turn = target."""
    name = "conversations" if "conversations" in row else "messages"
    turns = fields.required(path, no, row, name, "a conversations (or messages) list")
    if not isinstance(turns, list):
        raise EnsembleError(f"{where(path, no, name)}: expected a list of turns; wrap them in [...]")
    system = fields.string(path, no, row.get("system"), "system")
    messages = [{"role": "system", "content": system}] if system else []
    for i, turn in enumerate(turns):
        field_ = f"{name}[{i}]"
        # str(): a non-string role (a list, a number) is simply not a role
        role = ROLES.get(str(turn.get("from", turn.get("role")))) if isinstance(turn, dict) else None
        text = turn.get("value", turn.get("content")) if isinstance(turn, dict) else None
        if role is None or not isinstance(text, str):
            raise EnsembleError(f"{where(path, no, field_)}: expected {{'from': human|gpt|system, 'value': text}} "
                                f"or {{'role': user|assistant|system, 'content': text}}, got {turn!r}")
        # LLaMA-Factory's rule: optional system first, then user/assistant strictly alternating
        expected = "user" if sum(m["role"] != "system" for m in messages) % 2 == 0 else "assistant"
        if role != expected and not (role == "system" and not messages):
            raise EnsembleError(f"{where(path, no, field_)}: a {role} turn where a {expected} turn belongs; "
                                "turns must alternate user, assistant after an optional system turn")
        messages.append({"role": role, "content": text})
    if not messages or messages[-1]["role"] != "assistant":
        raise EnsembleError(f"{where(path, no, name)}: the last turn must be the assistant reply to learn; "
                            "add it or drop the trailing turn")
    return tuple(messages[:-1]), messages[-1]["content"]


def read_chat_examples(path: str | Path, *, format: str = "auto") -> list[ChatExample]:
    """Every conversation of a chat file; ``format="auto"`` tells alpaca from sharegpt by the fields."""
    path = Path(path)
    if format != "auto":
        CHAT_FORMATS.get(format)
    rows = read_rows(path)
    if format == "auto":
        keys = rows[0][1]
        if "conversations" in keys or "messages" in keys:
            format = "sharegpt"
        elif "instruction" in keys:
            format = "alpaca"
        else:
            raise EnsembleError(f"{where(path, rows[0][0])}: cannot tell the chat format from fields "
                                f"{sorted(keys)}; use alpaca (instruction, input, output) or sharegpt "
                                "(conversations / messages) rows, or pass format=")
    parse = CHAT_FORMATS.get(format)
    out = []
    for k, (no, row) in enumerate(rows, 1):
        messages, target = parse(path, no, row)
        id_ = fields.row_id(path, no, row["id"]) if "id" in row else f"{path.stem}:{k}"  # k: row position
        out.append((no, ChatExample(id_, messages, target)))
    fields.check_unique(path, ((no, ex.id) for no, ex in out))
    return [ex for _, ex in out]
