"""Datasets for ``adaptune train/eval/predict``: CSV, TSV, JSONL, ``label/*.txt`` folders and built-ins.

Every bad input raises :class:`DataError` with a one-line message, ``file:line: what is wrong; what was
expected``, where the line is 1-based as an editor shows it (a CSV record spanning lines reports its first).

Splits are fixed by content, not position: an example's split comes from the SHA-1 of its text (for causal-lm,
prompt and completion) and ``split_seed``. Re-running, reordering the file or changing machine never moves an
example, and exact duplicates always land in the same split, so they cannot leak from train into test.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .builtin import BUILTIN_DATASETS, load_builtin
from .example import Example
from .files import MAX_FIELD_CHARS, DataError, csv_records, decode_utf8, field_value, jsonl_records, show_value
from .readers import FILE_READERS, FileReader, Records, reader_for_suffix

__all__ = ["DataError", "Dataset", "Example", "Records", "check_labels", "load_dataset", "read_file", "read_texts"]

TASKS = ("classification", "qa", "causal-lm", "language-modeling")
LM = "language-modeling"  # unlabeled text: any text column, a .txt file (one text per line), any built-in's texts
SPLITS = ("train", "validation", "test")
# A file's own split column may also say val/valid/dev.
_SPLIT_NAMES = {"train": "train", "test": "test"} | dict.fromkeys(("validation", "val", "valid", "dev"), "validation")
# Column defaults, first present wins.
TEXT_COLUMNS = ("text", "sentence", "review", "headline", "question", "prompt", "input", "content")
LABEL_COLUMNS = ("label", "category", "class", "target_label", "sentiment", "is_sarcastic")
TARGET_COLUMNS = ("answer", "completion", "output", "response", "target")
_DELIMITERS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_JSONL = (".jsonl", ".ndjson")


@dataclass
class Dataset:
    """A named dataset with fixed train/validation/test splits."""

    name: str
    task: str  # "classification" | "qa" | "causal-lm"
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    labels: list[str] | None  # sorted label names (classification) or tags (token classification), else None

    def split(self, name: str) -> list[Example]:
        """The examples of split ``name`` ("train", "validation" or "test")."""
        if name not in SPLITS:
            raise DataError(f"unknown split {name!r}; expected one of: {', '.join(SPLITS)}")
        return getattr(self, name)

    def summary(self) -> str:
        """One line: name, task, split sizes and labels."""
        sizes = ", ".join(f"{s} {len(self.split(s)):,}" for s in SPLITS)
        line = f"{self.name} ({self.task}): {sizes}"
        if self.labels is not None:
            shown = ", ".join(self.labels[:10]) + (
                f", ... (+{len(self.labels) - 10})" if len(self.labels) > 10 else ""
            )
            line += f"; {len(self.labels)} labels: {shown}"
        return line


def _pick(columns: Sequence[str], wanted: str | None, defaults: Sequence[str], where: str) -> str | None:
    if wanted is None:
        return next((c for c in defaults if c in columns), None)
    if wanted not in columns:
        raise DataError(f"{where}: no column {wanted!r}; columns are: {', '.join(map(repr, columns))}")
    return wanted


def _need(column: str | None, option: str, defaults: Sequence[str], columns: Sequence[str], where: str) -> None:
    if column is None:
        raise DataError(
            f"{where}: no {option.split('_')[0]} column: expected one of {', '.join(defaults)} (or pass {option}=); "
            f"columns are: {', '.join(map(repr, columns))}"
        )


def _rows_to_records(
    columns: list[str],
    rows: list[tuple[int, dict[str, Any]]],
    name: str,
    where: str,
    task: str | None,
    text_column: str | None,
    label_column: str | None,
    target_column: str | None,
) -> Records:
    """Turn parsed rows into examples: resolve columns, infer the task, check every field."""
    text = _pick(columns, text_column, TEXT_COLUMNS, where)
    label = _pick(columns, label_column, LABEL_COLUMNS, where)
    target = _pick(columns, target_column, TARGET_COLUMNS, where)
    if task is None:
        if label is not None and not (target_column and not label_column):  # an explicit target_column wins
            task = "classification"
        elif target is not None:
            task = "causal-lm" if text == "prompt" or target == "completion" else "qa"
        else:
            raise DataError(
                f"{where}: cannot tell the task: no label column ({', '.join(LABEL_COLUMNS)}) and no answer column "
                f"({', '.join(TARGET_COLUMNS)}); columns are: {', '.join(map(repr, columns))}; "
                "pass label_column= or target_column="
            )
    _need(text, "text_column", TEXT_COLUMNS, columns, where)
    if task == "classification":
        _need(label, "label_column", LABEL_COLUMNS, columns, where)
    elif task == "qa":
        _need(target, "target_column", TARGET_COLUMNS, columns, where)
    used = {text, label, target}
    split = "split" if "split" in columns and "split" not in used else None
    examples: list[Example] = []
    splits: list[str] = []
    for line, row in rows:
        at = f"{name}:{line}"
        if task == LM:  # only the text: labels and answers of the file are not used
            ex = Example(field_value(row, text, at), source=at)
        elif task == "classification":  # labels are names: " pos" in a hand-written CSV means "pos"
            ex = Example(field_value(row, text, at), label=field_value(row, label, at).strip(), source=at)
        elif task == "qa":
            ex = Example(field_value(row, text, at), target=field_value(row, target, at), source=at)
        elif target is None:  # causal-lm on plain text: no prompt, the whole text is the completion
            ex = Example("", target=field_value(row, text, at), source=at)
        else:
            ex = Example(
                field_value(row, text, at, required=False),
                target=field_value(row, target, at),
                tests=field_value(row, "test", at) if "test" in columns else None,  # HumanEval-style problems
                entry_point=field_value(row, "entry_point", at) if "entry_point" in columns else None,
                source=at,
            )
        examples.append(ex)
        if split is not None:
            value = field_value(row, split, at)
            if value.strip().lower() not in _SPLIT_NAMES:
                raise DataError(f"{at}: field 'split' is {show_value(value)}; expected train, validation or test")
            splits.append(_SPLIT_NAMES[value.strip().lower()])
    return Records(task, examples, splits if split is not None else None)


def _text_lines(text: str, name: str) -> list[tuple[int, str]]:
    """(1-based line number, line) for every non-blank line of a ``.txt`` text; a line over the field limit is a
    DataError. Lines split on ``\n`` only (a stray ``\r`` is dropped), so numbers match what an editor shows."""
    out = []
    for line_no, raw in enumerate(text.split("\n"), 1):
        line = raw.removesuffix("\r")
        if len(line) > MAX_FIELD_CHARS:
            raise DataError(f"{name}:{line_no}: the line is {len(line):,} characters; limit {MAX_FIELD_CHARS:,}")
        if line.strip():
            out.append((line_no, line))
    return out


def _read_lines(path: Path, name: str) -> Records:
    """Unlabeled text for language modelling: one example per non-blank line of a UTF-8 ``.txt`` file."""
    lines = _text_lines(decode_utf8(path.read_bytes(), name), name)
    examples = [Example(line.strip(), source=f"{name}:{i}") for i, line in lines]
    if not examples:
        raise DataError(f"{name}: no text: every line is blank")
    return Records(LM, examples)


def _builtin_records(spec: str, task: str | None, split_seed: int, fractions: tuple[float, float]) -> Records:
    """A built-in's examples for ``task``; as unlabeled text for language modelling, where each keeps the split it
    has in the built-in's own task, so a language adapter trained on a corpus's train texts never sees the texts its
    test split is scored on."""
    info, examples = BUILTIN_DATASETS[spec], load_builtin(spec)
    if task != LM:
        return Records(task or info.task, examples)
    fixed = [assign_split(e, info.task, split_seed, *fractions) for e in examples]
    return Records(LM, _as_text(examples), fixed)


def _as_text(examples: list[Example]) -> list[Example]:
    """A built-in's examples as unlabeled text (question and answer of a dialog pair become one text)."""
    return [Example(f"{e.text} {e.target}".strip() if e.target else e.text, source=e.source) for e in examples]


