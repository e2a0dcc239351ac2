"""One example of any task: the unit every reader produces and every task encodes."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Example"]


@dataclass(frozen=True)
class Example:
    """One example; which fields are set depends on the task."""

    text: str  # classification input / qa question / causal-lm prompt ("" for plain LM text)
    label: str | None = None  # classification label, as a string
    target: str | None = None  # qa answer / causal-lm completion
    tests: str | None = None  # code problems: test source (HumanEval "test") for pass@1
    entry_point: str | None = None  # code problems: the function name the tests call
    context: str | None = None  # extractive qa: the passage the answer is a span of (text is the question)
    answers: tuple[str, ...] = ()  # extractive qa: every gold answer text (target is the first)
    answer_starts: tuple[int, ...] = ()  # extractive qa: character offset of each answer in ``context``
    tokens: tuple[str, ...] = ()  # token classification: the words (text is them joined by spaces)
    tags: tuple[str, ...] = ()  # token classification: one tag per word (BIO / IOB2 / IOBES / plain)
    source: str = ""  # "path:line" (or "package/file:line") where it came from, for messages
