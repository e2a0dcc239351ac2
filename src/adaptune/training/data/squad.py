"""Extractive question answering files: SQuAD JSON and JSON Lines -> one :class:`Example` per question.

SQuAD JSON (v1.1 and v2.0)::

    {"data": [{"title": "...", "paragraphs": [{"context": "...", "qas": [
        {"id": "q1", "question": "...", "answers": [{"text": "...", "answer_start": 12}], "is_impossible": false}
    ]}]}]}

JSON Lines, one question per line, ``answers`` in either the Hugging Face ``datasets`` style or SQuAD's list::

    {"id": "q1", "context": "...", "question": "...", "answers": {"text": ["..."], "answer_start": [12]}}
    {"context": "...", "question": "...", "answers": [{"text": "...", "answer_start": 12}]}

Every answer is checked: ``answer_start`` is an integer and ``context[answer_start:][:len(text)] == text``.
Unanswerable questions (SQuAD 2.0 ``"is_impossible": true``, or an empty ``answers``) are kept with no answers:
the task trains them to point at the first ([CLS]) token and scores "" as their only correct answer. Errors are
one line naming the file and the line (JSON Lines) or the JSON path (``data[0].paragraphs[2].qas[1]``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .example import Example
from .files import MAX_FIELD_CHARS, DataError, decode_utf8, field_value, jsonl_records, show_value

__all__ = ["ANSWERS_EXPECTED", "check_answers", "read_qa_pairs", "read_squad"]

ANSWERS_EXPECTED = (
    'expected {"text": [...], "answer_start": [...]} or a list of {"text", "answer_start"} objects ([] for none)'
)


def _kind(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _string(obj: dict[str, Any], key: str, where: str) -> str:
    """``obj[key]``: a non-blank string within the field size limit."""
    if key not in obj:
        raise DataError(f"{where}: field {key!r} is missing")
    value = obj[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} is {_kind(value)}; expected a string")
    if len(value) > MAX_FIELD_CHARS:
        raise DataError(f"{where}: field {key!r} is {len(value):,} characters; the limit is {MAX_FIELD_CHARS:,}")
    if not value.strip():
        raise DataError(f"{where}: field {key!r} is empty")
    return value


def _list(obj: dict[str, Any], key: str, where: str) -> list[Any]:
    if key not in obj:
        raise DataError(f"{where}: field {key!r} is missing; expected an array")
    if not isinstance(obj[key], list):
        raise DataError(f"{where}: field {key!r} is {_kind(obj[key])}; expected an array")
    return obj[key]


def check_answers(
    context: str, texts: list[Any], starts: list[Any], where: str
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Check each (text, start) pair against ``context``; return ``(texts, starts)`` as tuples.

    ``where`` names the answers (``file:line: answers`` or ``file:data[0]...qas[1].answers``); an error appends
    ``[i]`` and says what the context holds there.
    """
    for i, (text, start) in enumerate(zip(texts, starts, strict=True)):
        at = f"{where}[{i}]"
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{at}: answer text is {show_value(text)}; expected a non-empty string")
        if isinstance(start, bool) or not isinstance(start, int):
            raise DataError(f"{at}: answer_start is {show_value(start)}; expected an integer character offset")
        if not 0 <= start <= len(context) - len(text):
            raise DataError(
                f"{at}: answer_start {start} with the {len(text)}-character answer {show_value(text)} does not fit "
                f"in the {len(context)}-character context; expected 0..{max(0, len(context) - len(text))}"
            )
        found = context[start : start + len(text)]
        if found != text:
            elsewhere = context.find(text)
            hint = f" (the text occurs at {elsewhere})" if elsewhere >= 0 else " (the text is not in the context)"
            raise DataError(
                f"{at}: context[{start}:{start + len(text)}] is {show_value(found)}; expected the answer text "
                f"{show_value(text)}{hint}"
            )
    return tuple(texts), tuple(starts)


def _example(question: str, context: str, texts: tuple[str, ...], starts: tuple[int, ...], source: str) -> Example:
    # text = question, target = the first answer (None: unanswerable), every gold answer kept for scoring.
    return Example(
        question,
        target=texts[0] if texts else None,
        context=context,
        answers=texts,
        answer_starts=starts,
        source=source,
    )


