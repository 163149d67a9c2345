"""Incremental detokenisation with stop strings: token ids in, text deltas out.

The tokenizer is byte-level BPE, so the text of `ids[a:]` appended to the text of `ids[:a]` is the text of `ids`
whenever `ids[:a]` ends on a whole UTF-8 character. A token that ends inside a multi-byte character decodes to a
trailing U+FFFD; its text is held until the character completes (or the request ends).

Stop strings: after each token the new text is searched (from a window that lets a stop string straddle tokens);
on a hit the text is cut just before the stop string and the request finishes. For streaming, the longest tail of
the text that could still grow into a stop string is held back, so a client never sees text that is later trimmed.
"""

from __future__ import annotations

from collections.abc import Sequence

from turnout.data import Tokenizer

MAX_PENDING = 4  # a UTF-8 character has at most 4 bytes; after that many tokens, commit what we have


class TextAssembler:
    """One request's output text: `add(token)` -> newly releasable text; `stopped` once a stop string is seen."""

    def __init__(self, tokenizer: Tokenizer, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.max_stop = max((len(s) for s in self.stop), default=0)
        self.ids: list[int] = []
        self.text = ""  # committed text (after a stop: cut before the stop string)
        self.stopped = False
        self._committed = 0  # ids[:_committed] are in self.text
        self._searched = 0  # text[:_searched] holds no stop string
        self._emitted = 0  # text[:_emitted] has been handed out

    def add(self, token: int) -> str:
        """Append one generated token; return the text that may now be shown (possibly "")."""
        if self.stopped:
            return ""
        self.ids.append(token)
        piece = self.tokenizer.decode(self.ids[self._committed:])
        if piece.endswith("\ufffd") and len(self.ids) - self._committed < MAX_PENDING:
            return ""  # inside a multi-byte character: wait for its remaining bytes
        self._commit(piece)
        if self.stop:
            start = max(0, self._searched - self.max_stop + 1)
            hits = [i for i in (self.text.find(s, start) for s in self.stop) if i != -1]
            if hits:
                self.text = self.text[:min(hits)]
                self.stopped = True
                return self._release(len(self.text))
            self._searched = len(self.text)
            return self._release(len(self.text) - self._held_back())
        return self._release(len(self.text))

    def flush(self) -> str:
        """At the end of the request: commit any pending bytes (lossily) and release everything held back."""
        if not self.stopped and self._committed < len(self.ids):
            self._commit(self.tokenizer.decode(self.ids[self._committed:]))
        return self._release(len(self.text))

    def _commit(self, piece: str) -> None:
        self.text += piece
        self._committed = len(self.ids)

    def _release(self, end: int) -> str:
        end = max(end, self._emitted)
        out = self.text[self._emitted:end]
        self._emitted = end
        return out

    def _held_back(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of some stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best
