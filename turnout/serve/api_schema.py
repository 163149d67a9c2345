"""Request and response bodies of the OpenAI-compatible API (pydantic; they are also the OpenAPI schema).

Requests validate strictly (no "16" for 16, no true for 1.0, no NaN; JSON has one number type, so 16.0 is the
integer 16, as JSON Schema's "integer" says), ignore fields they do not know (as vLLM does, so clients that send
extra options still work) and refuse the OpenAI options turnout does not implement (n > 1, logprobs, penalties,
best_of, suffix) with a 400 naming the field rather than silently ignoring them. Extensions beyond OpenAI: top_k
(0 or -1: off) and ignore_eos, as in vLLM.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag
from pydantic_core import PydanticCustomError

from turnout.serve.sampling import GREEDY_BELOW

MAX_STOPS = 4
MAX_STOP_CHARS = 128
MAX_PROMPTS = 16  # prompts per /v1/completions request


def _integral(v: Any) -> Any:
    """2.0 -> 2: an integral JSON number is an integer (2.5, "2" and true are still refused by strict ints)."""
    return int(v) if type(v) is float and v.is_integer() else v


def _integral_items(v: Any) -> Any:
    """_integral over a list (token ids) in one call: a per-item validator would cost a call per id."""
    return [int(x) if type(x) is float and x.is_integer() else x for x in v] if isinstance(v, list) else v


def _integral_rows(v: Any) -> Any:
    return [_integral_items(x) for x in v] if isinstance(v, list) else v


def _boolean(v: Any) -> Any:
    """Strict mode does not reach Literal[False], which would take 0 (0 == False in Python)."""
    if type(v) is not bool:
        raise PydanticCustomError("bool_type", "Input should be a valid boolean")
    return v


StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
# one string or a list of them; the discriminator picks the branch, so an error names what is wrong with it
Stops = Annotated[Annotated[StopString, Tag("string")]
                  | Annotated[list[StopString], Field(max_length=MAX_STOPS), Tag("list")],
                  Discriminator(lambda v: "string" if isinstance(v, str) else "list")]

# last in an Annotated (after the Field constraints), so the JSON schema keeps minimum/maximum
Integral = BeforeValidator(_integral)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields both endpoints share."""

    model_config = ConfigDict(extra="ignore", strict=True, allow_inf_nan=False)

    model: str = Field(description="the served model's id (see /v1/models)")
    max_tokens: Annotated[int, Field(ge=1), Integral] | None = Field(
        None, description="new tokens at most; prompt + max_tokens must fit the context")
    temperature: Annotated[float, Field(ge=0, le=2)] = Field(
        1.0, description=f"0: greedy; below {GREEDY_BELOW:.4g} (float32's smallest normal number) also greedy, "
                         "the limit of sampling as the temperature goes to 0")
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=-1), Integral] = Field(0, description="keep the k likeliest tokens; 0 or -1: off")
    n: Annotated[int, Field(ge=1, le=1), Integral] = Field(1, description="only 1 is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stops | None = Field(None, description=f"up to {MAX_STOPS} strings; trimmed from the output")
    seed: Annotated[int, Integral] | None = Field(
        None, description="any integer (taken modulo 2**64); null: a fresh random seed")
    presence_penalty: Annotated[float, Field(ge=0, le=0)] = Field(0.0, description="only 0 is supported")
    frequency_penalty: Annotated[float, Field(ge=0, le=0)] = Field(0.0, description="only 0 is supported")
    user: str | None = None
    ignore_eos: bool = False

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(SamplingRequest):
    """POST /v1/completions."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)] \
        | Annotated[list[int], BeforeValidator(_integral_items)] \
        | Annotated[list[list[int]], Field(min_length=1, max_length=MAX_PROMPTS), BeforeValidator(_integral_rows)] \
        = Field(description="text, a list of texts, token ids, or a list of token-id lists")
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=0), Integral] | None = Field(None, description="not supported: null")
    best_of: Annotated[int, Field(ge=1, le=1), Integral] | None = None
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
    max_completion_tokens: Annotated[int, Field(ge=1), Integral] | None = Field(
        None, description="wins over max_tokens")
    logprobs: Annotated[Literal[False], BeforeValidator(_boolean)] | None = Field(
        None, description="not supported: false or null")


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


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None  # on the first chunk only
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: None = None
    finish_reason: str | None


class ChatCompletionChunk(BaseModel):
    """One streamed chat event; with stream_options.include_usage, a last one with no choices carries usage."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


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
