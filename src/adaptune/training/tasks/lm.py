"""What the causal-LM tasks (``qa``, ``causal-lm``) share: prompt/target encoding, greedy generation, the held-out
loss, and a task base class that loads ``AutoModelForCausalLM``.

Loss on causal LMs covers the answer/completion tokens only: prompt and padding positions are -100.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.example import Example
from .base import Encoder, EvalOptions, Task, batches, device_of, load_tokenizer, progress, set_pad_id

__all__ = ["LmEncoder", "LmTask", "lm_loss", "perplexity", "token_loss_sums"]


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
        """The text the model learns to write after the prompt, ending in EOS."""
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


def perplexity(loss: float) -> float:
    """exp(loss), capped to stay finite in JSON."""
    return math.exp(min(loss, 50.0))


@torch.no_grad()
def lm_loss(model: nn.Module, encoder: LmEncoder, examples: Sequence[Example], batch_size: int) -> float:
    """Mean next-token loss over the target tokens of ``examples`` (token-weighted, not batch-weighted)."""
    model.eval()
    total, count = 0.0, 0
    bar = progress(len(examples), "loss")
    for chunk in batches(list(examples), batch_size):
        enc = {k: v.to(device_of(model)) for k, v in encoder.encode(chunk).items()}
        labels = enc.pop("labels")
        s, n = token_loss_sums(model(**enc).logits, labels)
        total, count = total + s, count + n
        bar.update(len(chunk))
    bar.close()
    return total / max(1, count)


class LmTask(Task):
    """A prompt -> text task on a causal LM: loss and perplexity; subclasses add generation metrics."""

    main_metric = "loss"
    higher_is_better = False
    needs_labels = False

    def load_model(self, path: Path, labels: Sequence[str] | None = None) -> tuple[nn.Module, Any]:
        from transformers import AutoModelForCausalLM

        tok = load_tokenizer(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        set_pad_id(model, tok)
        return model, tok

    def encoder(self, tok: Any, labels: Sequence[str] | None, max_length: int) -> Encoder:
        return LmEncoder(tok, self.name, max_length).encode

    def evaluate(
        self, model: nn.Module, tok: Any, examples: Sequence[Example], options: EvalOptions
    ) -> dict[str, float]:
        model.eval()
        encoder = LmEncoder(tok, self.name, options.max_length)
        loss = lm_loss(model, encoder, examples, options.batch_size)
        metrics = {"loss": loss, "perplexity": perplexity(loss)}
        subset = list(examples)[: options.generate_limit or len(examples)]
        if options.generate and subset:
            metrics |= self.generation_metrics(model, encoder, subset, options)
        return metrics

    def generation_metrics(
        self, model: nn.Module, encoder: LmEncoder, examples: Sequence[Example], options: EvalOptions
    ) -> dict[str, float]:
        """Metrics that need generated text (none by default)."""
        return {}

    def predict(self, model: nn.Module, tok: Any, texts: Sequence[str], options: EvalOptions) -> list[dict[str, Any]]:
        encoder = LmEncoder(tok, self.name, options.max_length)
        outputs: list[str] = []
        for chunk in batches(list(texts), options.batch_size):
            outputs += encoder.generate(model, chunk, options.max_new_tokens)
        return [{"output": out} for out in outputs]

    def show(self, text: str, prediction: dict[str, Any]) -> str:
        return f"{text}\n=> {prediction['output']}\n"
