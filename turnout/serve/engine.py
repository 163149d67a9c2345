"""The serving engine: continuous batching over a preallocated MLA latent cache, on one model thread.

    engine = Engine(model, tokenizer, backend, max_batch=16)
    engine.start()                                   # the model thread (inside backend.compute())
    handle = engine.submit("To be", SamplingParams(max_tokens=20, temperature=0))
    for ev in handle.events(): print(ev.text, end="")  # or handle.result(), or `async for ev in engine.astream(..)`
    engine.shutdown()

Without `start()`, the caller's thread drives the engine (`run()`, `handle.events()` and `generate()` step it).

One iteration (`step`): drop cancelled requests; admit waiting requests into free cache rows and prefill each one
alone (a [1, P] forward that writes its latent cache row and yields its first token); then one decode forward for
every running row together ([B, 1] tokens, each row at its own position in its own cache row), sample, and retire
finished rows. Requests therefore join and leave the running batch between decode steps, and a prefill never
pads anybody's sequence. With `speculative=True` (a model with an MTP module) each decode step verifies one
MTP-drafted token per row and emits one or two tokens (speculative.py); the output is the same. Sampling uses each
request's own generator (sampling.py), so its tokens do not depend on its batch neighbours beyond float rounding.
A row that cannot be sampled (non-finite logits) fails its own request; the rest of the batch decodes on.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import torch

from turnout.backend import Backend
from turnout.data import Tokenizer
from turnout.errors import one_line
from turnout.model import LatentCache, Transformer
from turnout.serve import speculative
from turnout.serve.chat import TemplatedChat
from turnout.serve.logprobs import TokenLogprob, prompt_logprobs, token_logprobs
from turnout.serve.request import Completion, Event, RequestError, RequestHandle
from turnout.serve.sampling import SamplingError, SamplingParams, make_generator, sample_rows
from turnout.serve.stops import TextAssembler


@dataclass
class EngineStats:
    """Counters since the engine was built (read them from any thread; they only grow)."""

    requests: int = 0
    finished: int = 0
    cancelled: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    decode_steps: int = 0
    drafted: int = 0  # speculative decoding: drafts verified, and how many were kept
    accepted: int = 0
    errors: int = 0
    busy_s: float = 0.0
    last_error: str | None = None


@dataclass(eq=False)
class _Request:
    id: int
    prompt: list[int]
    params: SamplingParams
    sink: Callable[[Event], None]
    assembler: TextAssembler
    generator: torch.Generator | None = None
    slot: int = -1
    pos: int = 0  # tokens already in this request's cache row
    last: int = -1  # newest sampled token (fed at position `pos` by the next decode step)
    draft: int = -1  # speculative decoding: the MTP module's guess for the token after `last`
    out: list[int] = field(default_factory=list)
    done: bool = False
    prompt_lp: list[TokenLogprob] | None = None  # sent with the request's first event


class Engine:
    """Continuous-batching decoder for one model on one target (see the module docstring).

    The model is put in eval mode and switched, in place, to the target's decode kernels
    (`backend.inference_kernels()` through `Transformer.set_kernels`: the same values, other kernels)."""

    def __init__(self, model: Transformer, tokenizer: Tokenizer, backend: Backend, *, max_batch: int = 16,
                 max_context: int | None = None, default_max_tokens: int = 256, speculative: bool = False):
        args = model.args
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if speculative and args.mtp_depth < 1:
            raise ValueError("speculative decoding drafts with the model's MTP module; this model has none "
                             "(mtp_depth=0)")
        self.speculative = speculative
        # the target's decode kernels (e.g. input-major weights on CPU): same values, faster few-row matmuls
        self.model = model.eval().set_kernels(**backend.inference_kernels())
        self.tokenizer, self.backend = tokenizer, backend
        # a verify step writes one position past the newest token, so speculation keeps one cache position spare
        self.context = min(max_context or args.max_seq_len, args.max_seq_len - speculative)
        if self.context < 2:
            raise ValueError(f"max_context must be >= 2, got {self.context}")
        self.max_batch, self.default_max_tokens = max_batch, default_max_tokens
        self.vocab_size = args.vocab_size
        self.device = backend.device()
        self.dtype = next(model.parameters()).dtype
        # [n_layers, max_batch, context, kv_lora_rank + rope]: the only per-token state decoding keeps
        self.cache = LatentCache(args, max_batch, self.context + speculative, device=self.device, dtype=self.dtype,
                                 mtp_layers=int(speculative))
        self.eos_id = tokenizer.eos_id
        self.stop_ids = frozenset(tokenizer.specials.stops)  # eos, and any other id the model ends a turn with
        self.stats = EngineStats()
        self._free = list(range(max_batch - 1, -1, -1))  # cache rows not in use (pop() gives the lowest)
        self._running: list[_Request] = []  # touched only by the thread that steps the engine
        self._waiting: collections.deque[_Request] = collections.deque()
        self._cancel: set[int] = set()
        self._cond = threading.Condition()  # guards _waiting, _cancel, _stop; wakes the model thread
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stop = False

    # ---- facts ------------------------------------------------------------------------------------------
    @property
    def cache_bytes_per_token(self) -> int:
        """(kv_lora_rank + qk_rope_head_dim) x layers x dtype size."""
        return self.cache.bytes_per_token

    @property
    def acceptance_rate(self) -> float | None:
        """Fraction of MTP drafts the main model kept (None before any speculative step)."""
        return self.stats.accepted / self.stats.drafted if self.stats.drafted else None

    @property
    def threaded(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def pending(self) -> int:
        """Requests waiting or running."""
        with self._cond:
            return len(self._waiting) + len(self._running)

    # ---- requests -----------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str | list[int]) -> list[int]:
        """Token ids of a prompt (text, after bos when the model's tokenizer frames text so, or ids as given); an
        empty prompt becomes [eos] (the document separator)."""
        if isinstance(prompt, TemplatedChat):
            try:
                ids = self.tokenizer.encode_special(prompt)
            except Exception as e:  # noqa: BLE001
                raise RequestError(f"messages cannot be tokenized: {type(e).__name__}", "messages") from None
        elif isinstance(prompt, str):
            try:
                ids = self.tokenizer.frame(self.tokenizer.encode(prompt))
            except Exception as e:  # noqa: BLE001 - e.g. lone surrogates the tokenizer cannot take
                raise RequestError(f"prompt cannot be tokenized: {type(e).__name__}", "prompt") from None
        else:
            ids = list(prompt)
            ok = [isinstance(t, int) and not isinstance(t, bool) and 0 <= t < self.vocab_size for t in ids]
            if not all(ok):
                bad = ids[ok.index(False)]
                raise RequestError(f"prompt token ids must be integers in [0, {self.vocab_size}), got {bad!r}",
                                   "prompt")
        return ids or [self.eos_id]

    def check(self, prompt_ids: list[int], params: SamplingParams, *, fit_max_tokens: bool = False) -> SamplingParams:
        """Validate a request against the context; returns params (max_tokens shrunk to fit when asked)."""
        problems = params.problems()
        if problems:
            raise RequestError(problems[0][1], problems[0][0])
        n = len(prompt_ids)
        if n >= self.context:
            raise RequestError(f"the prompt has {n} tokens; this model's context is {self.context} tokens, "
                               f"so a prompt may have at most {self.context - 1}", "prompt",
                               "context_length_exceeded")
        if n + params.max_tokens > self.context:
            if fit_max_tokens:
                return dataclasses.replace(params, max_tokens=self.context - n)
            raise RequestError(f"the prompt ({n} tokens) plus max_tokens ({params.max_tokens}) exceed this model's "
                               f"context of {self.context} tokens; ask for at most {self.context - n}",
                               "max_tokens", "context_length_exceeded")
        return params

    def submit(self, prompt: str | list[int], params: SamplingParams = SamplingParams(),
               sink: Callable[[Event], None] | None = None, *, fit_max_tokens: bool = False) -> RequestHandle:
        """Queue a request (any thread). Raises RequestError when it cannot run. `sink` is called from the model
        thread with each Event; without one, read the returned handle."""
        ids = self.encode_prompt(prompt)
        params = self.check(ids, params, fit_max_tokens=fit_max_tokens)
        q = None
        if sink is None:
            q = queue.SimpleQueue()
            sink = q.put
        req = _Request(next(self._ids), ids, params, sink, TextAssembler(self.tokenizer, params.stop),
                       make_generator(params, self.device))
        with self._cond:
            if self._stop:
                raise RuntimeError("the engine is shut down")
            self._waiting.append(req)
            self.stats.requests += 1
            self._cond.notify()
        return RequestHandle(self, req.id, q)

    def cancel(self, request_id: int) -> None:
        """Stop a request at the next step (its sink gets finish_reason "cancelled"); unknown ids are ignored."""
        with self._cond:
            self._cancel.add(request_id)
            self._cond.notify()

    def generate(self, prompt: str | list[int], params: SamplingParams = SamplingParams(),
                 timeout: float | None = None) -> Completion:
        """Submit and wait for the whole completion (steps the engine in this thread if no model thread runs)."""
        return self.submit(prompt, params).result(timeout)

    async def astream(self, prompt: str | list[int], params: SamplingParams = SamplingParams(), *,
                      fit_max_tokens: bool = False) -> AsyncIterator[Event]:
        """Submit from an event loop and yield Events as the model thread produces them (needs `start()`).
        Leaving the loop early (a client that went away) cancels the request."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Event] = asyncio.Queue()

        def sink(ev: Event) -> None:
            loop.call_soon_threadsafe(q.put_nowait, ev)

        handle = self.submit(prompt, params, sink, fit_max_tokens=fit_max_tokens)
        finished = False
        try:
            while True:
                ev = await q.get()
                finished = ev.finish_reason is not None
                yield ev
                if finished:
                    return
        finally:
            if not finished:
                self.cancel(handle.id)

    # ---- the model thread -------------------------------------------------------------------------------------
    def start(self) -> Engine:
        """Start the model thread: it enters backend.compute() (dispatch modes are per thread) and steps forever."""
        if self.threaded:
            return self
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="turnout-engine", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the model thread; requests still queued or running finish with "cancelled"."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        for r in list(self._waiting) + list(self._running):
            self._finish(r, "cancelled", "")
        self._waiting.clear()

    def _loop(self) -> None:
        with self.backend.compute(), torch.inference_mode():
            while True:
                with self._cond:
                    while not (self._stop or self._waiting or self._running or self._cancel):
                        self._cond.wait()
                    if self._stop:
                        return
                try:
                    self.step()
                except Exception as e:  # noqa: BLE001 - a bug must not strand requests or kill the thread
                    self._fail([r for r in self._running if not r.done], e)
                    self._running = []

    def run(self, max_steps: int | None = None) -> int:
        """Step the engine in this thread (under compute() and inference_mode) until idle or `max_steps`;
        returns the steps that did work. Not while the model thread runs."""
        if self.threaded:
            raise RuntimeError("the model thread is running; submit requests and read their handles instead")
        n = 0
        with self.backend.compute(), torch.inference_mode():
            while (max_steps is None or n < max_steps) and self.step():
                n += 1
        return n

    # ---- one iteration ------------------------------------------------------------------------------------------
    def step(self) -> bool:
        """Cancel, admit + prefill, decode once. Call it inside backend.compute() and torch.inference_mode().
        Returns False when there was nothing to do."""
        t0 = time.perf_counter()
        with self._cond:
            cancel, self._cancel = self._cancel, set()
            gone = [r for r in self._waiting if r.id in cancel]
            if gone:
                self._waiting = collections.deque(r for r in self._waiting if r.id not in cancel)
            admit = []
            while self._waiting and len(admit) < len(self._free):
                admit.append(self._waiting.popleft())
        for r in gone:
            self._finish(r, "cancelled", "")
        for r in [r for r in self._running if r.id in cancel]:
            self._finish(r, "cancelled", "")
        self._running = [r for r in self._running if not r.done]
        busy = bool(admit or self._running)
        for r in admit:
            r.slot = self._free.pop()
            self._running.append(r)  # before prefill, so a failure anywhere still finishes it
            self._prefill(r)
        self._running = [r for r in self._running if not r.done]
        if self._running:
            self._decode()
            self._running = [r for r in self._running if not r.done]
        if busy:
            self.stats.busy_s += time.perf_counter() - t0
        return busy

    def _prefill(self, r: _Request) -> None:
        p, tok, lp = r.params, -1, None
        try:
            if self.speculative:
                tok, r.draft, logits = speculative.prefill(self.model, self.cache, r.prompt, r.slot, p, r.generator)
            else:
                tokens = torch.tensor([r.prompt], device=self.device)
                logits = self.model(tokens, cache=self.cache, start_pos=0, slots=[r.slot])  # [1, P, V]
                if p.max_tokens:  # max_tokens 0 only scores the prompt
                    (tok,) = sample_rows(logits[:, -1].float(), [p], [r.generator])
                    if isinstance(tok, SamplingError):
                        raise tok
            if p.prompt_logprobs is not None:
                r.prompt_lp = prompt_logprobs(logits[0], r.prompt, p.prompt_logprobs)
            if p.logprobs is not None and p.max_tokens:
                (lp,) = token_logprobs(logits[:, -1], [tok], [p.logprobs])
        except Exception as e:  # noqa: BLE001 - a failing target fails this request, not the engine
            self._fail([r], e)
            return
        r.pos = len(r.prompt)
        self.stats.prefill_tokens += r.pos
        if p.max_tokens:
            self._accept(r, tok, lp)
        else:
            self._finish(r, "length", "")

    def _decode(self) -> None:
        rows = sorted(self._running, key=lambda r: r.slot)  # slots 0..B-1 in order read the cache without a gather
        if self.speculative:
            return self._decode_speculative(rows)
        tokens = torch.tensor([[r.last] for r in rows], device=self.device)  # [B, 1]
        starts = [r.pos for r in rows]  # each row's own position (host ints: no device round trip)
        slots = [r.slot for r in rows]  # each row's cache row
        try:
            logits = self.model(tokens, cache=self.cache, start_pos=starts, slots=slots)[:, -1].float()  # [B, V]
            chosen = sample_rows(logits, [r.params for r in rows], [r.generator for r in rows])
            # rows that asked for logprobs (and were sampled): one log_softmax and host transfer for them all
            want = [i for i, (r, t) in enumerate(zip(rows, chosen))
                    if r.params.logprobs is not None and not isinstance(t, SamplingError)]
            lps = dict(zip(want, token_logprobs(logits[want], [chosen[i] for i in want],
                                                [rows[i].params.logprobs for i in want]))) if want else {}
        except Exception as e:  # noqa: BLE001
            self._fail(rows, e)
            return
        self.stats.decode_steps += 1
        for i, (r, tok) in enumerate(zip(rows, chosen)):
            if isinstance(tok, SamplingError):  # this row alone: the rest of the batch carries on
                self._fail([r], tok)
                continue
            r.pos += 1
            self.stats.decode_tokens += 1
            self._accept(r, tok, lps.get(i))

    def _decode_speculative(self, rows: list[_Request]) -> None:
        try:
            emitted, drafts, logits = speculative.step(
                self.model, self.cache, [r.last for r in rows], [r.draft for r in rows], [r.pos for r in rows],
                [r.slot for r in rows], [r.params for r in rows], [r.generator for r in rows])  # logits [B, 2, V]
            # emitted token k of row b was drawn from logits[b, k]
            want = [(b, k, t) for b, (r, toks) in enumerate(zip(rows, emitted))
                    if r.params.logprobs is not None and not isinstance(toks, SamplingError)
                    for k, t in enumerate(toks)]
            lps = dict(zip([(b, k) for b, k, _ in want], token_logprobs(
                logits[[b for b, _, _ in want], [k for _, k, _ in want]], [t for _, _, t in want],
                [rows[b].params.logprobs for b, _, _ in want]))) if want else {}
        except Exception as e:  # noqa: BLE001
            self._fail(rows, e)
            return
        self.stats.decode_steps += 1
        self.stats.drafted += len(rows)
        for b, (r, toks, d) in enumerate(zip(rows, emitted, drafts)):
            if isinstance(toks, SamplingError):
                self._fail([r], toks)
                continue
            self.stats.accepted += len(toks) == 2
            r.draft = d
            for k, tok in enumerate(toks):
                r.pos += 1
                self.stats.decode_tokens += 1
                self._accept(r, tok, lps.get((b, k)))
                if r.done:
                    break

    def _accept(self, r: _Request, tok: int, lp: TokenLogprob | None = None) -> None:
        """Record a sampled token (and its logprobs, when asked); emit its text; finish the request when done."""
        r.out.append(tok)
        r.last = tok
        p = r.params
        lps = None if lp is None else [lp]
        if tok in self.stop_ids and not p.ignore_eos:
            self._finish(r, "stop", r.assembler.flush(), [tok], lps=lps)
            return
        text = r.assembler.add(tok)
        if r.assembler.stopped:
            self._finish(r, "stop", text, [tok], lps=lps)
        elif len(r.out) >= p.max_tokens or r.pos >= self.context:
            self._finish(r, "length", text + r.assembler.flush(), [tok], lps=lps)
        else:
            self._send(r, Event(text, [tok], logprobs=lps))

    def _finish(self, r: _Request, reason: str, text: str, ids: list[int] | None = None,
                error: str | None = None, lps: list[TokenLogprob] | None = None) -> None:
        if r.done:
            return
        r.done = True
        if r.slot >= 0:
            self._free.append(r.slot)
            self._free.sort(reverse=True)
            r.slot = -1
        self.stats.finished += 1
        self.stats.cancelled += reason == "cancelled"
        self._send(r, Event(text, ids or [], reason, len(r.prompt), len(r.out), error, lps))

    def _fail(self, rows: list[_Request], e: Exception) -> None:
        msg = one_line(e, limit=300)
        self.stats.errors += 1
        self.stats.last_error = msg
        for r in rows:
            self._finish(r, "error", "", error=msg)

    def _send(self, r: _Request, ev: Event) -> None:
        if r.prompt_lp is not None:  # the first event after the prefill
            ev.prompt_logprobs, r.prompt_lp = r.prompt_lp, None
        try:
            r.sink(ev)
        except Exception:  # noqa: BLE001 - the reader is gone (closed event loop): stop working for it
            if not r.done:
                self._finish_silently(r)

    def _finish_silently(self, r: _Request) -> None:
        r.done = True
        self.stats.cancelled += 1
        if r.slot >= 0:
            self._free.append(r.slot)
            self._free.sort(reverse=True)
            r.slot = -1
