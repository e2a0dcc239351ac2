"""Token classification (NER, POS, chunking): ``AutoModelForTokenClassification``; entity-level precision / recall /
F1 (``entities``), token accuracy and held-out loss.

Words and sub-words: the words go to the (fast) tokenizer already split (``is_split_into_words``); each word's tag
is learned and predicted on its FIRST sub-word; its other sub-words and the special tokens get the label -100,
which the loss ignores::

    words      John        lives   in   Paris
    sub-words  [CLS] Jo ##hn  lives   in   Par ##is  [SEP]
    labels     -100  PER -100 O       O    LOC -100  -100

Truncation: a sentence longer than ``max_length`` sub-words loses its last words. Training simply never sees them;
evaluation and prediction give them the tag ``O``, so a gold entity there counts as missed (recall falls) and
their words count in token accuracy. Raise ``--max-length`` for long sentences.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.example import Example
from ..data.files import DataError, show_value
from .base import Encoder, EvalOptions, Task, batches, device_of, load_labelled, load_tokenizer, progress, set_pad_id
from .entities import entities, entity_scores

__all__ = ["IGNORE", "TokenClassification", "encode_words", "first_subwords", "tag_words"]

IGNORE = -100  # the label cross-entropy skips: non-first sub-words, special tokens, padding
OUTSIDE = "O"  # the tag of a word the model never saw (cut off by max_length)


def _need_labels(labels: Sequence[str] | None) -> Sequence[str]:
    if not labels:
        raise ValueError("token-classification needs the tag names")
    return labels


def first_subwords(word_ids: Sequence[int | None]) -> dict[int, int]:
    """Word index -> position of its first sub-word, from a fast tokenizer's ``word_ids()`` of one row."""
    first: dict[int, int] = {}
    for pos, word in enumerate(word_ids):
        if word is not None and word not in first:
            first[word] = pos
    return first


def encode_words(
    tok: Any,
    words: Sequence[Sequence[str]],
    max_length: int,
    tags: Sequence[Sequence[str]] | None = None,
    tag_ids: dict[str, int] | None = None,
) -> tuple[dict[str, torch.Tensor], list[dict[int, int]]]:
    """Tokenise pre-split sentences (padded to the longest, truncated to ``max_length``); with ``tags``, add
    ``labels`` (the tag id on each word's first sub-word, -100 elsewhere).

    Returns:
        The batch and, per row, word index -> position of its first sub-word (words cut off are absent).
    """
    enc = tok(
        [list(w) for w in words],
        is_split_into_words=True,
        truncation=True,
        max_length=max_length,
        padding=True,
        return_tensors="pt",
    )
    firsts = [first_subwords(enc.word_ids(i)) for i in range(len(words))]
    batch = dict(enc)
    if tags is not None and tag_ids is not None:
        labels = torch.full_like(enc["input_ids"], IGNORE)
        for row, (first, row_tags) in enumerate(zip(firsts, tags, strict=True)):
            for word, pos in first.items():
                labels[row, pos] = tag_ids[row_tags[word]]
        batch["labels"] = labels
    return batch, firsts


def tag_words(
    logits: torch.Tensor, firsts: Sequence[dict[int, int]], lengths: Sequence[int], labels: Sequence[str]
) -> list[list[str]]:
    """Each sentence's predicted tags, one per word: the argmax on the word's first sub-word; ``O`` for a word the
    model never saw. ``logits``: (B, T, num_labels)."""
    best = logits.argmax(-1).tolist()  # (B, T)
    return [
        [labels[best[row][first[w]]] if w in first else OUTSIDE for w in range(n)]
        for row, (first, n) in enumerate(zip(firsts, lengths, strict=True))
    ]


def _fast(tok: Any, path: Path) -> Any:
    if not getattr(tok, "is_fast", False):
        raise ValueError(
            f"{path}: token-classification needs a fast tokenizer (word_ids() maps sub-words to words); "
            f"got {type(tok).__name__}"
        )
    return tok


