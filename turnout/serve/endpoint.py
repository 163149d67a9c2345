"""An OpenAI-compatible inference server as one side of `turnout parity`: vLLM, vllm-ascend, SGLang, llama.cpp's
server, or `turnout serve` on another target.

Spec `openai:URL`, URL the server's base (`http://host:8000` or `http://host:8000/v1`); `OPENAI_API_KEY`, when set,
is sent as the bearer token. Everything goes through /v1/models and /v1/completions:

  score      the prompt as token ids, `echo: true, logprobs: K, max_tokens: 1, temperature: 0`: the logprob of
             every prompt token given the ones before it and the K likeliest tokens at each position (the
             generated token's entry adds the distribution after the last prompt token).
  tokenize   a text prompt, echoed: the token ids the server's own tokenizer made of it.
  greedy     token ids in, `temperature: 0, ignore_eos: true` (vLLM's extension), the generated ids out.

Token ids come back exactly through `return_tokens_as_token_ids: true` (vLLM's extension, which turnout serve
speaks: each token is written "token_id:N"). A server that refuses a field (400 naming it) is asked again without
it; without token ids, each token string is mapped to the ids whose text it is (`TokenText`), and a string that
names no id or several is left out of the comparison (counted, never guessed).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from turnout.data import Tokenizer
from turnout.errors import TargetError, one_line
from turnout.serve.logprobs import TokenText

PREFIX = "openai:"
OPTIONAL = ("return_tokens_as_token_ids", "ignore_eos")  # extensions dropped, one by one, when a server refuses them


class EndpointError(TargetError):
    """The endpoint is down, refuses what parity needs, or serves another model (one line; exit 2)."""


def is_endpoint(spec: str) -> bool:
    return spec.startswith(PREFIX)


@dataclass
class Scored:
    """One position of a scored prompt: the token there, its logprob (None at position 0) and the top-K
    alternatives the server named, as token id -> logprob (only the ids it named unambiguously)."""

    token: int
    logprob: float | None
    top: dict[int, float] = field(default_factory=dict)


class Endpoint:
    """A client for one model on an OpenAI-compatible server, reading token ids through `tokenizer`."""

    def __init__(self, spec: str, tokenizer: Tokenizer, *, model: str | None = None, timeout: float = 300):
        url = spec[len(PREFIX):] if is_endpoint(spec) else spec
        if not url.startswith(("http://", "https://")):
            raise EndpointError(f"endpoint {spec!r}: expected openai:http://HOST:PORT[/v1]")
        url = url.rstrip("/")
        self.spec, self.base = spec, url if url.endswith("/v1") else url + "/v1"
        self.timeout, self.refused = timeout, set()
        self.unnamed = 0  # token strings that named no id or several (left out of the comparison)
        key = os.environ.get("OPENAI_API_KEY")
        self._headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
        self._tt, self._ids = TokenText(tokenizer), None
        self._vocab = tokenizer.vocab_size
        self.models = self._call("GET", "/models")
        ids = [m.get("id") for m in self.models.get("data") or () if isinstance(m, dict)]
        if model is not None and model not in ids:
            raise EndpointError(f"endpoint {self.base} does not serve model {model!r} (it serves {ids})")
        if model is None and len(ids) != 1:
            raise EndpointError(f"endpoint {self.base} serves {len(ids)} models {ids}; name one with --endpoint-model")
        self.model = model or ids[0]

    # --- the three requests ----------------------------------------------------------------------------------------
    def score(self, prompt: list[int], k: int) -> list[Scored]:
        """One Scored per prompt token, plus one for the position after the prompt (its token the generated one)."""
        lp = self._logprobs(self._completion({"prompt": prompt, "echo": True, "logprobs": k, "max_tokens": 1,
                                              "temperature": 0}), "echo with logprobs")
        n = len(lp["tokens"])
        if n < len(prompt) + 1 or len(lp.get("top_logprobs") or ()) < n or len(lp.get("token_logprobs") or ()) < n:
            raise EndpointError(f"endpoint {self.base} does not return the prompt's logprobs with echo (got {n} "
                                f"tokens for a {len(prompt)}-token prompt); it cannot be compared teacher-forced")
        echoed = [self._one(t) for t in lp["tokens"][:len(prompt)]]
        if any(e is not None and e != p for e, p in zip(echoed, prompt)):
            at = next(i for i, (e, p) in enumerate(zip(echoed, prompt)) if e is not None and e != p)
            raise EndpointError(f"endpoint {self.base} changed the prompt's token ids (position {at}: sent "
                                f"{prompt[at]}, echoed {echoed[at]}); it serves another model or tokenizer")
        out = []
        for i in range(len(prompt) + 1):
            token = prompt[i] if i < len(prompt) else self._one(lp["tokens"][i])
            top = {}
            for s, v in (lp["top_logprobs"][i] or {}).items():
                t = self._one(s)
                if t is not None and isinstance(v, (int, float)):
                    top[t] = float(v)
            value = lp["token_logprobs"][i]
            value = float(value) if isinstance(value, (int, float)) and i > 0 else None
            if value is not None and token is not None:
                top[token] = value
            out.append(Scored(token if token is not None else -1, value, top))
        return out

    def tokenize(self, text: str) -> list[set[int]]:
        """The ids the server's tokenizer made of `text`, one set per token (a single id when it names them)."""
        body = self._completion({"prompt": text, "echo": True, "logprobs": 0, "max_tokens": 1, "temperature": 0})
        lp = self._logprobs(body, "echo with logprobs")
        used = (body.get("usage") or {}).get("prompt_tokens")
        n = used if isinstance(used, int) else len(lp["tokens"]) - 1
        return [self._names(s) for s in lp["tokens"][:n]]

    def greedy(self, prompt: list[int], new_tokens: int) -> list[int]:
        """The server's greedy continuation of `prompt` (-1 where a token string named no single id)."""
        lp = self._logprobs(self._completion({"prompt": prompt, "max_tokens": new_tokens, "temperature": 0,
                                              "logprobs": 0, "ignore_eos": True}), "logprobs")
        return [t if t is not None else -1 for t in map(self._one, lp["tokens"])]

    # --- HTTP ------------------------------------------------------------------------------------------------------
    def _completion(self, body: dict) -> dict:
        body = {"model": self.model, **body, "return_tokens_as_token_ids": True}
        while True:
            try:
                return self._call("POST", "/completions", {k: v for k, v in body.items() if k not in self.refused})
            except _Refused as e:
                name = next((f for f in OPTIONAL if f not in self.refused and f in e.message), None)
                if name is None:
                    raise EndpointError(f"endpoint {self.base} refused /completions ({e.message})") from None
                self.refused.add(name)

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=self._headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            message = _error_message(e)
            if 400 <= e.code < 500 and e.code not in (401, 403, 404):
                raise _Refused(message) from None
            raise EndpointError(f"endpoint {self.base}{path} answered HTTP {e.code}: {message}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise EndpointError(f"endpoint {self.base} is down or unreachable ({one_line(reason)})") from None
        try:
            out = json.loads(raw)
        except ValueError:
            raise EndpointError(f"endpoint {self.base}{path} did not answer JSON") from None
        if not isinstance(out, dict):
            raise EndpointError(f"endpoint {self.base}{path} answered {type(out).__name__}, not an object")
        return out

    def _logprobs(self, body: dict, what: str) -> dict:
        choices = body.get("choices")
        lp = choices[0].get("logprobs") if isinstance(choices, list) and choices and isinstance(choices[0], dict) \
            else None
        if not isinstance(lp, dict) or not isinstance(lp.get("tokens"), list):
            raise EndpointError(f"endpoint {self.base} answered without logprobs when asked for {what}; parity "
                                f"needs a server that returns them (vLLM, SGLang and turnout serve do)")
        return lp

    # --- token strings -> ids --------------------------------------------------------------------------------------
    def _names(self, s: str) -> set[int]:
        if s.startswith("token_id:") and s[9:].lstrip("-").isdigit():
            return {int(s[9:])}
        if self._ids is None:  # text -> ids, built once, only for servers without token ids
            self._ids = {}
            for i in range(self._vocab):
                self._ids.setdefault(self._tt.text(i), set()).add(i)
        return self._ids.get(s, set())

    def _one(self, s) -> int | None:
        names = self._names(s) if isinstance(s, str) else set()
        if len(names) == 1:
            return next(iter(names))
        self.unnamed += 1
        return None

    def describe(self) -> dict:
        """What the certificate records of this side."""
        return {"target": self.spec, "kind": "endpoint", "endpoint": self.base, "model": self.model,
                "models": self.models, "token_ids": "return_tokens_as_token_ids"
                if "return_tokens_as_token_ids" not in self.refused else "token strings mapped through the tokenizer",
                "refused_fields": sorted(self.refused), "unnamed_tokens": self.unnamed}


class _Refused(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _error_message(e: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(e.read() or b"{}")
    except ValueError:
        return one_line(e.reason)
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return one_line(str(err["message"]) + (f" (param {err['param']})" if err.get("param") else ""))
    if isinstance(body, dict) and body.get("detail"):
        return one_line(str(body["detail"]))
    return one_line(e.reason)
