"""Tiny model folders and data files for end-to-end CLI tests (built locally; no download)."""

from __future__ import annotations

import csv
import json
import os
import random
import socket
from pathlib import Path

import torch

POSITIVE = ["good", "great", "fine", "lovely", "superb", "fun"]
NEGATIVE = ["bad", "awful", "dull", "boring", "poor", "sad"]
FILLER = ["the", "film", "was", "quite", "a", "story", "plot", "acting", "really", "very", "what", "is", "of"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[EOS]"]


def make_tokenizer(words: list[str]):
    """A word-level fast tokenizer over ``words`` with BERT-style special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIAL + sorted(set(words)))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        eos_token="[EOS]",
    )  # fmt: skip


def vocabulary() -> list[str]:
    digits = [str(i) for i in range(10)]
    return POSITIVE + NEGATIVE + FILLER + digits + ["question", "answer", "plus", "equals", "?", ".", ":"]


def make_model_dir(root: Path, kind: str, dropout: bool = True) -> Path:
    """A saved tiny ``bert`` (encoder) or ``llama`` (decoder) folder with its tokenizer."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    tok = make_tokenizer(vocabulary())
    size = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    if kind == "bert":
        off = {} if dropout else {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
        cfg = AutoConfig.for_model("bert", vocab_size=len(tok), max_position_embeddings=64, **size, **off)
        model = AutoModel.from_config(cfg)
    else:
        cfg = AutoConfig.for_model(
            "llama", vocab_size=len(tok), max_position_embeddings=64, pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id, bos_token_id=tok.cls_token_id, tie_word_embeddings=False, **size,
        )  # fmt: skip
        model = AutoModelForCausalLM.from_config(cfg)
    out = root / (kind if dropout else f"{kind}-nodrop")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_sentiment_csv(path: Path, n: int = 60, seed: int = 0) -> Path:
    """Texts whose label is given by one sentiment word among filler words."""
    rng = random.Random(seed)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            label = "pos" if i % 2 == 0 else "neg"
            words = [*rng.sample(FILLER, 4), rng.choice(POSITIVE if label == "pos" else NEGATIVE)]
            rng.shuffle(words)
            w.writerow([" ".join(words), label])
    return path


def make_qa_jsonl(path: Path, n: int = 40) -> Path:
    """Arithmetic question -> answer pairs."""
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            a, b = i % 5, (i // 5) % 5
            f.write(json.dumps({"question": f"question : {a} plus {b} ?", "answer": str(a + b)}) + "\n")
    return path


def run_env() -> dict[str, str]:
    """The environment for a CLI subprocess: not a torchrun rank, one thread (the same float sums every run)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"  # the same thread count in every run: the same float sums
    return env


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1 (for a torchrun rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def split_csv(path: Path) -> Path:
    """48 train rows (6 full batches of 8), 8 validation, 8 test: fixed by a split column."""
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label", "split"])
        for i in range(64):
            label = "pos" if i % 2 else "neg"
            word = (POSITIVE if label == "pos" else NEGATIVE)[i % 6]
            split = "train" if i < 48 else "validation" if i < 56 else "test"
            w.writerow([f"the film was {word} {i % 7}", label, split])
    return path