class TokenClassification(Task):
    """Words -> one tag each (BIO / IOB1 / IOBES / plain tags); scored by entities."""

    name = "token-classification"
    main_metric = "entity_f1"
    higher_is_better = True
    needs_labels = True

    def load_model(self, path: Path, labels: Sequence[str] | None = None) -> tuple[nn.Module, Any]:
        from transformers import AutoModelForTokenClassification

        tok = _fast(load_tokenizer(path), path)
        names = list(_need_labels(labels))
        model = load_labelled(AutoModelForTokenClassification, path, names)
        set_pad_id(model, tok)
        return model, tok

    def encoder(self, tok: Any, labels: Sequence[str] | None, max_length: int) -> Encoder:
        ids = {name: i for i, name in enumerate(_need_labels(labels))}

        def encode(examples: Sequence[Example]) -> dict[str, torch.Tensor]:
            tags = [e.tags for e in examples] if all(e.tags for e in examples) else None
            return encode_words(tok, [e.tokens for e in examples], max_length, tags, ids)[0]

        return encode

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, tok: Any, examples: Sequence[Example], options: EvalOptions
    ) -> dict[str, float]:
        model.eval()
        labels = _need_labels(options.labels)
        self.check_examples(examples, labels, "the model's head")  # an unknown tag has no id to score against
        ids = {name: i for i, name in enumerate(labels)}
        gold: list[Sequence[str]] = []
        pred: list[list[str]] = []
        loss_sum, scored = 0.0, 0
        bar = progress(len(examples), "eval")
        for chunk in batches(list(examples), options.batch_size):
            batch, firsts = encode_words(
                tok, [e.tokens for e in chunk], options.max_length, [e.tags for e in chunk], ids
            )
            out = model(**{k: v.to(device_of(model)) for k, v in batch.items()})
            n = int((batch["labels"] != IGNORE).sum())
            loss_sum += float(out.loss) * n  # the mean over scored words, weighted back to a sum
            scored += n
            gold += [e.tags for e in chunk]
            pred += tag_words(out.logits.float(), firsts, [len(e.tokens) for e in chunk], labels)
            bar.update(len(chunk))
        bar.close()
        metrics = entity_scores(gold, pred)
        metrics["loss"] = loss_sum / scored if scored else 0.0
        return metrics

    @torch.no_grad()
    def predict(self, model: nn.Module, tok: Any, texts: Sequence[str], options: EvalOptions) -> list[dict[str, Any]]:
        model.eval()
        labels = _need_labels(options.labels)
        words = [text.split() for text in texts]
        tags: dict[int, list[str]] = {i: [] for i in range(len(texts))}  # a blank text has no words, no tags
        todo = [i for i, w in enumerate(words) if w]
        for chunk in batches(todo, options.batch_size):
            batch, firsts = encode_words(tok, [words[i] for i in chunk], options.max_length)
            logits = model(**{k: v.to(device_of(model)) for k, v in batch.items()}).logits.float()
            for i, row in zip(chunk, tag_words(logits, firsts, [len(words[i]) for i in chunk], labels), strict=True):
                tags[i] = row
        return [
            {
                "tokens": w,
                "tags": tags[i],
                "entities": [
                    {"type": e.type, "start": e.start, "end": e.end, "text": " ".join(w[e.start : e.end])}
                    for e in entities(tags[i])
                ],
            }
            for i, w in enumerate(words)
        ]

    def show(self, text: str, prediction: dict[str, Any]) -> str:
        """The words with each entity in brackets and its type: ``[John Smith/PER] lives in [Paris/LOC]``."""
        words = [str(w) for w in prediction["tokens"]]
        for e in reversed(prediction["entities"]):  # from the right, so earlier indices stay valid
            words[e["start"] : e["end"]] = [f"[{' '.join(words[e['start'] : e['end']])}/{e['type']}]"]
        return " ".join(words) if words else text

    def check_examples(self, examples: Sequence[Example], labels: Sequence[str] | None, source: str) -> None:
        known = set(_need_labels(labels))
        for ex in examples:
            if not ex.tags:
                raise DataError(f"{ex.source}: the example has no tags; expected a CoNLL or tokens/tags JSONL file")
            unknown = next((t for t in ex.tags if t not in known), None)
            if unknown is not None:
                raise DataError(
                    f"{ex.source}: tag {show_value(unknown)} is not one of the tags of {source}: "
                    f"{', '.join(labels or ())}"
                )
