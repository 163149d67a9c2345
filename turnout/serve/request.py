"""What a caller holds for a submitted request: its events, its result, and the error for a request that cannot run.

The engine (engine.py) produces `Event`s in its model thread; a `RequestHandle` reads them from a queue, stepping
the engine in the reading thread when no model thread runs, so the same code works threaded and inline.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from turnout.serve.logprobs import TokenLogprob

if TYPE_CHECKING:
    from turnout.serve.engine import Engine

__all__ = ["Completion", "Event", "RequestError", "RequestHandle"]


class RequestError(ValueError):
    """A request the engine cannot run (too long for the context, bad parameters); `param` names the field."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param, self.code = param, code


@dataclass
class Event:
    """What a request's sink receives, in order: text deltas, then one event with `finish_reason` set. With
    logprobs asked, `logprobs` has one entry per id in `token_ids`, and the request's first event carries the
    prompt's (`prompt_logprobs`, one per prompt token)."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" (eos or a stop string), "length", "cancelled", "error"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # with finish_reason "error"
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob] | None = None


@dataclass
class Completion:
    """A finished request: all its text and tokens (and their logprobs when asked: empty lists otherwise)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob] = field(default_factory=list)

    @classmethod
    def of(cls, events: list[Event]) -> Completion:
        """The completion that a request's events (the last one final) add up to."""
        last = events[-1]
        return cls("".join(e.text for e in events), [t for e in events for t in e.token_ids], last.finish_reason,
                   last.prompt_tokens, last.completion_tokens, [x for e in events for x in e.logprobs or ()],
                   [x for e in events for x in e.prompt_logprobs or ()])


class RequestHandle:
    """A submitted request. With the default sink, `events()` / `result()` read its output (stepping the engine
    in this thread when no model thread runs)."""

    def __init__(self, engine: Engine, request_id: int, q: queue.SimpleQueue | None):
        self.engine, self.id, self._q = engine, request_id, q

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        if self._q is None:
            raise RuntimeError("this request was submitted with its own sink")
        while True:
            if self.engine.threaded:
                ev = self._q.get(timeout=timeout)
            else:
                while self._q.empty():
                    if not self.engine.run(max_steps=1):
                        raise RuntimeError(f"request {self.id}: the engine went idle without finishing it")
                ev = self._q.get()
            yield ev
            if ev.finish_reason is not None:
                return

    def result(self, timeout: float | None = None) -> Completion:
        events = list(self.events(timeout))
        if events[-1].finish_reason == "error":
            raise RuntimeError(f"request {self.id} failed: {events[-1].error}")
        return Completion.of(events)

    def cancel(self) -> None:
        self.engine.cancel(self.id)
