"""A completion's text as tokens arrive: valid deltas for streaming, stop strings, nothing cut mid-character."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["TextStream"]

CONTEXT_TOKENS = 4  # prompt tokens decoded before the completion, so its first word keeps its leading space


class TextStream:
    """A completion's text as it grows: deltas never cut a character, a stop string ends it, and a tail that could
    begin a stop string is held back until it cannot (or the completion ends)."""

    def __init__(self, tokenizer: Any, prompt_ids: list[int], stop: Sequence[str]) -> None:
        self._tokenizer = tokenizer
        # Decoding the completion after a few prompt tokens keeps its leading space (SentencePiece strips it at the
        # start of a text), so prompt text + completion text reads as the decoded whole.
        self._context = list(prompt_ids[-CONTEXT_TOKENS:])
        self._context_text: str | None = None  # decoded on first use, in the engine thread (submit stays cheap)
        self._stop = [s for s in stop if s]
        self._sent = 0  # characters already emitted

    def _decode(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True)

    def update(self, completion: list[int], final: bool) -> tuple[str, bool]:
        """The new text to emit for ``completion`` (all ids so far) and whether a stop string ended it."""
        if self._context_text is None:
            self._context_text = self._decode(self._context)
        # Decoding the whole completion each time (not token by token) is what keeps multi-byte characters intact.
        whole = self._decode(self._context + completion)
        context = self._context_text if whole.startswith(self._context_text) else None
        text = whole[len(context) :] if context is not None else self._decode(completion)
        hits = [i for i in (text.find(s) for s in self._stop) if i >= 0]
        if hits:
            text = text[: min(hits)]
        elif not final:
            text = self._held_back(text)
        delta = text[self._sent :]
        self._sent = max(self._sent, len(text))
        return delta, bool(hits)

    def _held_back(self, text: str) -> str:
        """``text`` without an unfinished character (U+FFFD from a partial byte sequence) and without the longest
        tail that is the start of a stop string."""
        text = text.rstrip("\ufffd")
        hold = max((k for s in self._stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        return text[: len(text) - hold]
