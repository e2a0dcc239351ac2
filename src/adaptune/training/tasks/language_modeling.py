"""Language modelling on unlabeled text with the model's own objective: trains *language adapters* (MAD-X).

- Decoders (no masked-LM class for their type: Llama, GPT-2, Gemma 3, ...): causal LM, every real token is a
  target (the tokenizer's BOS is kept: Gemma-style models expect it). Metrics: loss, perplexity.
- Encoders (a masked-LM class exists: BERT, RoBERTa, ...): masked LM, 15% of the non-special tokens picked, of
  those 80% -> mask token, 10% -> a random token, 10% unchanged (BERT's recipe). The model's MLM head is used when
  the checkpoint ships one; otherwise (sentence-transformers checkpoints such as MiniLM) Transformers builds a fresh
  head whose output projection is tied to the input embeddings, and its freshly initialised layers
  (``trained_heads``) train and are saved with the adapter; its output bias stays zero (it shares a module with
  the tied projection, which must stay frozen). Metrics: loss, perplexity of the masked tokens, masked-token
  accuracy. Evaluation masks with a fixed seed per batch, so a re-run gives the same numbers.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.example import Example
from .base import Encoder, EvalOptions, Task, batches, device_of, load_tokenizer, progress, set_pad_id
from .lm import perplexity

__all__ = ["LanguageModeling", "is_masked_lm", "mask_tokens"]

MASK_FRACTION = 0.15
_EVAL_SEED = 1234
# Head modules a masked-LM load initialised from scratch, per model, and the objective per tokenizer, as
# ``load_model`` found them (weak maps: nothing is added to the model or tokenizer objects).
_FRESH_HEADS: weakref.WeakKeyDictionary[nn.Module, tuple[str, ...]] = weakref.WeakKeyDictionary()
_MASKED: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def is_masked_lm(path: Path) -> bool:
    """True when Transformers has a masked-LM class for the folder's model type (encoders); else causal LM."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return AutoConfig.from_pretrained(path).model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def mask_tokens(
    input_ids: torch.Tensor, special: torch.Tensor, tok: Any, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking: ``(masked input_ids, labels)`` with labels -100 except at the picked positions.

    ``special`` (same shape, bool) marks positions never picked (specials and padding). At least one position per
    row with a real token is picked, so short texts still train.
    """
    probs = torch.full(input_ids.shape, MASK_FRACTION)
    probs[special] = 0.0
    picked = torch.bernoulli(probs, generator=generator).bool()
    # A row with real tokens but nothing picked: pick its first real token (keeps every row in the loss).
    empty = ~picked.any(1) & (~special).any(1)
    if empty.any():
        first = (~special).float().argmax(1)
        picked[empty, first[empty]] = True
    labels = torch.where(picked, input_ids, torch.full_like(input_ids, -100))
    roll = torch.rand(input_ids.shape, generator=generator)
    ids = input_ids.clone()
    ids[picked & (roll < 0.8)] = tok.mask_token_id
    swap = picked & (roll >= 0.8) & (roll < 0.9)
    ids[swap] = torch.randint(len(tok), input_ids.shape, generator=generator)[swap]
    return ids, labels


class _Encode:
    """Texts -> LM batches (causal: labels = tokens; masked: BERT masking from ``generator`` or torch's RNG)."""

    def __init__(self, tok: Any, max_length: int, masked: bool) -> None:
        self.tok, self.max_length, self.masked = tok, max_length, masked

    def __call__(
        self, examples: Sequence[Example], generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        texts = [e.text for e in examples]
        enc = self.tok(
            texts,
            truncation=True,
            max_length=self.max_length,
            padding=True,
            return_tensors="pt",
            return_special_tokens_mask=self.masked,
        )
        mask = enc["attention_mask"]
        if not self.masked:  # pad == eos for many decoders: mask by attention, not by token id
            enc["labels"] = enc["input_ids"].masked_fill(mask == 0, -100)
            return dict(enc)
        special = enc.pop("special_tokens_mask").bool() | (mask == 0)
        enc["input_ids"], enc["labels"] = mask_tokens(enc["input_ids"], special, self.tok, generator)
        return dict(enc)


class LanguageModeling(Task):
    """Unlabeled text -> the model's own LM objective (causal for decoders, masked for encoders)."""

    name = "language-modeling"
    main_metric = "loss"
    higher_is_better = False
    needs_labels = False

    def load_model(self, path: Path, labels: Sequence[str] | None = None) -> tuple[nn.Module, Any]:
        from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

        tok = load_tokenizer(path)
        _MASKED[tok] = is_masked_lm(path)
        if not _MASKED[tok]:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            set_pad_id(model, tok)
            return model, tok
        if tok.mask_token_id is None:
            raise ValueError(f"{path}: the tokenizer has no mask token; masked-LM training needs one")
        model, info = AutoModelForMaskedLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
        _FRESH_HEADS[model] = _fresh_head_modules(model, info.get("missing_keys", ()))
        return model, tok

    def trained_heads(self, model: nn.Module) -> tuple[str, ...]:
        return _FRESH_HEADS.get(model, ())

    def encoder(self, tok: Any, labels: Sequence[str] | None, max_length: int) -> Encoder:
        return _Encode(tok, max_length, masked=_is_mlm_tok(tok))

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, tok: Any, examples: Sequence[Example], options: EvalOptions
    ) -> dict[str, float]:
        model.eval()
        masked = _is_masked_model(model)
        encode = _Encode(tok, options.max_length, masked)
        total = correct = 0.0
        count = 0
        bar = progress(len(examples), "loss")
        for i, chunk in enumerate(batches(list(examples), options.batch_size)):
            batch = encode(chunk, torch.Generator().manual_seed(_EVAL_SEED + i))
            batch = {k: v.to(device_of(model)) for k, v in batch.items()}
            labels = batch.pop("labels")
            logits = model(**batch).logits.float()
            if not masked:  # next-token targets
                logits, labels = logits[:, :-1], labels[:, 1:]
            keep = labels != -100
            total += float(nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum"))
            correct += float((logits[keep].argmax(-1) == labels[keep]).sum())
            count += int(keep.sum())
            bar.update(len(chunk))
        bar.close()
        loss = total / max(1, count)
        metrics = {"loss": loss, "perplexity": perplexity(loss), "tokens": float(count)}
        metrics["masked_accuracy" if masked else "next_token_accuracy"] = correct / max(1, count)
        return metrics

    @torch.no_grad()
    def predict(self, model: nn.Module, tok: Any, texts: Sequence[str], options: EvalOptions) -> list[dict[str, Any]]:
        model.eval()
        if _is_masked_model(model):
            return [_fill_masks(model, tok, text, options.max_length) for text in texts]
        out: list[dict[str, Any]] = []
        for chunk in batches(list(texts), options.batch_size):
            side, tok.padding_side = tok.padding_side, "left"  # generation appends on the right
            try:
                enc = tok(
                    list(chunk), return_tensors="pt", padding=True, truncation=True, max_length=options.max_length
                )
            finally:
                tok.padding_side = side
            enc = {k: v.to(device_of(model)) for k, v in enc.items()}
            gen = model.generate(
                **enc, max_new_tokens=options.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
            new = gen[:, enc["input_ids"].shape[1] :]
            out += [{"output": s} for s in tok.batch_decode(new, skip_special_tokens=True)]
        return out

    def show(self, text: str, prediction: dict[str, Any]) -> str:
        if "fills" in prediction:
            lines = [text]
            for i, fill in enumerate(prediction["fills"]):
                shown = ", ".join(f"{c['token']!r} {c['probability']:.3f}" for c in fill)
                lines.append(f"  mask {i + 1}: {shown}")
            return "\n".join(lines) + "\n"
        return f"{text}\n=> {prediction['output']}\n"


def _is_mlm_tok(tok: Any) -> bool:
    """Whether batches for ``tok``'s model are masked: as ``load_model`` decided, else from the tokenizer's folder.
    (A mask token alone says nothing: decoder tokenizers such as Gemma's define one too.)"""
    if tok in _MASKED:
        return _MASKED[tok]
    path = Path(getattr(tok, "name_or_path", "") or ".")
    return (path / "config.json").is_file() and is_masked_lm(path)


def _is_masked_model(model: nn.Module) -> bool:
    # Transformers names every masked-LM class *ForMaskedLM (BertForMaskedLM, RobertaForMaskedLM, ...).
    return type(model).__name__.endswith("ForMaskedLM")


def _fresh_head_modules(model: nn.Module, missing: Sequence[str]) -> tuple[str, ...]:
    """Modules whose parameters a masked-LM load created from scratch, minus any holding a tied (frozen) weight."""
    emb = model.get_input_embeddings().weight
    tied = {n for n, p in model.named_parameters(remove_duplicate=False) if p is emb}
    owners: set[str] = set()
    for key in missing:
        module = key.rpartition(".")[0]
        holder = model.get_submodule(module)
        if any(f"{module}.{n}" in tied or p is emb for n, p in holder.named_parameters(remove_duplicate=False)):
            continue  # e.g. BERT's cls.predictions holds the tied decoder: training it would train the embeddings
        owners.add(module)
    # Keep the outermost modules only (their parameters include the inner ones').
    return tuple(sorted(m for m in owners if not any(m != o and m.startswith(o + ".") for o in owners)))


def _fill_masks(model: nn.Module, tok: Any, text: str, max_length: int) -> dict[str, Any]:
    """The 5 most likely tokens at each mask token of ``text`` ("[MASK]" for BERT, "<mask>" for RoBERTa)."""
    enc = tok(text, return_tensors="pt", truncation=True, max_length=max_length)
    where = (enc["input_ids"][0] == tok.mask_token_id).nonzero().flatten()
    if not len(where):
        raise ValueError(f"language-modeling predict on an encoder fills masks: put {tok.mask_token} in {text!r}")
    logits = model(**{k: v.to(device_of(model)) for k, v in enc.items()}).logits[0].float()
    fills = []
    for pos in where.tolist():
        probs = logits[pos].softmax(-1)
        top = probs.topk(5)
        fills.append(
            [
                {"token": tok.decode([i]).strip(), "probability": round(float(p), 4)}
                for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)
            ]
        )
    return {"fills": fills}
