"""Training checkpoints: trainable weights + optimizer + scheduler + RNG + data position, written atomically.

A checkpoint is a folder ``<out>/checkpoints/step-<N>/`` with ``trainable.safetensors`` (every parameter
that trains, by name) and ``state.pt`` (optimizer, scheduler, RNG states, position, history), plus a
``COMPLETE`` marker written last. Folders are built under a temporary name and renamed into place, so a
crash never leaves a half-written checkpoint under a real name; loading skips any folder without a marker
or with unreadable files and falls back to the previous one. ``state.pt`` is read with
``torch.load(weights_only=True)``: it holds tensors and plain Python values only, never code.
"""

from __future__ import annotations

import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..util import atomic_dir_write
from .distributed import assign

__all__ = ["find_latest", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]

MARKER = "COMPLETE"
WEIGHTS = "trainable.safetensors"
STATE = "state.pt"


def rng_state() -> dict[str, Any]:
    """Python and torch RNG states (CPU, and CUDA when present)."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out_dir: Path, step: int, weights: dict[str, torch.Tensor], state: dict[str, Any], keep: int = 2
) -> Path:
    """Write checkpoint ``step`` atomically and keep only the newest ``keep`` checkpoints.

    ``weights`` are the trainable parameters by name as full tensors (``distributed.gather_trainable``).
    """
    root = out_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    if final.exists():  # a re-run of the same step (after a resume) replaces it whole
        shutil.rmtree(final)
    atomic_dir_write(
        final,
        {
            WEIGHTS: lambda p: save_file(weights, str(p)),
            STATE: lambda p: torch.save(state, p),
            MARKER: lambda p: p.write_text(str(step), encoding="utf-8"),  # written last: the folder is complete
        },
    )
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_latest(out_dir: Path) -> list[Path]:
    """Complete checkpoint folders, newest first."""
    root = out_dir / "checkpoints"
    if not root.is_dir():
        return []
    return [p for p in sorted(root.glob("step-*"), reverse=True) if (p / MARKER).is_file()]


def load_checkpoint(out_dir: Path, model: nn.Module) -> dict[str, Any] | None:
    """Load the newest readable checkpoint into ``model``; returns its state dict, or None if none exists.

    A corrupt newest checkpoint is reported (warning) and skipped in favour of the previous good one.
    """
    for folder in find_latest(out_dir):
        try:
            weights = load_file(str(folder / WEIGHTS))
            state = torch.load(folder / STATE, weights_only=True, map_location="cpu")
        except Exception as err:  # any unreadable file means: not this one
            warnings.warn(
                f"{folder}: unreadable checkpoint ({type(err).__name__}: {err}); trying an older one", stacklevel=2
            )
            continue
        params = dict(model.named_parameters())
        wrong = sorted(k for k in weights if k not in params or params[k].shape != weights[k].shape)
        missing = sorted(n for n, p in params.items() if p.requires_grad and n not in weights)
        if wrong or missing:
            raise ValueError(
                f"{folder}: checkpoint does not match this run's trainable parameters "
                f"(unexpected/mis-shaped {wrong[:3]}, missing {missing[:3]}); was the adapter config changed?"
            )
        for k, v in weights.items():
            assign(params[k], v)
        state["folder"] = str(folder)
        return state
    return None
