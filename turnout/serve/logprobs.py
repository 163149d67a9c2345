"""Log-probabilities of tokens: computed by the engine from its own logits, shaped for the two OpenAI APIs.

The distribution is the model's own, raw: log_softmax in float32 of the logits the engine decodes with, before
temperature, top-k and top-p (vLLM's default), so a sampled token's logprob does not depend on how it was sampled
and a prompt scored twice gets the same values. `token_logprobs` scores a batch of rows in one host transfer;
`prompt_logprobs` scores every prompt token after the first (which nothing precedes: its logprob is None).

Token text: `TokenText` knows each id's exact bytes (byte-level BPE: the vocabulary entry mapped back to bytes;
special tokens: their name). A token whose bytes are not whole UTF-8 characters is written `bytes:\\xe2\\x80`
(OpenAI's convention); with `return_tokens_as_token_ids` (vLLM's extension) every token is written `token_id:N`,
which names it exactly whatever its bytes. A token's `text_offset` is the character offset where it starts in the choice's text,
decoded from the bytes (`TextOffsets`), so it is exact for any text.
"""

from __future__ import annotations

import codecs
import copy
import json
from dataclasses import dataclass

import torch

from turnout.data import Tokenizer

MAX_LOGPROBS = 20  # alternatives per token at most (OpenAI's limit for chat's top_logprobs)
PROMPT_CHUNK = 1024  # prompt positions per log_softmax: bounds the float32 copy at PROMPT_CHUNK x vocab


class LogprobError(RuntimeError):
    """The logits to score were not finite (a failing target); fails the request that asked for them."""


@dataclass(frozen=True)
class TokenLogprob:
    """One token's log-probability and the `top` likeliest tokens at its position, likeliest first (as
    (id, logprob)); both None for a prompt's first token."""

    token: int
    logprob: float | None
    top: tuple[tuple[int, float], ...] | None


def token_logprobs(logits: torch.Tensor, tokens: list[int], top: list[int]) -> list[TokenLogprob]:
    """logits [R, V] (the distribution each of `tokens` was drawn from), `top[r]` alternatives for row r ->
    one TokenLogprob per row; one host transfer for all rows."""
    lp = torch.log_softmax(logits.float(), dim=-1)  # [R, V] float32
    idx = torch.tensor(tokens, device=lp.device).unsqueeze(-1)  # [R, 1]
    cols = [lp.gather(-1, idx)]  # [R, 1]: the chosen tokens
    k = max(top, default=0)
    if k:
        vals, ids = lp.topk(min(k, lp.shape[-1]), dim=-1)  # [R, k]; ids < 2**24 are exact in float32
        cols += [vals, ids.float()]
    host = torch.cat(cols, -1).tolist()  # [R, 1 + 2k]
    out = []
    for row, tok, n in zip(host, tokens, top):
        if not all(map(_finite, row)):
            raise LogprobError("the target produced non-finite logits (nan or inf) for this request")
        kk = (len(row) - 1) // 2
        out.append(TokenLogprob(tok, row[0], tuple((int(i), v) for v, i in zip(row[1:1 + n], row[1 + kk:1 + kk + n]))))
    return out


