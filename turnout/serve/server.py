"""The OpenAI-compatible HTTP API over one Engine: FastAPI routes, SSE streaming, OpenAI-style errors.

    GET  /health                 engine state (no API key needed)
    GET  /v1/models              the one served model
    POST /v1/completions         text or token-id prompts (a list of up to 16 prompts gives one choice each)
    POST /v1/chat/completions    messages rendered with turnout.serve.chat's template
    GET  /openapi.json, /docs    FastAPI's schema and its browser

Request handlers run on the event loop; they check sizes (limits.py), tokenize and validate in a worker thread (a
long prompt takes seconds to tokenize, and /health must keep answering meanwhile), hand the request to the
engine's model thread and await its events through an asyncio.Queue fed with `loop.call_soon_threadsafe`.
`stream: true` answers with server-sent events: `data: {chunk}\\n\\n` per delta and `data: [DONE]\\n\\n` at the end.
Logprobs (logprobs.py) ride on the engine's events and are shaped per API here; `n` samples of each prompt are
separate engine requests (seed + i for sample i), choice k being sample k % n of prompt k // n.
Every error body is `{"error": {"message", "type", "param", "code"}}`; invalid requests get 4xx (bad JSON and wrong
fields 400, a missing or wrong key 401, an unknown model or route 404, a wrong method 405 with Allow, a body over
the limit 413), a failing target 500 (for the requests it failed: the rest of the batch carries on), a stopped
engine 503.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from turnout.serve import limits, openapi
from turnout.serve.api_schema import (ChatCompletionChunk, ChatRequest, ChatResponse, CompletionRequest,
                                      CompletionResponse, ErrorResponse, Health, ModelCard, ModelList,
                                      SamplingRequest)
from turnout.serve.chat import CHAT_STOP, render_chat, render_template
from turnout.serve.engine import Engine
from turnout.serve.logprobs import LegacyLogprobs, TokenText, chat_shape
from turnout.serve.request import Completion, Event, RequestError
from turnout.serve.sampling import SamplingParams

COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
BEST_OF = "invalid_best_of"  # error code of a best_of the schema admits but n or stream rule out
UNKNOWN_HINTS = {"prompt_logprobs": " (for the prompt's logprobs send echo: true with logprobs: N)",
                 "max_completion_tokens": " (on /v1/completions: max_tokens)"}


class ApiError(Exception):
    """An error answered as `{"error": {...}}` with `status`."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