def _read_folder(folder: Path, name: str) -> Records:
    """One example per ``folder/<label>/*.txt`` file; the subfolder's name is the label."""
    files = sorted(p for p in folder.glob("*/*.txt") if not any(s.startswith(".") for s in p.parts[-2:]))
    if not files:
        raise DataError(f"{name}: no label/*.txt files; expected one subfolder per label, e.g. {name}/positive/1.txt")
    examples = []
    for path in files:
        text = decode_utf8(path.read_bytes(), str(path)).strip()
        if not text:
            raise DataError(f"{path}:1: the file is empty")
        if len(text) > MAX_FIELD_CHARS:
            raise DataError(f"{path}:1: the text is {len(text):,} characters; the limit is {MAX_FIELD_CHARS:,}")
        examples.append(Example(text, label=path.parent.name, source=f"{path}:1"))
    return Records("classification", examples)


def read_file(
    path: str | Path,
    task: str | None = None,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    target_column: str | None = None,
) -> Records:
    """Read a CSV/TSV/JSONL file or a ``label/*.txt`` folder into examples (not yet split).

    Args:
        path: the file or folder.
        task: "classification", "qa" or "causal-lm"; ``None`` infers it from the columns.
        text_column: the input column; default: the first of ``TEXT_COLUMNS`` present.
        label_column: the label column; default: the first of ``LABEL_COLUMNS`` present.
        target_column: the answer/completion column; default: the first of ``TARGET_COLUMNS`` present.

    Returns:
        The task and examples, plus per-example splits when the file has a ``split`` column.

    Raises:
        DataError: for any unreadable or malformed input; the message names the file, line and field.
    """
    name = str(path)
    path = Path(path)
    if task is not None and task not in TASKS and task not in FILE_READERS:
        raise DataError(f"unknown task {task!r}; expected one of: {', '.join((*TASKS, *FILE_READERS))}")
    reader = FILE_READERS.get(task) if task is not None else reader_for_suffix(path.suffix.lower())
    if reader is not None:  # a task with its own file format (CoNLL, SQuAD JSON)
        return _read_with(reader, path, name)
    if task == LM and path.suffix.lower() == ".txt" and path.is_file():
        return _read_lines(path, name)
    if path.is_dir():
        if task not in (None, "classification"):
            raise DataError(f"{name}: a label/*.txt folder is a classification dataset, not {task}")
        return _read_folder(path, name)
    if not path.exists():
        raise DataError(f"{name}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix not in _DELIMITERS and suffix not in _JSONL:
        raise DataError(
            f"{name}: unsupported file type {suffix or '(none)'!r}; expected .csv, .tsv, .jsonl or a folder"
        )
    text = decode_utf8(path.read_bytes(), name)
    columns: list[str]
    rows: list[tuple[int, dict[str, Any]]]
    if suffix in _JSONL:
        columns, rows = jsonl_records(text, name)
        where = name
    else:
        (header_line, columns), records = csv_records(text, name, _DELIMITERS[suffix])
        rows = [(line, dict(zip(columns, row, strict=True))) for line, row in records]
        where = f"{name}:{header_line}"
    if not rows:
        raise DataError(f"{name}: no examples: the file has no data rows")
    return _rows_to_records(columns, rows, name, where, task, text_column, label_column, target_column)


def _read_with(reader: FileReader, path: Path, name: str) -> Records:
    """``reader``'s records of ``path``, after checking it is a file of a type the reader handles."""
    if not path.is_file():
        why = f"a folder is not a {reader.task} file" if path.is_dir() else "no such file"
        raise DataError(f"{name}: {why}")
    if path.suffix.lower() not in reader.suffixes:
        raise DataError(
            f"{name}: unsupported file type {path.suffix or '(none)'!r} for {reader.task}; "
            f"expected {', '.join(reader.suffixes)}"
        )
    return reader.read(path, name)


def _unit(key: str, seed: int, salt: str) -> float:
    """A number in [0, 1) fixed by ``key`` and ``seed``: SHA-1, never Python's per-process ``hash()``."""
    digest = hashlib.sha1(f"{salt}\0{seed}\0{key}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(example: Example, task: str, seed: int, val_fraction: float, test_fraction: float) -> str:
    """The split ("train", "validation" or "test") an example falls in, from the hash of its content.

    The key is the input text, so a repeated question or review always lands in one split; for causal-lm it is
    prompt + completion, since prompts are often a shared template (or empty) that would pile into one split; for
    extractive qa it is the passage, so questions on one passage never straddle train and test.
    """
    if example.context is not None:  # extractive qa: every question on one passage lands in one split
        key = example.context
    else:
        key = f"{example.text}\0{example.target}" if task == "causal-lm" else example.text
    u = _unit(key, seed, "split")
    return "test" if u < test_fraction else "validation" if u < test_fraction + val_fraction else "train"


def _cap(examples: list[Example], limit: int | None, seed: int) -> list[Example]:
    """The first ``limit`` examples after a content-keyed shuffle, kept in their original order."""
    if limit is None or len(examples) <= limit:
        return examples

    def rank(i: int) -> tuple[float, str, str, str]:
        ex = examples[i]
        content = (ex.text, ex.label or "", ex.target or "")
        return _unit("\0".join(content), seed, "limit"), *content

    return [examples[i] for i in sorted(sorted(range(len(examples)), key=rank)[:limit])]


def _sort_labels(labels: set[str]) -> list[str]:
    # Integer labels sort numerically ("2" before "10") so class indices match the numbers users wrote.
    if all(lab.removeprefix("-").isdecimal() for lab in labels):
        return sorted(labels, key=lambda lab: (int(lab), lab))
    return sorted(labels)


def load_dataset(
    spec: str,
    task: str | None = None,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    target_column: str | None = None,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    limit: int | None = None,
) -> Dataset:
    """Load a built-in dataset, a CSV/TSV/JSONL file or a ``label/*.txt`` folder, split into train/validation/test.

    An existing path wins over a built-in name. A file's own ``split`` column (train/validation/test) is used as
    is; otherwise each example's split is fixed by the SHA-1 of its text and ``split_seed`` (see ``assign_split``).

    Args:
        spec: a built-in name (``adaptune.training.data.builtin.BUILTIN_DATASETS``), a file path, or a folder path.
        task: "classification", "qa" or "causal-lm"; ``None``: built-ins know theirs, files infer it.
        text_column: see ``read_file``.
        label_column: see ``read_file``.
        target_column: see ``read_file``.
        val_fraction: expected share of examples in validation.
        test_fraction: expected share of examples in test.
        split_seed: changes which examples go where, reproducibly.
        limit: keep at most this many examples per split (a fixed, content-keyed subset).

    Returns:
        The dataset with its three splits and, for classification, its sorted labels.

    Raises:
        DataError: for unreadable or malformed data, an empty train split, or fewer than two labels.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(f"val_fraction={val_fraction} and test_fraction={test_fraction}: each >= 0, sum < 1")
    if limit is not None and limit < 1:
        raise DataError(f"limit={limit}: expected a positive number of examples per split")

    if not Path(spec).exists() and spec in BUILTIN_DATASETS:
        info = BUILTIN_DATASETS[spec]
        if text_column or label_column or target_column:
            raise DataError(f"{spec}: text_column/label_column/target_column apply to files, not built-in datasets")
        if task not in (None, info.task, LM) and {task, info.task} != {"qa", "causal-lm"}:
            raise DataError(f"{spec}: a built-in {info.task} dataset cannot be used for {task}")
        records, split_task = _builtin_records(spec, task, split_seed, (val_fraction, test_fraction)), info.task
    else:
        if not Path(spec).exists() and "/" not in spec and not Path(spec).suffix:
            raise DataError(f"{spec}: no such file or folder, nor a built-in dataset ({', '.join(BUILTIN_DATASETS)})")
        records = read_file(
            spec, task, text_column=text_column, label_column=label_column, target_column=target_column
        )
        split_task = records.task
    name, task = spec, records.task
    labels = None
    if task == "classification":
        labels = _sort_labels({ex.label for ex in records.examples if ex.label is not None})
        if len(labels) < 2:
            raise DataError(f"{name}: classification needs at least 2 labels; found only {labels}")
    elif any(ex.tags for ex in records.examples):  # token classification: the tag set is the label set
        labels = _sort_labels({tag for ex in records.examples for tag in ex.tags})
    parts: dict[str, list[Example]] = {s: [] for s in SPLITS}
    fractions = (val_fraction, test_fraction)
    for i, ex in enumerate(records.examples):
        # A built-in used for another task keeps its own splits: they belong to the data, not to the task asked.
        split = records.splits[i] if records.splits else assign_split(ex, split_task, split_seed, *fractions)
        parts[split].append(ex)
    if not parts["train"]:
        sizes = ", ".join(f"{s} {len(v)}" for s, v in parts.items())
        raise DataError(f"{name}: the train split is empty ({sizes}); add training rows or lower the fractions")
    parts = {s: _cap(v, limit, split_seed) for s, v in parts.items()}
    return Dataset(name, task, parts["train"], parts["validation"], parts["test"], labels)


def read_texts(path: str) -> list[str]:
    """Texts to predict on: a ``.txt`` file (one per line, blank lines skipped), a ``.jsonl`` file with a
    ``"text"`` field, or ``"-"`` for standard input (read as ``.txt``).

    Raises:
        DataError: missing file, unsupported type, bad UTF-8 or JSON, a missing ``text`` field, or no texts.
    """
    if path == "-":
        name, suffix = "<stdin>", ".txt"
        stream = getattr(sys.stdin, "buffer", None)
        data = stream.read() if stream is not None else sys.stdin.read().encode("utf-8", "surrogatepass")
    else:
        name, suffix = path, Path(path).suffix.lower()
        if not Path(path).is_file():
            raise DataError(f"{name}: no such file" + (" (it is a folder)" if Path(path).is_dir() else ""))
        if suffix not in (".txt", *_JSONL):
            raise DataError(f"{name}: unsupported file type {suffix or '(none)'!r}; expected .txt or .jsonl, or -")
        data = Path(path).read_bytes()
    text = decode_utf8(data, name)
    texts: list[str] = []
    if suffix in _JSONL:
        _, rows = jsonl_records(text, name)
        texts = [field_value(row, "text", f"{name}:{line}") for line, row in rows]
    else:
        texts = [line for _, line in _text_lines(text, name)]
    if not texts:
        raise DataError(f"{name}: no texts to predict")
    return texts


def check_labels(examples: Iterable[Example], known_labels: Sequence[str], source: str) -> None:
    """Check that every example's label is one of ``known_labels`` (e.g. the labels of a saved head).

    Args:
        examples: the examples to check.
        known_labels: the allowed labels.
        source: where the known labels come from, for the message (e.g. ``"adapter out/sst"``).

    Raises:
        DataError: naming the first example without a label or with a label not in ``known_labels``.
    """
    known = {str(lab) for lab in known_labels}
    expected = ", ".join(map(str, known_labels))
    for ex in examples:
        if ex.label is None:
            raise DataError(f"{ex.source}: the example has no label; {source} expects one of: {expected}")
        if ex.label not in known:
            raise DataError(
                f"{ex.source}: label {show_value(ex.label)} is not one of the labels of {source}: {expected}"
            )