def prompt_logprobs(logits: torch.Tensor, prompt: list[int], top: int) -> list[TokenLogprob]:
    """logits [P, V] of a prefill (position p predicts prompt[p + 1]) -> one TokenLogprob per prompt token, the
    first with logprob None."""
    out = [TokenLogprob(prompt[0], None, None)]
    for a in range(0, len(prompt) - 1, PROMPT_CHUNK):
        b = min(a + PROMPT_CHUNK, len(prompt) - 1)
        out += token_logprobs(logits[a:b], prompt[a + 1:b + 1], [top] * (b - a))
    return out


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the printable character that stands for each byte -> the byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class TokenText:
    """Each token id's bytes, its text for the APIs, and how many characters it adds to a text."""

    def __init__(self, tokenizer: Tokenizer):
        spec = json.loads(tokenizer.to_str())
        model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
        self._bytes: dict[int, bytes] = {}
        if model.get("type") == "BPE" and pre.get("type") == "ByteLevel":
            dec = _byte_decoder()
            for s, i in (model.get("vocab") or {}).items():
                if all(c in dec for c in s):
                    self._bytes[i] = bytes(dec[c] for c in s)
        for t in spec.get("added_tokens") or ():  # special tokens: their name
            self._bytes[t["id"]] = t["content"].encode()
        self._decode = tokenizer.decode
        self.as_ids = False

    def with_ids(self) -> "TokenText":
        """The same tokens, written `token_id:N` (their bytes, and so the text offsets, unchanged)."""
        twin = copy.copy(self)
        twin.as_ids = True
        return twin

    def bytes(self, token: int) -> bytes:
        b = self._bytes.get(token)
        return b if b is not None else self._decode([token]).encode("utf-8", "surrogatepass")

    def text(self, token: int) -> str:
        if self.as_ids:
            return f"token_id:{token}"
        b = self.bytes(token)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{x:02x}" for x in b)



class TextOffsets:
    """Where each token starts in a text, in characters: at the character its first byte belongs to (a token that
    starts inside a multi-byte character starts at that character). The text is the tokens' bytes decoded as
    UTF-8 with each maximal invalid subsequence one U+FFFD (Python's errors="replace", as the byte-level decoder
    writes it), so the offsets are exact for any bytes."""

    def __init__(self, start: int = 0):
        self.at = start  # characters decoded so far
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # holds an unfinished character

    def take(self, data: bytes) -> int:
        """The offset of a token with these bytes, which then follow the text so far."""
        first = None
        for x in data:  # a byte at a time: which character each byte ends up in
            self.at += len(self._decoder.decode(bytes([x])))
            if first is None:
                # buffered: the character it starts or continues comes next; else the last one decoded holds it
                first = self.at if self._decoder.getstate()[0] else self.at - 1
        return self.at if first is None else first


def completion_shape(entries: list[TokenLogprob], tt: TokenText, offsets: TextOffsets) -> dict:
    """The legacy /v1/completions `logprobs` object of `entries`; `offsets` says where the first starts in the
    choice's text and moves past the last. top_logprobs holds the `top` tokens plus the chosen one (up to N + 1
    entries, as OpenAI says)."""
    tokens, values, tops, starts = [], [], [], []
    for e in entries:
        tokens.append(tt.text(e.token))
        values.append(e.logprob)
        starts.append(offsets.take(tt.bytes(e.token)))
        if e.top is None:
            tops.append(None)
            continue
        d: dict[str, float] = {}
        for i, v in e.top:
            d.setdefault(tt.text(i), v)
        d.setdefault(tokens[-1], e.logprob)
        tops.append(d)
    return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": starts}


def chat_shape(entries: list[TokenLogprob], tt: TokenText) -> list[dict]:
    """The chat `logprobs.content` list of `entries` (generated tokens only: every logprob is a number)."""
    def one(i: int, v: float) -> dict:
        return {"token": tt.text(i), "logprob": v, "bytes": list(tt.bytes(i))}
    return [one(e.token, e.logprob) | {"top_logprobs": [one(i, v) for i, v in e.top or ()]} for e in entries]


class LegacyLogprobs:
    """One completion choice's legacy logprobs, chunk by chunk: with `echo` (the echoed prompt text), the
    prompt's tokens come first, from character 0, and the generated ones start at the end of the echoed text."""

    def __init__(self, tt: TokenText, echo: str | None):
        self.tt, self.echo, self.offsets = tt, echo, TextOffsets()

    def shape(self, prompt: list[TokenLogprob], generated: list[TokenLogprob]) -> dict:
        """The object for the next chunk: `prompt` is read on the first call only (and only with echo)."""
        parts = []
        if self.echo is not None:
            parts.append(completion_shape(prompt, self.tt, self.offsets))
            self.offsets, self.echo = TextOffsets(len(self.echo)), None
        parts.append(completion_shape(generated, self.tt, self.offsets))
        return {k: [x for p in parts for x in p[k]] for k in parts[0]}
