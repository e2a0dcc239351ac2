"""Generative question answering on a causal LM (question -> answer; the tokenizer's chat template when it has
one): exact match and token F1 (SQuAD normalisation) on generated answers, plus held-out loss."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from torch import nn

from ..data.example import Example
from .base import EvalOptions, batches
from .lm import LmEncoder, LmTask

__all__ = ["Qa", "qa_metrics"]


def _normalise(text: str) -> list[str]:
    # SQuAD-style: lower-case, drop punctuation and English articles, split on whitespace.
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    tokens = text.split()
    # Scripts written without spaces (Chinese) compare per character.
    return [c for tok in tokens for c in (list(tok) if any("\u4e00" <= ch <= "\u9fff" for ch in tok) else [tok])]


def qa_metrics(gold: Sequence[str], pred: Sequence[str]) -> dict[str, float]:
    """Exact match and token F1 after SQuAD normalisation, averaged over examples."""
    em = f1 = 0.0
    for g, p in zip(gold, pred, strict=True):
        gt, pt = _normalise(g), _normalise(p)
        em += float(gt == pt)
        common = sum((Counter(gt) & Counter(pt)).values())
        if gt and pt and common:
            precision, recall = common / len(pt), common / len(gt)
            f1 += 2 * precision * recall / (precision + recall)
        else:
            f1 += float(gt == pt)
    n = max(1, len(gold))
    return {"exact_match": em / n, "token_f1": f1 / n}


class Qa(LmTask):
    """Question -> short answer, generated."""

    name = "qa"

    def generation_metrics(
        self, model: nn.Module, encoder: LmEncoder, examples: Sequence[Example], options: EvalOptions
    ) -> dict[str, float]:
        answers: list[str] = []
        for chunk in batches(list(examples), options.batch_size):
            answers += encoder.generate(model, [e.text for e in chunk], options.max_new_tokens)
        return qa_metrics([e.target or "" for e in examples], answers)
