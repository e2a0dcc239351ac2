"""File readers of tasks whose data is not rows of columns (CoNLL tag files, SQuAD JSON): task name -> reader.

``datasets.read_file`` asks this registry first, so a task with its own file format adds one ``register_reader``
line below and ``adaptune train/eval --task <name> --data <file>`` reads it; a registered suffix (``.conll``)
also lets ``--data`` infer the task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .example import Example

__all__ = ["FILE_READERS", "FileReader", "Records", "reader_for_suffix", "register_reader"]


@dataclass
class Records:
    """Examples read from one file or folder, before splitting."""

    task: str
    examples: list[Example]
    splits: list[str] | None = None  # per example, from the file's own ``split`` column


@dataclass(frozen=True)
class FileReader:
    """How one task reads its files: ``read(path, name)`` -> Records (raises DataError naming file and line)."""

    task: str
    read: Callable[[Path, str], Records]
    suffixes: tuple[str, ...]  # lower-case file suffixes this reader handles (``.json``, ``.conll``, ...)
    infer_suffixes: tuple[str, ...] = ()  # suffixes that mean this task when no task is given


FILE_READERS: dict[str, FileReader] = {}


def register_reader(
    task: str,
    read: Callable[[Path, str], Records],
    suffixes: Sequence[str],
    infer_suffixes: Sequence[str] = (),
) -> None:
    """Add ``task``'s reader (a second reader for one task is refused)."""
    if task in FILE_READERS:
        raise ValueError(f"task {task!r} already has a file reader")
    FILE_READERS[task] = FileReader(task, read, tuple(s.lower() for s in suffixes), tuple(infer_suffixes))


def reader_for_suffix(suffix: str) -> FileReader | None:
    """The reader whose ``infer_suffixes`` hold ``suffix`` (lower-case), if any."""
    return next((r for r in FILE_READERS.values() if suffix in r.infer_suffixes), None)


# Registrations (one line per task with its own file format):
from .squad import read_squad  # noqa: E402 - below the registry it fills; squad.py never imports this module

# extractive-qa: SQuAD .json / .jsonl; only .json means the task by itself (.jsonl rows are the generic format)
register_reader(
    "extractive-qa",
    lambda p, n: Records("extractive-qa", read_squad(p, n)),
    (".json", ".jsonl", ".ndjson"),
    (".json",),
)

# token-classification: CoNLL-style word / tag columns or JSON Lines; .txt and .jsonl only with the task given
from .tagged import CONLL_SUFFIXES, JSONL_SUFFIXES, read_tagged  # noqa: E402 - tagged.py never imports this module

register_reader(
    "token-classification",
    lambda p, n: Records("token-classification", read_tagged(p, n)),
    (*CONLL_SUFFIXES, *JSONL_SUFFIXES),
    (".conll", ".bio", ".iob"),
)