class AsciiJSON(JSONResponse):
    """JSON with non-ASCII escaped: text with lone surrogates (valid JSON input) still renders."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def error_response(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                   code: str | None = None, headers: dict[str, str] | None = None) -> AsciiJSON:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return AsciiJSON(body, status_code=status, headers=({"WWW-Authenticate": "Bearer"} if status == 401 else {})
                     | (headers or {}))


class _JsonBodies:
    """Pure ASGI middleware: POST bodies on /v1/* are JSON whatever Content-Type says (`curl -d` sends a form
    type), so every client gets the same parsing and the same errors."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/v1"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = dict(scope, headers=headers + [(b"content-type", b"application/json")])
        return await self.app(scope, receive, send)


class _ApiKey:
    """Pure ASGI middleware: /v1/* needs `Authorization: Bearer KEY`, checked before the body is even read."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            auth = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not token.strip():
                missing = error_response(401, "missing API key: send 'Authorization: Bearer KEY'",
                                         code="invalid_api_key")
                return await missing(scope, receive, send)
            if not hmac.compare_digest(token.strip(), self.key):
                return await error_response(401, "incorrect API key provided", code="invalid_api_key")(
                    scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(engine: Engine, model_name: str, *, api_key: str | None = None, target: str = "",
               dtype: str = "", max_body_bytes: int | None = None) -> FastAPI:
    """The FastAPI app serving `engine` as model `model_name`; the engine's model thread must be started.
    Bodies over `max_body_bytes` get 413 (default: limits.default_body_bytes, room for any servable request)."""
    created = int(time.time())
    errors = {400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
              413: {"model": ErrorResponse}}
    char_limit = limits.prompt_char_limit(engine.tokenizer, engine.context)
    token_text = TokenText(engine.tokenizer)
    body_limit = max_body_bytes or limits.default_body_bytes(char_limit, engine.context)
    app = FastAPI(title="turnout", description=__doc__.split("\n\n")[0], version="1",
                  default_response_class=AsciiJSON)
    app.add_middleware(_JsonBodies)
    app.add_middleware(limits.BodyLimit, limit=body_limit,
                       refuse=lambda msg: error_response(413, msg, code="request_too_large"))
    if api_key:
        app.add_middleware(_ApiKey, key=api_key)  # added last: runs first (a keyless client learns no limit)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError):
        return error_response(e.status, e.message, e.type, e.param, e.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request", "type": ""}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            why = (first.get("ctx") or {}).get("error", "")
            return error_response(400, f"the request body is not valid JSON{f' ({why})' if why else ''}")
        if not loc:
            return error_response(400, f"the request body must be a JSON object ({first.get('msg', 'invalid')})")
        more = f" (+{len(errs) - 1} more problem{'s' * (len(errs) > 2)})" if len(errs) > 1 else ""
        msg = first.get("msg", "invalid")
        if first.get("type") == "extra_forbidden":  # refused, not ignored: it would not take effect
            msg = "unknown field; this server does not implement it" + UNKNOWN_HINTS.get(loc[-1], "")
        return error_response(400, f"{'.'.join(loc)}: {msg}{more}", param=loc[0])

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException):
        return error_response(e.status_code, str(e.detail), "invalid_request_error" if e.status_code < 500
                              else "server_error", headers=e.headers)  # e.g. a 405's Allow

    @app.exception_handler(Exception)
    async def _crash(_: Request, e: Exception):
        return error_response(500, f"internal error: {type(e).__name__}", "server_error")

    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health():
        ok = engine.threaded
        s = engine.stats
        body = Health(status="ok" if ok else "error", model=model_name, target=target, dtype=dtype,
                      context=engine.context, max_batch=engine.max_batch,
                      cache_bytes_per_token=engine.cache_bytes_per_token, running=engine.pending,
                      requests=s.requests, cancelled=s.cancelled, errors=s.errors, last_error=s.last_error,
                      speculative=engine.speculative, acceptance_rate=engine.acceptance_rate)
        return AsciiJSON(body.model_dump(), status_code=200 if ok else 503)

    @app.get("/v1/models", response_model=ModelList, responses=errors)
    async def models():
        return ModelList(data=[ModelCard(id=model_name, created=created, max_model_len=engine.context)]).model_dump()

    def check_model(req: SamplingRequest) -> None:
        if req.model != model_name:
            raise ApiError(404, f"the model '{req.model}' does not exist; this server serves '{model_name}'",
                           param="model", code="model_not_found")

    def params_for(req: SamplingRequest, max_tokens: int, extra_stop: tuple[str, ...] = (), *,
                   logprobs: int | None = None, prompt_logprobs: int | None = None) -> SamplingParams:
        return SamplingParams(max_tokens=max_tokens, temperature=req.temperature,
                              top_k=max(req.top_k, 0), top_p=req.top_p, seed=req.seed,
                              stop=tuple(req.stop_list()) + extra_stop, ignore_eos=req.ignore_eos,
                              logprobs=logprobs, prompt_logprobs=prompt_logprobs)

    def samples(jobs: list[tuple[list[int], SamplingParams]], n: int) -> list[tuple[list[int], SamplingParams]]:
        """n independent samples of each job, prompt-major (choice k is sample k % n of prompt k // n); with a
        seed, sample i uses seed + i (vLLM's rule), so sample 0 is what n = 1 gives."""
        return [(ids, p if p.seed is None else dataclasses.replace(p, seed=p.seed + i))
                for ids, p in jobs for i in range(n)]

    async def prepare(prompts: list[str | list[int]], params: SamplingParams,
                      fit: bool) -> list[tuple[list[int], SamplingParams]]:
        """Check every prompt before any is submitted (one bad prompt refuses the whole request): text too long
        to fit at once, then tokenize and check in a worker thread, off the event loop."""
        def tokenize_and_check() -> list[tuple[list[int], SamplingParams]]:
            out = []
            for p in prompts:
                ids = engine.encode_prompt(p)
                out.append((ids, engine.check(ids, params, fit_max_tokens=fit)))
            return out

        try:
            for p in prompts:
                if isinstance(p, str):
                    limits.check_prompt_text(p, char_limit, engine.context)
            return await asyncio.to_thread(tokenize_and_check)
        except RequestError as e:
            raise ApiError(400, str(e), param=e.param, code=e.code) from None

    def submit_all(jobs, q: asyncio.Queue) -> list[int]:
        loop = asyncio.get_running_loop()
        ids = []
        try:
            for i, (prompt_ids, params) in enumerate(jobs):
                def sink(ev: Event, i=i) -> None:
                    loop.call_soon_threadsafe(q.put_nowait, (i, ev))
                ids.append(engine.submit(prompt_ids, params, sink).id)
        except RuntimeError as e:  # shut down
            for rid in ids:
                engine.cancel(rid)
            raise ApiError(503, f"the engine is not running ({e})", "server_error") from None
        if not engine.threaded:
            for rid in ids:
                engine.cancel(rid)
            raise ApiError(503, "the engine is not running", "server_error")
        return ids

    async def collect(jobs) -> list[Completion]:
        """Run the jobs; their completions, in order."""
        q: asyncio.Queue = asyncio.Queue()
        ids = submit_all(jobs, q)
        got: list[list[Event]] = [[] for _ in jobs]
        final: list[Event | None] = [None] * len(jobs)
        try:
            while any(f is None for f in final):
                i, ev = await q.get()
                got[i].append(ev)
                if ev.finish_reason is not None:
                    final[i] = ev
        finally:
            for rid, f in zip(ids, final):
                if f is None:
                    engine.cancel(rid)
        bad = next((f for f in final if f.finish_reason == "error"), None)
        if bad is not None:
            raise ApiError(500, f"generation failed on the target: {bad.error}", "server_error")
        return [Completion.of(evs) for evs in got]

    async def events(jobs) -> AsyncIterator[tuple[int, Event]]:
        """Submit now (errors surface before the response starts); yield (index, event) until all finish."""
        q: asyncio.Queue = asyncio.Queue()
        ids = submit_all(jobs, q)

        async def gen():
            left = set(range(len(jobs)))
            try:
                while left:
                    i, ev = await q.get()
                    if ev.finish_reason is not None:
                        left.discard(i)
                    yield i, ev
            finally:  # the client went away: free the cache rows
                for i in left:
                    engine.cancel(ids[i])
        return gen()

    def best_samples(candidates: list[Completion], n: int) -> list[Completion]:
        """best_of: the n samples whose tokens have the highest summed logprob (vLLM's and OpenAI's rule), best
        first; ties keep sample order."""
        score = lambda c: sum(t.logprob for t in c.logprobs if t.logprob is not None)  # noqa: E731
        return sorted(candidates, key=score, reverse=True)[:n]

    def usage(finals: list[Event | Completion], n: int) -> dict:
        """finals in choice order (n per prompt): each prompt counts once, every sample's tokens count."""
        p = sum(f.prompt_tokens for f in finals[::n])
        c = sum(f.completion_tokens for f in finals)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    def sse(obj: Any) -> bytes:
        return b"data: " + json.dumps(obj, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n\n"

    async def sse_stream(chunks: AsyncIterator[dict]) -> AsyncIterator[bytes]:
        try:
            async for c in chunks:
                yield sse(c)
        except ApiError as e:
            yield sse({"error": {"message": e.message, "type": e.type, "param": e.param, "code": e.code}})
        yield b"data: [DONE]\n\n"

    @app.post("/v1/completions", response_model=CompletionResponse,
              responses={200: openapi.event_stream(CompletionResponse, "delta"), **errors})
    async def completions(req: CompletionRequest):
        check_model(req)
        n, want = req.n, req.logprobs is not None
        best = req.best_of or n
        if best < n:
            raise ApiError(400, f"best_of ({best}) must be at least n ({n})", param="best_of", code=BEST_OF)
        if best > n and req.stream:
            raise ApiError(400, "best_of > n cannot be streamed: the best samples are known only at the end",
                           param="best_of", code=BEST_OF)
        max_tokens = COMPLETION_DEFAULT_MAX_TOKENS if req.max_tokens is None else req.max_tokens
        # best_of ranks samples by their tokens' summed logprob, so it needs them even when the reply does not
        params = params_for(req, max_tokens, logprobs=req.logprobs if want or best == n else 0,
                            prompt_logprobs=req.logprobs if req.echo else None)
        prompts = req.prompts()
        jobs = samples(await prepare(prompts, params, fit=req.max_tokens is None), best)
        echo = [(p if isinstance(p, str) else engine.tokenizer.decode(p)) if req.echo else "" for p in prompts]
        tt = token_text.with_ids() if req.return_tokens_as_token_ids else token_text
        legacy = [LegacyLogprobs(tt, echo[k // n] if req.echo else None) for k in range(len(jobs))]
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(choices: list[dict], use: dict | None = None) -> dict:
            body = {"id": rid, "object": "text_completion", "created": now, "model": model_name, "choices": choices}
            return body | ({"usage": use} if use is not None else {})

        if not req.stream:
            done = await collect(jobs)
            use = usage(done, best)  # every sample's tokens count, the ones best_of drops too
            if best > n:
                done = [c for k in range(len(prompts)) for c in best_samples(done[k * best:(k + 1) * best], n)]
            return chunk([{"index": k, "text": echo[k // n] + c.text, "finish_reason": c.finish_reason,
                           "logprobs": legacy[k].shape(c.prompt_logprobs, c.logprobs) if want else None}
                          for k, c in enumerate(done)], use)

        stream = await events(jobs)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def chunks():
            finals: list[Event | None] = [None] * len(jobs)
            started = [False] * len(jobs)
            async for k, ev in stream:
                if ev.finish_reason == "error":
                    raise ApiError(500, f"generation failed on the target: {ev.error}", "server_error")
                text = ev.text if started[k] else echo[k // n] + ev.text  # the echo comes with the first event
                started[k] = True
                lp = legacy[k].shape(ev.prompt_logprobs or [], ev.logprobs or []) if want else None
                if text or ev.finish_reason or (lp and lp["tokens"]):
                    yield chunk([{"index": k, "text": text, "logprobs": lp, "finish_reason": ev.finish_reason}])
                if ev.finish_reason:
                    finals[k] = ev
            if include_usage:
                yield chunk([], usage(finals, n))
        return StreamingResponse(sse_stream(chunks()), media_type="text/event-stream")

    @app.post("/v1/chat/completions", response_model=ChatResponse,
              responses={200: openapi.event_stream(ChatCompletionChunk, "delta"), **errors})
    async def chat(req: ChatRequest):
        check_model(req)
        want, n = bool(req.logprobs), req.n
        if req.top_logprobs is not None and not want:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        messages = [(m.role, m.text(), m.name) for m in req.messages]
        sp = engine.tokenizer.specials
        if sp.chat_template is None:  # turnout's plain-text roles; a reply ends at the next role line too
            prompt, chat_stop = render_chat(messages), (CHAT_STOP,)
        else:  # the model's own template; its end-of-turn token is one of the tokenizer's stop ids
            try:
                names = engine.tokenizer.token_names(sp.bos_id, sp.eos_id)
                prompt = render_template(sp.chat_template, messages, *names)
            except ValueError as e:
                raise ApiError(400, str(e), param="messages") from None
            chat_stop = ()
        asked = req.max_completion_tokens or req.max_tokens
        params = params_for(req, asked or engine.default_max_tokens, chat_stop,
                            logprobs=(req.top_logprobs or 0) if want else None)
        jobs = samples(await prepare([prompt], params, fit=asked is None), n)
        tt = token_text.with_ids() if req.return_tokens_as_token_ids else token_text
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(choices: list[dict], use: dict | None = None) -> dict:
            body = {"id": rid, "object": "chat.completion.chunk", "created": now, "model": model_name,
                    "choices": choices}
            return body | ({"usage": use} if use is not None else {})

        if not req.stream:
            done = await collect(jobs)
            return {"id": rid, "object": "chat.completion", "created": now, "model": model_name,
                    "choices": [{"index": k, "message": {"role": "assistant", "content": c.text},
                                 "logprobs": {"content": chat_shape(c.logprobs, tt)} if want else None,
                                 "finish_reason": c.finish_reason} for k, c in enumerate(done)],
                    "usage": usage(done, n)}

        stream = await events(jobs)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        async def chunks():
            finals: list[Event | None] = [None] * len(jobs)
            for k in range(len(jobs)):
                yield chunk([{"index": k, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                              "finish_reason": None}])
            async for k, ev in stream:
                if ev.finish_reason == "error":
                    raise ApiError(500, f"generation failed on the target: {ev.error}", "server_error")
                if ev.text or (want and ev.logprobs):
                    lp = {"content": chat_shape(ev.logprobs or [], tt)} if want else None
                    yield chunk([{"index": k, "delta": {"content": ev.text}, "logprobs": lp, "finish_reason": None}])
                if ev.finish_reason:
                    yield chunk([{"index": k, "delta": {}, "logprobs": None, "finish_reason": ev.finish_reason}])
                    finals[k] = ev
            if include_usage:
                yield chunk([], usage(finals, n))
        return StreamingResponse(sse_stream(chunks()), media_type="text/event-stream")

    openapi.install(app, model_name, engine.vocab_size, (CompletionRequest, ChatRequest), (ChatCompletionChunk,))
    return app


def serve(engine: Engine, model_name: str, *, host: str = "127.0.0.1", port: int = 8000,
          api_key: str | None = None, target: str = "", dtype: str = "", log_level: str = "warning",
          max_body_bytes: int | None = None) -> None:
    """Start the engine's model thread and run uvicorn until interrupted (SIGINT/SIGTERM); then stop the engine."""
    import uvicorn

    app = create_app(engine, model_name, api_key=api_key, target=target, dtype=dtype, max_body_bytes=max_body_bytes)
    engine.start()
    try:
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                      timeout_graceful_shutdown=5)).run()
    finally:
        engine.shutdown()
