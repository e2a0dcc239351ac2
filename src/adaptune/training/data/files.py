"""Low-level readers for data files: UTF-8 decoding, CSV/TSV and JSON Lines records, checked fields.

Each function raises :class:`DataError` with one line naming the file, the 1-based line and the field.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from typing import Any

__all__ = ["MAX_FIELD_CHARS", "DataError", "csv_records", "decode_utf8", "field_value", "jsonl_records", "show_value"]

# A field this long is almost always a broken file (an unclosed quote swallowing the rest); refuse it before it
# reaches a tokenizer.
MAX_FIELD_CHARS = 1_000_000


class DataError(ValueError):
    """Bad input data; ``str(err)`` is ONE line naming the file, line/row and field, and what was expected."""

    def __init__(self, message: str) -> None:
        # The CLI prints this as one line; a stray newline (from a value) would break that.
        super().__init__(" ".join(str(message).splitlines()))


def show_value(value: object, limit: int = 60) -> str:
    """A short repr for messages (repr also escapes newlines, keeping the message one line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number" if isinstance(value, (int, float)) else type(value).__name__)


def decode_utf8(data: bytes, name: str) -> str:
    """Decode ``data`` as UTF-8 (a leading BOM is dropped) or raise a DataError naming the line and byte."""
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as err:
        pos = start + err.start
        line = data.count(b"\n", 0, pos) + 1
        col = pos - (data.rfind(b"\n", 0, pos) + 1)
        raise DataError(
            f"{name}:{line}: not UTF-8: byte 0x{data[pos]:02X} at byte offset {col} of the line "
            f"(file offset {pos}); save the file as UTF-8"
        ) from None


def csv_records(
    text: str, name: str, delimiter: str = ","
) -> tuple[tuple[int, list[str]], list[tuple[int, list[str]]]]:
    """Parse CSV/TSV text into ``(first line, fields)`` for the header and each record; blank lines are skipped.

    Raises:
        DataError: a record with a different field count than the header, a duplicate column, no header.
    """
    # Raise the csv module's 128 KiB cap so our own, clearer MAX_FIELD_CHARS check is the one that fires.
    csv.field_size_limit(max(csv.field_size_limit(), MAX_FIELD_CHARS + 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    header_line = 0
    records: list[tuple[int, list[str]]] = []
    end = 0  # reader.line_num after the previous record: the next record starts on the line after it
    try:
        for row in reader:
            start, end = end + 1, reader.line_num
            if not any(row):  # a blank line, or a spreadsheet's row of empty cells
                continue
            if header is None:
                header, header_line = [col.strip() for col in row], start
                dup = next((c for i, c in enumerate(header) if c in header[:i]), None)
                if dup is not None:
                    raise DataError(f"{name}:{start}: column {dup!r} appears twice in the header")
            elif len(row) != len(header):
                hint = f" (lines {start}-{end} are one record: an unclosed quote?)" if end > start else ""
                raise DataError(
                    f"{name}:{start}: expected {len(header)} fields ({', '.join(header)}), got {len(row)}{hint}"
                )
            else:
                records.append((start, row))
    except csv.Error as err:
        if "field larger than field limit" in str(err):
            raise DataError(f"{name}:{end + 1}: a field is over the limit of {MAX_FIELD_CHARS:,} characters") from None
        raise DataError(f"{name}:{end + 1}: unreadable CSV record: {err}") from None
    if header is None:
        raise DataError(f"{name}: the file is empty; expected a header row and data rows")
    return (header_line, header), records


def jsonl_records(text: str, name: str) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Parse JSON Lines into the keys seen (in first-seen order) and ``(line, object)`` records.

    Raises:
        DataError: a line that is not valid JSON or not a JSON object.
    """
    keys: dict[str, None] = {}
    records: list[tuple[int, dict[str, Any]]] = []
    # Split on "\n" only: str.splitlines() would also split on U+2028 etc., which JSON allows inside strings.
    for line_no, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{name}:{line_no}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{name}:{line_no}: expected a JSON object {{...}}, got {_json_type(obj)}")
        keys.update(dict.fromkeys(obj))
        records.append((line_no, obj))
    return list(keys), records


def field_value(row: dict[str, Any], column: str, where: str, required: bool = True) -> str:
    """``row[column]`` as a string, checked: present, a scalar, not too long, and (if required) not blank."""
    if column not in row:
        raise DataError(f"{where}: field {column!r} is missing")
    value = row[column]
    if isinstance(value, bool):
        value = "true" if value else "false"  # JSON's spelling, not Python's
    elif isinstance(value, (int, float)):
        value = str(value)
    elif value is None:
        raise DataError(f"{where}: field {column!r} is null; expected a string")
    elif not isinstance(value, str):
        raise DataError(f"{where}: field {column!r} must be a string or number, got {_json_type(value)}")
    if len(value) > MAX_FIELD_CHARS:
        raise DataError(f"{where}: field {column!r} is {len(value):,} characters; the limit is {MAX_FIELD_CHARS:,}")
    if required and not value.strip():
        raise DataError(f"{where}: field {column!r} is empty")
    return value
