"""Answer spans for extractive question answering: question + context windows with their start / end labels, and
the best span over all windows of a question mapped back to characters of the context.

A context longer than one window is cut into overlapping windows (the tokenizer's ``stride`` is the overlap in
tokens); each holds the whole question::

    window 0:  [CLS] question [SEP] context tokens 0 .. n-1             [SEP]
    window 1:  [CLS] question [SEP] context tokens n-stride .. 2n-stride-1 [SEP]

A window's label is the token span of the answer when the whole answer lies in it, else the [CLS] position (the
"no answer here" convention of BERT on SQuAD 2.0), so a question whose answer straddles a window edge is learned in
the next window, which overlaps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..data.files import DataError

__all__ = ["Span", "WindowLogits", "Windows", "best_span", "default_stride", "encode_windows", "window_labels"]


def default_stride(max_length: int) -> int:
    """Tokens of overlap between windows: a third of the window (128 at BERT-on-SQuAD's 384)."""
    return max(1, max_length // 3)


@dataclass
class Windows:
    """The windows of a batch of questions, as model inputs plus what decoding needs."""

    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask (+ token_type_ids): (W, L)
    example: list[int]  # window -> index of its question in the batch
    offsets: list[list[tuple[int, int]]]  # window -> token -> (start, end) characters (context tokens only mean it)
    in_context: torch.Tensor  # (W, L) bool: the token is part of the context
    cls_index: list[int]  # window -> the position that means "no answer" ([CLS], or the first token)


def encode_windows(
    tok: Any,
    questions: Sequence[str],
    contexts: Sequence[str],
    max_length: int,
    stride: int,
    sources: Sequence[str] | None = None,
) -> Windows:
    """Tokenise question / context pairs into overlapping windows of at most ``max_length`` tokens.

    The question is never truncated. When the longest question of the batch leaves less than ``2 * stride`` tokens
    for the context, the overlap shrinks to half that room, for this batch only.

    Raises:
        ValueError: a slow tokenizer (no offsets), or a question that leaves no room for the context (names it
            by ``sources[i]`` when given).
    """
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"extractive-qa needs a fast tokenizer (character offsets); {type(tok).__name__} is not")
    questions = [q.lstrip() for q in questions]  # leading spaces would only waste window room
    special = tok.num_special_tokens_to_add(pair=True)
    lengths = [len(ids) for ids in tok(questions, add_special_tokens=False)["input_ids"]]
    rooms = [max_length - special - n for n in lengths]
    worst = min(range(len(rooms)), key=rooms.__getitem__)
    if rooms[worst] < 2:
        where = sources[worst] if sources else f"question {worst + 1}"
        raise DataError(
            f"{where}: the question is {lengths[worst]} tokens, leaving no room for the context in "
            f"max_length {max_length}; expected under {max_length - special - 1} tokens (or a larger --max-length)"
        )
    enc = tok(
        list(questions),
        list(contexts),
        truncation="only_second",
        max_length=max_length,
        stride=min(stride, rooms[worst] // 2),
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=True,
        return_tensors="pt",
    )
    n = enc["input_ids"].shape[0]
    in_context = torch.tensor([[s == 1 for s in enc.sequence_ids(w)] for w in range(n)], dtype=torch.bool)
    cls_id = getattr(tok, "cls_token_id", None)
    cls_index = []
    for w in range(n):
        ids = enc["input_ids"][w].tolist()
        # With left padding [CLS] is not at 0; a tokenizer without [CLS] uses its first real token.
        cls_index.append(ids.index(cls_id) if cls_id in ids else int(enc["attention_mask"][w].argmax()))
    keep = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return Windows(
        inputs={k: enc[k] for k in keep},
        example=enc["overflow_to_sample_mapping"].tolist(),
        offsets=[[tuple(pair) for pair in row] for row in enc["offset_mapping"].tolist()],
        in_context=in_context,
        cls_index=cls_index,
    )


def _token_span(
    offsets: list[tuple[int, int]], in_context: list[bool], start_char: int, end_char: int
) -> tuple[int, int] | None:
    """The first / last context tokens covering characters ``[start_char, end_char)``, or None when the answer is
    not wholly inside this window's part of the context."""
    tokens = [i for i, inside in enumerate(in_context) if inside]
    if not tokens or offsets[tokens[0]][0] > start_char or offsets[tokens[-1]][1] < end_char:
        return None
    start = max(i for i in tokens if offsets[i][0] <= start_char)  # the token the answer starts in
    end = min(i for i in tokens if offsets[i][1] >= end_char)  # the token it ends in
    return start, end


def window_labels(windows: Windows, answers: Sequence[tuple[int, int] | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(start_positions, end_positions)`` of each window for ``answers[i]`` = the (start, end) characters of
    question i's answer (None: unanswerable): the answer's tokens, or ``cls_index`` where it is not in the window."""
    starts, ends = [], []
    for w, i in enumerate(windows.example):
        span = None
        if answers[i] is not None:
            span = _token_span(windows.offsets[w], windows.in_context[w].tolist(), *answers[i])  # type: ignore[misc]
        start, end = span if span is not None else (windows.cls_index[w], windows.cls_index[w])
        starts.append(start)
        ends.append(end)
    return torch.tensor(starts), torch.tensor(ends)


@dataclass(frozen=True)
class WindowLogits:
    """One window's scores, on the CPU, with what maps its tokens back to the context."""

    start: torch.Tensor  # (L,) start logits
    end: torch.Tensor  # (L,) end logits
    in_context: torch.Tensor  # (L,) bool
    offsets: list[tuple[int, int]]  # token -> characters of the context
    cls_index: int


@dataclass(frozen=True)
class Span:
    """The answer to one question: ``context[start:end]``, or "" with ``start = end = None`` for no answer."""

    text: str
    start: int | None
    end: int | None
    logit: float  # start + end logit of the choice (the no-answer score for "")
    prob: float  # softmax(start) * softmax(end) over the window's context tokens and [CLS]


def _window_best(w: WindowLogits, max_answer_tokens: int) -> tuple[float, int, int] | None:
    """(start + end logit, start token, end token) of the window's best span inside the context, or None."""
    s = w.start.float().masked_fill(~w.in_context, float("-inf"))
    e = w.end.float().masked_fill(~w.in_context, float("-inf"))
    scores = s[:, None] + e[None, :]  # (L, L): start token i, end token j
    i = torch.arange(len(s))
    length = i[None, :] - i[:, None]  # j - i
    scores = scores.masked_fill((length < 0) | (length >= max_answer_tokens), float("-inf"))
    best = int(scores.argmax())
    score = float(scores.view(-1)[best])
    return None if score == float("-inf") else (score, best // len(s), best % len(s))


def _prob(w: WindowLogits, start: int, end: int) -> float:
    allowed = w.in_context.clone()
    allowed[w.cls_index] = True
    ls = w.start.float().masked_fill(~allowed, float("-inf")).log_softmax(-1)
    le = w.end.float().masked_fill(~allowed, float("-inf")).log_softmax(-1)
    return float((ls[start] + le[end]).exp())


def best_span(
    windows: Sequence[WindowLogits], context: str, max_answer_tokens: int = 30, allow_null: bool = True
) -> Span:
    """The best answer to one question over all its windows.

    A span is a start token <= end token, both in the context, at most ``max_answer_tokens`` long, scored by
    start + end logit; the best over all windows wins. The no-answer score is the lowest [CLS] start + end logit
    over the windows (as SQuAD 2.0 baselines do: the window that sees the answer should not say "none"); it wins
    when ``allow_null`` and it beats the best span, or when no span is valid.
    """
    found = [(b, w) for w in windows if (b := _window_best(w, max_answer_tokens)) is not None]
    nulls = [(float(w.start[w.cls_index] + w.end[w.cls_index]), w) for w in windows]
    null_score, null_w = min(nulls, key=lambda x: x[0]) if nulls else (float("-inf"), None)
    if found:
        (score, i, j), w = max(found, key=lambda x: x[0][0])
        if not (allow_null and null_score > score):
            start, end = w.offsets[i][0], w.offsets[j][1]
            return Span(context[start:end], start, end, score, _prob(w, i, j))
    if null_w is None:
        return Span("", None, None, float("-inf"), 0.0)
    return Span("", None, None, null_score, _prob(null_w, null_w.cls_index, null_w.cls_index))
