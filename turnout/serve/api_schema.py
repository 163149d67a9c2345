"""Request and response bodies of the OpenAI-compatible API (pydantic; they are also the OpenAPI schema).

Requests validate strictly (no "16" for 16, no true for 1.0, no NaN; JSON has one number type, so 16.0 is the
integer 16, as JSON Schema's "integer" says). A field a request does not know is refused with a 400 naming it
(extra="forbid"), never silently ignored: an option this server does not implement (logit_bias, vLLM's
prompt_logprobs, tools, ...) must not look as if it took effect. The OpenAI options turnout implements only in
part are bounded in the schema (penalties 0 only, no suffix). `user` is accepted and has no effect on
the output (OpenAI: an end-user id for abuse monitoring). Extensions beyond OpenAI: top_k (0 or -1: off) and
ignore_eos and return_tokens_as_token_ids, as in vLLM.

Log-probabilities (turnout.serve.logprobs): /v1/completions `logprobs: N` (0..MAX_LOGPROBS) returns OpenAI's
legacy object, and with `echo` the prompt's too; chat `logprobs: true` with `top_logprobs: N` returns the chat
shape. The values are the raw model distribution (log_softmax of the logits in float32, before temperature,
top-k and top-p), as vLLM reports them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, Tag

from turnout.serve.logprobs import MAX_LOGPROBS
from turnout.serve.sampling import GREEDY_BELOW

MAX_STOPS = 4
MAX_STOP_CHARS = 128
MAX_PROMPTS = 16  # prompts per /v1/completions request
MAX_N = 4  # choices per prompt: at most MAX_PROMPTS x MAX_N requests to the engine


def _integral(v: Any) -> Any:
    """2.0 -> 2: an integral JSON number is an integer (2.5, "2" and true are still refused by strict ints)."""
    return int(v) if type(v) is float and v.is_integer() else v


def _integral_items(v: Any) -> Any:
    """_integral over a list (token ids) in one call: a per-item validator would cost a call per id."""
    return [int(x) if type(x) is float and x.is_integer() else x for x in v] if isinstance(v, list) else v


def _integral_rows(v: Any) -> Any:
    return [_integral_items(x) for x in v] if isinstance(v, list) else v


StopString = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
# one string or a list of them; the discriminator picks the branch, so an error names what is wrong with it
Stops = Annotated[Annotated[StopString, Tag("string")]
                  | Annotated[list[StopString], Field(max_length=MAX_STOPS), Tag("list")],
                  Discriminator(lambda v: "string" if isinstance(v, str) else "list")]

# last in an Annotated (after the Field constraints), so the JSON schema keeps minimum/maximum
Integral = BeforeValidator(_integral)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    include_usage: bool = Field(False, description="a last event with no choices carries the usage")


class SamplingRequest(BaseModel):
    """Fields both endpoints share."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str = Field(description="the served model's id (see /v1/models)")
    max_tokens: Annotated[int, Field(ge=1), Integral] | None = Field(
        None, description="new tokens at most; prompt + max_tokens must fit the context")
    temperature: Annotated[float, Field(ge=0, le=2)] = Field(
        1.0, description=f"0: greedy; below {GREEDY_BELOW:.4g} (float32's smallest normal number) also greedy, "
                         "the limit of sampling as the temperature goes to 0")
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    top_k: Annotated[int, Field(ge=-1), Integral] = Field(0, description="keep the k likeliest tokens; 0 or -1: off")
    n: Annotated[int, Field(ge=1, le=MAX_N), Integral] = Field(
        1, description=f"independent samples per prompt, at most {MAX_N}; with a seed, sample i uses seed + i")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stops | None = Field(None, description=f"up to {MAX_STOPS} strings; trimmed from the output")
    seed: Annotated[int, Integral] | None = Field(
        None, description="any integer (taken modulo 2**64); null: a fresh random seed")
    presence_penalty: Annotated[float, Field(ge=0, le=0)] = Field(0.0, description="only 0 is supported")
    frequency_penalty: Annotated[float, Field(ge=0, le=0)] = Field(0.0, description="only 0 is supported")
    user: str | None = Field(None, description="accepted, no effect on the output (an end-user id)")
    ignore_eos: bool = False
    return_tokens_as_token_ids: bool = Field(
        False, description="tokens in logprobs are written 'token_id:N' (vLLM's extension): exact for any token")

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(SamplingRequest):
    """POST /v1/completions."""

    prompt: str | Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)] \
        | Annotated[list[int], BeforeValidator(_integral_items)] \
        | Annotated[list[list[int]], Field(min_length=1, max_length=MAX_PROMPTS), BeforeValidator(_integral_rows)] \
        = Field(description="text, a list of texts, token ids, or a list of token-id lists")
    max_tokens: Annotated[int, Field(ge=0), Integral] | None = Field(
        None, description="new tokens at most (default 16); prompt + max_tokens must fit the context; 0 with echo "
                          "scores the prompt only")
    echo: bool = Field(False, description="the prompt's text leads each choice's text (and its tokens the "
                                          "logprobs, the first with logprob null)")
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS), Integral] | None = Field(
        None, description=f"0..{MAX_LOGPROBS}: each token's logprob and the N likeliest at its position (raw "
                          "model distribution, before temperature/top-k/top-p); null: none")
    best_of: Annotated[int, Field(ge=1, le=MAX_N), Integral] | None = Field(
        None, description=f"samples drawn per prompt (n..{MAX_N}, default n); the n whose tokens' summed logprob is "
                          "highest are returned, best first; not with stream when > n")
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
    model_config = ConfigDict(extra="forbid", strict=True)
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = Field(None, description="the participant's name: opens the content as 'name: ' in turnout's "
                             "chat format, and is the message's `name` in a model's own chat template")

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(SamplingRequest):
    """POST /v1/chat/completions (rendered with turnout.serve.chat's template)."""

    # top_logprobs asks for alternatives to the logprobs that logprobs: true asks for (the route refuses it
    # alone); the schema says so too, so schema-driven clients know
    model_config = ConfigDict(json_schema_extra={
        "if": {"properties": {"top_logprobs": {"type": "integer"}}, "required": ["top_logprobs"]},
        "then": {"properties": {"logprobs": {"const": True}}, "required": ["logprobs"]}})

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1), Integral] | None = Field(
        None, description="wins over max_tokens")
    logprobs: bool | None = Field(None, description="true: each generated token's logprob (raw model "
                                                     "distribution, before temperature/top-k/top-p)")
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS), Integral] | None = Field(
        None, description=f"0..{MAX_LOGPROBS} likeliest tokens at each position, with logprobs: true")


# ---- responses -------------------------------------------------------------------------------------------------
class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy shape: per token its text, logprob (null for a prompt's first token), the likeliest tokens
    at its position (text -> logprob, the chosen one included) and the character where it starts in `text`."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
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


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
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
    logprobs: ChatLogprobs | None = None
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
