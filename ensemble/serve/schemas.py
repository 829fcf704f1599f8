"""Pydantic request models of the served routes (the fields vLLM's ``protocol.py`` accepts
that an in-process engine can honour). Type and range errors become HTTP 400 OpenAI error
bodies in ``ensemble.serve.http``; what needs the engine (model names, the tokenizer) is
checked in ``ensemble.serve.protocol`` / ``ensemble.serve.service``.

Unknown fields are ignored, as vLLM and OpenAI do (clients send e.g. ``user``).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

MAX_TOP_LOGPROBS = 20  # vLLM's default --max-logprobs

Text = Annotated[str, Field(min_length=1)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: Text
    n: Annotated[int, Field(ge=1, le=128)] = 1
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    max_tokens: Annotated[int, Field(ge=1, le=1 << 20)] | None = None
    seed: Annotated[int, Field(ge=-(1 << 63), lt=1 << 64)] | None = None
    stop: Text | list[Text] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: Any) -> Any:
        ok = value is None or isinstance(value, str) or isinstance(value, list) and all(isinstance(x, str) for x in value)
        if not ok or value == "" or isinstance(value, list) and "" in value:
            raise ValueError("must be a non-empty string or a list of them")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self) -> Any:
        if self.stream_options is not None and not self.stream:  # vLLM's validate_stream_options
            raise ValueError("stream_options can only be set when stream is true")
        return self


class CompletionRequest(_Sampling):
    prompt: Text | list[str]
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    echo: bool = False

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        if isinstance(value, list) and value and all(isinstance(x, int | list) for x in value):
            raise ValueError("token-id prompts are not supported; send the prompt text")
        if not (isinstance(value, str) and value or isinstance(value, list) and value
                and all(isinstance(x, str) for x in value)):
            raise ValueError("must be a string or a non-empty list of strings")
        return value


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1, le=1 << 20)] | None = None

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):  # vLLM's check_logprobs
            raise ValueError("when using `top_logprobs`, `logprobs` must be set to true")
        return value


class TokenizeRequest(_Body):
    """vLLM's TokenizeCompletionRequest | TokenizeChatRequest (one of prompt / messages)."""

    model: Text | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool = False


class ScoreChoicesRequest(_Body):
    model: Text
    options: Annotated[list[str], Field(min_length=1)]
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    mode: Literal["cloze", "letter"] = "cloze"
    normalize: Literal["sum", "mean"] = "mean"
    assistant_prefix: str = ""


def as_body(request: BaseModel) -> dict[str, Any]:
    """The fields the client set, as plain JSON values (the protocol functions read dicts)."""
    return request.model_dump(mode="json", exclude_unset=True)
