"""How large a request may be, decided before any work is spent on it.

Prompt text: a byte-level BPE token covers at most `longest_token_bytes` bytes of text and a character takes at
least one byte, so a text of more than (context - 1) x that many characters needs more tokens than the context
holds, however it tokenizes: it is refused at once (`check_prompt_text`, 400 context_length_exceeded) instead of
after seconds of tokenizing. Request bodies: `BodyLimit` answers 413 from the Content-Length header before a byte
of the body is read, or as soon as a chunked body grows past the limit. The default limit
(`default_body_bytes`) leaves room for MAX_PROMPTS prompts of the longest text that could fit, every byte
JSON-escaped as \\u00XX (a fitting prompt has at most that many UTF-8 bytes), so no request that could be served
is refused for its size.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from turnout.data import Tokenizer
from turnout.serve.api_schema import MAX_PROMPTS
from turnout.serve.request import RequestError

MIN_BODY_BYTES = 1 << 20  # never less than 1 MiB
OTHER_FIELDS_BYTES = 64 << 10  # model, stop strings, options
ESCAPED_BYTES = 6  # the most JSON text one UTF-8 byte of a string can take (\u00XX; \uXXXX for 2 or 3 bytes)
TOKEN_ID_BYTES = len(f"{2**31}, ")  # one token id in a JSON list, generously


def longest_token_bytes(tokenizer: Tokenizer) -> int | None:
    """The most bytes of text one token covers: the longest entry of the byte-level vocabulary (one character per
    byte; special tokens are never produced from text). None when tokenizer.json is not plain byte-level BPE,
    whose tokens give no such bound."""
    spec = json.loads(tokenizer.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel" or spec.get("normalizer") is not None:
        return None
    special = {t.get("content") for t in spec.get("added_tokens") or ()}
    return max((len(t) for t in model.get("vocab", {}) if t not in special), default=None)


def prompt_char_limit(tokenizer: Tokenizer, context: int) -> int | None:
    """The longest text prompt that could fit in `context` tokens (None: no bound known)."""
    longest = longest_token_bytes(tokenizer)
    return None if longest is None else (context - 1) * longest


def default_body_bytes(char_limit: int | None, context: int) -> int:
    """Room for MAX_PROMPTS of the longest prompts that could fit (text or token ids), however they are escaped."""
    per_prompt = max((char_limit or 0) * ESCAPED_BYTES, context * TOKEN_ID_BYTES)
    return max(MIN_BODY_BYTES, MAX_PROMPTS * per_prompt + OTHER_FIELDS_BYTES)


def check_prompt_text(text: str, char_limit: int | None, context: int) -> None:
    """Refuse (RequestError) a text that cannot fit the context, judged by its length alone."""
    if char_limit is not None and len(text) > char_limit:
        raise RequestError(f"the prompt has {len(text)} characters; no text longer than {char_limit} fits this "
                           f"model's context of {context} tokens", "prompt", "context_length_exceeded")


class BodyLimit:
    """Pure ASGI middleware: a request body over `limit` bytes gets `refuse(message)` (an ASGI app: the 413),
    judged by Content-Length before the body is read, or while a chunked body streams in."""

    def __init__(self, app, limit: int, refuse: Callable[[str], Callable]):
        self.app, self.limit, self.refuse = app, limit, refuse

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"").strip()
        if length.isdigit():  # the HTTP server holds the body to it (and refuses a malformed one itself)
            if int(length) > self.limit:
                return await self.refuse(f"the request body has {int(length)} bytes; this server takes at most "
                                         f"{self.limit} bytes")(scope, receive, send)
            return await self.app(scope, receive, send)
        chunks, size = [], 0  # chunked: read it here (the app would hold it all anyway), up to the limit
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self.refuse(f"the request body is over this server's limit of {self.limit} bytes")(
                    scope, receive, send)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the disconnect a streaming response waits for
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await self.app(scope, replay, send)
