"""Tasks: which model class, how examples become tensors, and how a batch is scored.

- ``classification``: ``AutoModelForSequenceClassification``; accuracy and macro-F1.
- ``qa``: generative question answering on a causal LM (question → answer; the tokenizer's chat template
  when it has one); exact match and token F1 (SQuAD normalisation), plus held-out loss.
- ``causal-lm``: prompt → completion (code, instructions); held-out loss and perplexity, and pass@1 for
  problems that carry tests (see ``codeexec``).

Loss on causal LMs covers the answer/completion tokens only: prompt and padding positions are -100.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data.example import Example

__all__ = ["TASKS", "LmEncoder", "batches", "classification_metrics", "load_model", "qa_metrics"]

TASKS: tuple[str, ...] = ("classification", "qa", "causal-lm")


def load_model(task: str, path: Path, labels: Sequence[str] | None = None) -> tuple[nn.Module, Any]:
    """Load ``(model, tokenizer)`` for ``task`` from a local Hugging Face folder, in fp32."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if task == "classification":
        if not labels:
            raise ValueError("classification needs the label names")
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            dtype=torch.float32,
        )
    elif task in ("qa", "causal-lm"):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    else:
        raise ValueError(f"task {task!r}: expected one of {TASKS}")
    if tok.pad_token is None:  # decoder tokenizers often have none; padding positions are masked anyway
        tok.pad_token = tok.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok


def batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of ``items`` of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def encode_classification(
    tok: Any, examples: Sequence[Example], label_ids: dict[str, int], max_length: int
) -> dict[str, torch.Tensor]:
    """Tokenise texts (padded to the longest, truncated to ``max_length``) with integer labels if known."""
    enc = tok([e.text for e in examples], truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    if all(e.label is not None for e in examples):
        enc["labels"] = torch.tensor([label_ids[e.label] for e in examples])
    return dict(enc)


class LmEncoder:
    """Turns (prompt, target) examples into causal-LM batches with the prompt masked out of the loss."""

    def __init__(self, tok: Any, task: str, max_length: int) -> None:
        self.tok = tok
        self.task = task
        self.max_length = max_length

    def prompt(self, text: str) -> str:
        """The text the model sees before its answer."""
        if self.task == "qa":
            if getattr(self.tok, "chat_template", None):
                return self.tok.apply_chat_template(
                    [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False
                )
            return f"Question: {text}\nAnswer:"
        return text

    def target(self, example: Example) -> str:
        answer = example.target or ""
        if self.task == "qa" and not getattr(self.tok, "chat_template", None):
            answer = " " + answer
        return answer + (self.tok.eos_token or "")

    def encode(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask and labels (-100 on prompt and padding), right-padded."""
        rows, labels = [], []
        for e in examples:
            p = self.tok(self.prompt(e.text), add_special_tokens=False)["input_ids"]
            t = self.tok(self.target(e), add_special_tokens=False)["input_ids"]
            ids = (p + t)[: self.max_length]
            rows.append(ids)
            labels.append(([-100] * len(p) + t)[: self.max_length])
        width = max(len(r) for r in rows)
        pad = self.tok.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        lab = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (r, y) in enumerate(zip(rows, labels, strict=True)):
            input_ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
            lab[i, : len(y)] = torch.tensor(y)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": lab}

    @torch.no_grad()
    def generate(self, model: nn.Module, texts: Sequence[str], max_new_tokens: int) -> list[str]:
        """Greedy completions for ``texts`` (left-padded batch); returns only the new text."""
        side = self.tok.padding_side
        self.tok.padding_side = "left"  # generation appends on the right, so pad on the left
        try:
            enc = self.tok(
                [self.prompt(t) for t in texts], return_tensors="pt", padding=True, add_special_tokens=False
            )
        finally:
            self.tok.padding_side = side
        out = model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=self.tok.pad_token_id,
        )
        new = out[:, enc["input_ids"].shape[1] :]
        return [s.strip() if self.task == "qa" else s for s in self.tok.batch_decode(new, skip_special_tokens=True)]


def token_loss_sums(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """Sum of next-token cross-entropy over labelled positions, and their count."""
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    loss = nn.functional.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return float(loss), int((shift_labels != -100).sum())


def classification_metrics(gold: Sequence[int], pred: Sequence[int], num_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (over all labels, scikit-learn's definition)."""
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, labels=list(range(num_labels)), average="macro", zero_division=0)),
    }


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


def perplexity(loss: float) -> float:
    """exp(loss), capped to stay finite in JSON."""
    return math.exp(min(loss, 50.0))
