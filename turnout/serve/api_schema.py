"""Request and response bodies of the OpenAI-compatible API (pydantic; they are also the OpenAPI schema).

Requests validate strictly (no "16" for 16, no true for 1.0, no NaN), ignore fields they do not know (as vLLM
does, so clients that send extra options still work) and refuse the OpenAI options turnout does not implement
(n > 1, logprobs, penalties, best_of, suffix) with a 400 naming the field rather than silently ignoring them.
Extensions beyond OpenAI: top_k (0 or -1: off) and ignore_eos, as in vLLM.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from turnout.serve.sampling import SEED_MAX, SEED_MIN

MAX_STOPS = 4
MAX_STOP_CHARS = 128
MAX_PROMPTS = 16  # prompts per /v1/completions request


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields both endpoints share."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    model: str = Field(description="the served model's id (see /v1/models)")
    max_tokens: Annotated[int, Field(ge=1)] | None = Field(
        None, description="new tokens at most; prompt + max_tokens must fit the context")
    temperature: Annotated[float, Field(ge=0, le=2)] = Field(1.0, description="0: greedy")
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=-1)] = Field(0, description="keep the k likeliest tokens; 0 or -1: off")
    n: Annotated[int, Field(ge=1, le=1)] = Field(1, description="only 1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = Field(None, description=f"up to {MAX_STOPS} strings; trimmed from the output")
    seed: Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)] | None = None
    presence_penalty: Annotated[float, Field(ge=0, le=0)] = Field(0.0, description="only 0 is supported")
    frequency_penalty: Annotated[float, Field(ge=0, le=0)] = Field(0.0, description="only 0 is supported")
    user: str | None = None
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop strings")
        if any(not s or len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"stop strings must have 1 to {MAX_STOP_CHARS} characters")
        return v

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(SamplingRequest):
    """POST /v1/completions."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)] | list[int] \
        | Annotated[list[list[int]], Field(min_length=1, max_length=MAX_PROMPTS)] = Field(
        description="text, a list of texts, token ids, or a list of token-id lists")
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=0)] | None = Field(None, description="not supported: null")
    best_of: Annotated[int, Field(ge=1, le=1)] | None = None
    suffix: Annotated[str, Field(max_length=0)] | None = None

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if p and isinstance(p[0], list):
            return list(p)
        if p and isinstance(p[0], str):
            return list(p)
        return [list(p)]  # token ids (possibly empty)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(SamplingRequest):
    """POST /v1/chat/completions (rendered with turnout.serve.chat's template)."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = Field(None, description="wins over max_tokens")
    logprobs: Literal[False] | None = Field(None, description="not supported: false or null")


# ---- responses -------------------------------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: str | None


class CompletionResponse(BaseModel):
    """Also the shape of each streamed chunk (object "text_completion", usage only on the last)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str | None


class ChatResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "turnout"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body."""

    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok", "error"]
    model: str
    target: str
    dtype: str
    context: int
    max_batch: int
    cache_bytes_per_token: int
    running: int
    requests: int
    cancelled: int
    errors: int
    last_error: str | None = None
    speculative: bool = False
    acceptance_rate: float | None = None  # MTP drafts kept, when speculative
