"""Plumbing every layer shares (atomic writes, the cache folder); imports nothing else from adaptune."""

from .files import (
    atomic_dir_write,
    atomic_folder,
    atomic_write,
    cache_dir,
    read_json_object,
    write_json_atomic,
    write_text_atomic,
)

__all__ = [
    "atomic_dir_write",
    "atomic_folder",
    "atomic_write",
    "cache_dir",
    "read_json_object",
    "write_json_atomic",
    "write_text_atomic",
]
