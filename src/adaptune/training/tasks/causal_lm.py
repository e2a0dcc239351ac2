"""Prompt -> completion (code, instructions) on a causal LM: held-out loss and perplexity, and pass@1 for problems
that carry tests (see ``training.codeexec``)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..codeexec import pass_at_1
from ..data.example import Example
from .base import EvalOptions, batches
from .lm import LmEncoder, LmTask

__all__ = ["CausalLm"]


class CausalLm(LmTask):
    """Prompt -> completion; generated code runs against the example's tests only with ``exec_tests``."""

    name = "causal-lm"

    def generation_metrics(
        self, model: nn.Module, encoder: LmEncoder, examples: Sequence[Example], options: EvalOptions
    ) -> dict[str, float]:
        coded = [e for e in examples if e.tests]
        if not (options.exec_tests and coded):
            return {}
        completions: list[str] = []
        for chunk in batches(coded, max(1, options.batch_size // 4)):  # code completions are long: smaller batches
            completions += encoder.generate(model, [e.text for e in chunk], options.max_new_tokens)
        return {"pass_at_1": pass_at_1(coded, completions), "pass_at_1_n": float(len(coded))}
