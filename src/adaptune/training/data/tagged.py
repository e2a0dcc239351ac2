"""Token classification files (NER, POS, chunking): CoNLL-style columns and JSON Lines -> one :class:`Example` per
sentence.

CoNLL (``.conll``, ``.bio``, ``.iob``; ``.txt`` with ``--task token-classification``): one word per line, the
word in the first column and its tag in the LAST, columns separated by whitespace, a blank line between sentences.
Extra middle columns are ignored, so CoNLL-2003's ``word POS chunk NER`` reads as word + NER tag.
``-DOCSTART-`` lines are skipped (they also end a sentence)::

    -DOCSTART- -X- -X- O

    John NNP B-NP B-PER
    lives VBZ B-VP O
    in IN B-PP O
    Paris NNP B-NP B-LOC

JSON Lines (``.jsonl``, ``.ndjson``), one sentence per line; ``ner_tags`` is accepted for ``tags``; tags must be
strings (the tag names, not a dataset's class ids)::

    {"tokens": ["John", "lives", "in", "Paris"], "tags": ["B-PER", "O", "O", "B-LOC"]}

An example's text is its words joined by spaces; its ``source`` is the file and the sentence's first line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .example import Example
from .files import MAX_FIELD_CHARS, DataError, decode_utf8, jsonl_records, show_value

__all__ = ["CONLL_SUFFIXES", "JSONL_SUFFIXES", "read_conll", "read_tagged", "read_tagged_jsonl"]

CONLL_SUFFIXES = (".conll", ".bio", ".iob", ".txt")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
_DOCSTART = "-DOCSTART-"
_TAG_KEYS = ("tags", "ner_tags")


def read_tagged(path: Path, name: str) -> list[Example]:
    """The sentences of a CoNLL-style or JSON Lines file (by suffix); ``name`` is the path as messages show it.

    Raises:
        DataError: one line naming the file, the line and what was expected.
    """
    text = decode_utf8(Path(path).read_bytes(), name)
    if Path(path).suffix.lower() in JSONL_SUFFIXES:
        return read_tagged_jsonl(text, name)
    return read_conll(text, name)


def _example(tokens: list[str], tags: list[str], where: str) -> Example:
    text = " ".join(tokens)
    if len(text) > MAX_FIELD_CHARS:
        raise DataError(f"{where}: the sentence is {len(text):,} characters; the limit is {MAX_FIELD_CHARS:,}")
    return Example(text, tokens=tuple(tokens), tags=tuple(tags), source=where)


def read_conll(text: str, name: str) -> list[Example]:
    """Sentences of CoNLL-style text: ``word [more columns] tag`` lines, a blank line between sentences."""
    examples: list[Example] = []
    tokens: list[str] = []
    tags: list[str] = []
    first = 0  # the line the current sentence starts on

    def close() -> None:
        if tokens:
            examples.append(_example(list(tokens), list(tags), f"{name}:{first}"))
        tokens.clear()
        tags.clear()

    for line_no, raw in enumerate(text.split("\n"), 1):
        columns = raw.split()
        if not columns or columns[0] == _DOCSTART:
            close()
            continue
        if len(columns) == 1:
            raise DataError(
                f"{name}:{line_no}: one column {show_value(raw.strip())}; expected 'word tag' (whitespace-separated, "
                "the tag in the last column), or a blank line between sentences"
            )
        if not tokens:
            first = line_no
        tokens.append(columns[0])
        tags.append(columns[-1])
    close()
    if not examples:
        raise DataError(f"{name}: no sentences; expected 'word tag' lines with a blank line between sentences")
    return examples


def _strings(record: dict[str, Any], key: str, where: str) -> list[str]:
    """``record[key]``: a non-empty array of non-blank strings."""
    value = record[key]
    if not isinstance(value, list):
        raise DataError(f"{where}: field {key!r} is {show_value(value)}; expected an array of strings")
    if not value:
        raise DataError(f"{where}: field {key!r} is an empty array; expected at least one word")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            hint = " (tag names, not class ids)" if key in _TAG_KEYS and isinstance(item, int) else ""
            raise DataError(f"{where}: {key}[{i}] is {show_value(item)}; expected a string{hint}")
        if not item.strip():
            raise DataError(f"{where}: {key}[{i}] is blank; expected a word or tag")
    return value


def read_tagged_jsonl(text: str, name: str) -> list[Example]:
    """Sentences of JSON Lines text: ``{"tokens": [...], "tags": [...]}`` (or ``ner_tags``) per line."""
    _, records = jsonl_records(text, name)
    if not records:
        raise DataError(f'{name}: no sentences; expected lines like {{"tokens": [...], "tags": [...]}}')
    examples = []
    for line_no, record in records:
        where = f"{name}:{line_no}"
        if "tokens" not in record:
            raise DataError(f"{where}: field 'tokens' is missing; expected an array of words")
        key = next((k for k in _TAG_KEYS if k in record), None)
        if key is None:
            raise DataError(f"{where}: field 'tags' (or 'ner_tags') is missing; expected one tag per token")
        tokens, tags = _strings(record, "tokens", where), _strings(record, key, where)
        if len(tokens) != len(tags):
            raise DataError(f"{where}: {len(tokens)} tokens but {len(tags)} {key}; expected one tag per token")
        examples.append(_example(tokens, tags, where))
    return examples