def _json_examples(text: str, name: str) -> list[Example]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{name}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(doc, dict) or "data" not in doc:
        hint = " (a .json file is read as SQuAD JSON; use .jsonl for one question per line)"
        raise DataError(f'{name}: expected a SQuAD object {{"data": [...]}}, got {_kind(doc)}{hint}')
    examples: list[Example] = []
    for a, article in enumerate(_list(doc, "data", name)):
        at_article = f"{name}:data[{a}]"
        if not isinstance(article, dict):
            raise DataError(f"{at_article}: is {_kind(article)}; expected an object with 'paragraphs'")
        for p, para in enumerate(_list(article, "paragraphs", at_article)):
            at_para = f"{at_article}.paragraphs[{p}]"
            if not isinstance(para, dict):
                raise DataError(f"{at_para}: is {_kind(para)}; expected an object with 'context' and 'qas'")
            context = _string(para, "context", at_para)
            for q, qa in enumerate(_list(para, "qas", at_para)):
                at = f"{at_para}.qas[{q}]"
                if not isinstance(qa, dict):
                    raise DataError(f"{at}: is {_kind(qa)}; expected an object with 'question' and 'answers'")
                question = _string(qa, "question", at).strip()
                answers = _list(qa, "answers", at)
                impossible = qa.get("is_impossible", False)
                if not isinstance(impossible, bool):
                    raise DataError(f"{at}: field 'is_impossible' is {show_value(impossible)}; expected true/false")
                if impossible and answers:
                    raise DataError(
                        f"{at}: is_impossible is true but 'answers' has {len(answers)}; expected [] "
                        "(SQuAD 2.0 keeps those in 'plausible_answers')"
                    )
                for i, ans in enumerate(answers):
                    if not isinstance(ans, dict) or "text" not in ans or "answer_start" not in ans:
                        raise DataError(f"{at}.answers[{i}]: expected an object with 'text' and 'answer_start'")
                texts, starts = check_answers(
                    context, [x["text"] for x in answers], [x["answer_start"] for x in answers], f"{at}.answers"
                )
                examples.append(_example(question, context, texts, starts, at))
    return examples


def _answer_lists(row: dict[str, Any], where: str) -> tuple[list[Any], list[Any]]:
    """The (texts, starts) of a JSON Lines ``answers`` field in either style."""
    if "answers" not in row:
        raise DataError(f"{where}: field 'answers' is missing; {ANSWERS_EXPECTED}")
    answers = row["answers"]
    if isinstance(answers, dict):  # Hugging Face datasets: {"text": [...], "answer_start": [...]}
        texts, starts = answers.get("text"), answers.get("answer_start")
        if not isinstance(texts, list) or not isinstance(starts, list):
            raise DataError(f"{where}: 'answers' needs 'text' and 'answer_start' arrays; {ANSWERS_EXPECTED}")
        if len(texts) != len(starts):
            raise DataError(
                f"{where}: 'answers' has {len(texts)} texts and {len(starts)} answer_starts; expected one each"
            )
        return texts, starts
    if isinstance(answers, list):  # SQuAD style: [{"text": ..., "answer_start": ...}, ...]
        for i, ans in enumerate(answers):
            if not isinstance(ans, dict) or "text" not in ans or "answer_start" not in ans:
                raise DataError(
                    f"{where}: answers[{i}] is {_kind(ans)}; expected an object with 'text', 'answer_start'"
                )
        return [a["text"] for a in answers], [a["answer_start"] for a in answers]
    raise DataError(f"{where}: field 'answers' is {_kind(answers)}; {ANSWERS_EXPECTED}")


def _jsonl_examples(text: str, name: str) -> list[Example]:
    _, rows = jsonl_records(text, name)
    examples = []
    for line, row in rows:
        at = f"{name}:{line}"
        context = field_value(row, "context", at)
        question = field_value(row, "question", at).strip()
        texts, starts = check_answers(context, *_answer_lists(row, at), f"{at}: answers")
        examples.append(_example(question, context, texts, starts, at))
    return examples


def read_squad(path: Path, name: str) -> list[Example]:
    """Read a SQuAD ``.json`` file or a ``.jsonl`` / ``.ndjson`` file of questions (see the module docstring).

    Args:
        path: the file.
        name: how messages name it (the path as the user gave it).

    Returns:
        One example per question: ``text`` the question, ``context`` the passage, ``answers`` / ``answer_starts``
        every gold answer (empty when unanswerable), ``target`` the first answer.

    Raises:
        DataError: bad UTF-8 or JSON, a missing or mistyped field, an answer that is not at its ``answer_start``
            in the context, or no questions; the message names the file and the line or JSON path.
    """
    text = decode_utf8(path.read_bytes(), name)
    examples = _json_examples(text, name) if path.suffix.lower() == ".json" else _jsonl_examples(text, name)
    if not examples:
        raise DataError(f"{name}: no questions; expected at least one question with its context")
    return examples


def read_qa_pairs(path: str) -> tuple[list[str], list[str]]:
    """Questions and contexts to answer (``adaptune predict --pairs``): a ``.jsonl`` file with ``question`` and
    ``context`` on each line (other fields, e.g. ``answers`` or ``id``, are ignored).

    Raises:
        DataError: a missing file, bad UTF-8 / JSON, a missing or empty field, or no lines.
    """
    file = Path(path)
    if not file.is_file():
        raise DataError(f"{path}: no such file" + (" (it is a folder)" if file.is_dir() else ""))
    if file.suffix.lower() not in (".jsonl", ".ndjson"):
        raise DataError(f"{path}: unsupported file type {file.suffix or '(none)'!r}; expected .jsonl")
    _, rows = jsonl_records(decode_utf8(file.read_bytes(), path), path)
    questions = [field_value(row, "question", f"{path}:{line}") for line, row in rows]
    contexts = [field_value(row, "context", f"{path}:{line}") for line, row in rows]
    if not questions:
        raise DataError(f"{path}: no questions to answer")
    return questions, contexts
