"""Atomic file and folder writes, and the one cache folder.

Readers see the old or the new content, never a half-written one: files are written to a hidden sibling and
moved into place with ``os.replace`` (atomic on one filesystem); folders are built beside the target and
swapped in.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_dir_write",
    "atomic_folder",
    "atomic_write",
    "cache_dir",
    "read_json_object",
    "write_json_atomic",
    "write_text_atomic",
]


def cache_dir(*parts: str) -> Path:
    """``$ADAPTUNE_CACHE`` or ``~/.cache/adaptune``, joined with ``parts`` (not created)."""
    root = Path(os.environ.get("ADAPTUNE_CACHE") or Path.home() / ".cache" / "adaptune").expanduser()
    return root.joinpath(*parts)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a fresh temporary path beside ``path``, then move it into place; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hidden, uniquely named sibling: same filesystem (so os.replace is atomic) and created by the writer with
    # the normal umask, unlike tempfile.mkstemp's 0600. It keeps the suffix: writers such as matplotlib pick the
    # format from it.
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as UTF-8 JSON (indent 2, insertion order, non-ASCII kept) atomically.

    Non-JSON values (a ``Path``, a dtype) are written as ``str(value)`` rather than failing at the end of a run.
    """
    return write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_dir_write(out_dir: str | os.PathLike[str], files: Mapping[str, Callable[[Path], None]]) -> Path:
    """Write ``files`` (name -> ``write(path)``) into ``out_dir`` so readers see the old or the new folder.

    Files in an existing ``out_dir`` that ``files`` does not name (a README, a report) are kept.
    """

    def fill(tmp: Path) -> None:
        for fname, write in files.items():
            write(tmp / fname)

    return atomic_folder(out_dir, fill, keep=lambda name: name not in files)


def atomic_folder(
    out_dir: str | os.PathLike[str], fill: Callable[[Path], None], keep: Callable[[str], bool] = lambda name: True
) -> Path:
    """Build ``out_dir`` with ``fill(tmp_folder)`` beside it, then swap it in, so readers see the old or the new
    folder. Entries of an existing ``out_dir`` that ``fill`` did not write and ``keep(name)`` accepts are kept."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        fill(tmp)
        if out_dir.exists():
            for extra in out_dir.iterdir():
                if keep(extra.name) and not (tmp / extra.name).exists():
                    shutil.move(str(extra), tmp / extra.name)
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def read_json_object(path: str | os.PathLike[str], missing_hint: str = "") -> dict[str, Any]:
    """A JSON object from ``path``; a missing file, bad JSON or a non-object raise an error naming ``path``.

    ``missing_hint`` is added to the missing-file message (e.g. which command writes the file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing" + (f" ({missing_hint})" if missing_hint else ""))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data
