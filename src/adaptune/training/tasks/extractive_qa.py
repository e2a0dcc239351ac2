"""Extractive question answering (SQuAD): ``AutoModelForQuestionAnswering`` points at the answer's first and last
tokens in the context; exact match and F1 (SQuAD normalisation, best over all gold answers), plus held-out loss.

Windows, labels and span decoding live in ``spans.py``. The ``qa_outputs`` head is trained and saved with the
adapter (it is one of ``core.model.DEFAULT_HEADS``); a folder without one gets a fresh head.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.example import Example
from .base import Encoder, EvalOptions, Task, batches, device_of, load_tokenizer, progress, set_pad_id
from .qa import qa_metrics
from .spans import Span, WindowLogits, Windows, best_span, default_stride, encode_windows, window_labels

__all__ = ["ExtractiveQa", "span_metrics"]


def span_metrics(golds: Sequence[Sequence[str]], preds: Sequence[str]) -> dict[str, float]:
    """Exact match and F1 per question, each the best over that question's gold answers, averaged.

    An unanswerable question (no golds) counts "" as its one correct answer.
    """
    em = f1 = 0.0
    for answers, pred in zip(golds, preds, strict=True):
        scores = [qa_metrics([gold], [pred]) for gold in (answers or [""])]
        em += max(s["exact_match"] for s in scores)
        f1 += max(s["token_f1"] for s in scores)
    n = max(1, len(preds))
    return {"exact_match": em / n, "f1": f1 / n}


def _answer_chars(example: Example) -> tuple[int, int] | None:
    # The first gold answer is the one trained on; None: unanswerable.
    if not example.answers:
        return None
    return example.answer_starts[0], example.answer_starts[0] + len(example.answers[0])


def _context(example: Example) -> str:
    if example.context is None:
        raise ValueError(f"{example.source}: extractive-qa needs a context (a SQuAD .json or .jsonl file)")
    return example.context


class ExtractiveQa(Task):
    """Question + context -> the span of the context that answers it (or "" when none does)."""

    name = "extractive-qa"
    main_metric = "f1"
    higher_is_better = True
    needs_labels = False

    def __init__(self, stride: int | None = None, max_answer_tokens: int = 30) -> None:
        """
        Args:
            stride: tokens of overlap between the windows of a long context; default a third of ``max_length``.
            max_answer_tokens: the longest answer decoding may pick, in tokens.
        """
        self.stride = stride
        self.max_answer_tokens = max_answer_tokens

    def _windows(
        self,
        tok: Any,
        questions: Sequence[str],
        contexts: Sequence[str],
        max_length: int,
        sources: Sequence[str] | None = None,
    ) -> Windows:
        stride = self.stride or default_stride(max_length)
        return encode_windows(tok, questions, contexts, max_length, stride, sources)

    def _example_windows(self, tok: Any, examples: Sequence[Example], max_length: int) -> Windows:
        questions, contexts = [e.text for e in examples], [_context(e) for e in examples]
        return self._windows(tok, questions, contexts, max_length, [e.source for e in examples])

    def load_model(self, path: Path, labels: Sequence[str] | None = None) -> tuple[nn.Module, Any]:
        from transformers import AutoModelForQuestionAnswering

        tok = load_tokenizer(path)
        model = AutoModelForQuestionAnswering.from_pretrained(path, dtype=torch.float32)
        set_pad_id(model, tok)
        return model, tok

    def encoder(self, tok: Any, labels: Sequence[str] | None, max_length: int) -> Encoder:
        def encode(examples: Sequence[Example]) -> dict[str, torch.Tensor]:
            windows = self._example_windows(tok, examples, max_length)
            starts, ends = window_labels(windows, [_answer_chars(e) for e in examples])
            return {**windows.inputs, "start_positions": starts, "end_positions": ends}

        return encode

    @torch.no_grad()
    def _logits(
        self, model: nn.Module, windows: Windows, batch_size: int, answers: Sequence[tuple[int, int] | None] | None
    ) -> tuple[list[WindowLogits], float]:
        """Every window's logits (forwards of ``batch_size`` windows), and the summed loss when ``answers``."""
        if answers is not None:
            starts, ends = window_labels(windows, answers)
        out: list[WindowLogits] = []
        loss_sum = 0.0
        device = device_of(model)
        for lo in range(0, len(windows.example), batch_size):
            part = slice(lo, lo + batch_size)
            batch = {k: v[part].to(device) for k, v in windows.inputs.items()}
            if answers is not None:
                batch["start_positions"], batch["end_positions"] = starts[part].to(device), ends[part].to(device)
            result = model(**batch)
            if answers is not None:
                loss_sum += float(result.loss) * len(batch["input_ids"])  # the mean, back to a per-window sum
            for k, w in enumerate(range(lo, min(lo + batch_size, len(windows.example)))):
                out.append(
                    WindowLogits(
                        result.start_logits[k].float().cpu(),
                        result.end_logits[k].float().cpu(),
                        windows.in_context[w],
                        windows.offsets[w],
                        windows.cls_index[w],
                    )
                )
        return out, loss_sum

    def _spans(self, logits: list[WindowLogits], windows: Windows, contexts: Sequence[str]) -> list[Span]:
        per_question: list[list[WindowLogits]] = [[] for _ in contexts]
        for w, i in enumerate(windows.example):
            per_question[i].append(logits[w])
        return [best_span(ws, c, self.max_answer_tokens) for ws, c in zip(per_question, contexts, strict=True)]

    def evaluate(
        self, model: nn.Module, tok: Any, examples: Sequence[Example], options: EvalOptions
    ) -> dict[str, float]:
        model.eval()
        golds: list[tuple[str, ...]] = []
        preds: list[str] = []
        loss_sum, n_windows = 0.0, 0
        bar = progress(len(examples), "eval")
        for chunk in batches(list(examples), options.batch_size):
            windows = self._example_windows(tok, chunk, options.max_length)
            logits, loss = self._logits(model, windows, options.batch_size, [_answer_chars(e) for e in chunk])
            loss_sum, n_windows = loss_sum + loss, n_windows + len(logits)
            preds += [s.text for s in self._spans(logits, windows, [_context(e) for e in chunk])]
            golds += [e.answers for e in chunk]
            bar.update(len(chunk))
        bar.close()
        metrics = span_metrics(golds, preds)
        metrics["loss"] = loss_sum / max(1, n_windows)
        return metrics

    def answer(
        self, model: nn.Module, tok: Any, questions: Sequence[str], contexts: Sequence[str], options: EvalOptions
    ) -> list[dict[str, Any]]:
        """The answer to each question in its context: ``{"answer", "start", "end", "score"}`` with ``answer ==
        context[start:end]`` and ``score`` the span's probability; ``""`` / ``None`` / ``None`` for no answer."""
        if len(questions) != len(contexts):
            raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts; expected one context each")
        model.eval()
        found: list[dict[str, Any]] = []
        for lo in range(0, len(questions), options.batch_size):
            qs, cs = questions[lo : lo + options.batch_size], contexts[lo : lo + options.batch_size]
            windows = self._windows(tok, qs, cs, options.max_length)
            logits, _ = self._logits(model, windows, options.batch_size, None)
            for span in self._spans(logits, windows, cs):
                found.append({"answer": span.text, "start": span.start, "end": span.end, "score": round(span.prob, 4)})
        return found

    def predict(self, model: nn.Module, tok: Any, texts: Sequence[str], options: EvalOptions) -> list[dict[str, Any]]:
        raise ValueError(
            "extractive-qa answers questions about a passage: give it with --context, or --pairs FILE.jsonl "
            "(question + context per line); in Python, ExtractiveQa.answer(model, tok, questions, contexts, options)"
        )

    def show(self, text: str, prediction: dict[str, Any]) -> str:
        return f"{prediction['answer'] or '(no answer)'}\t{prediction['score']:.3f}\t{text}"
