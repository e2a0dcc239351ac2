"""What a saved folder is, and loading it whatever it is: the one place that tells adaptune, AdapterHub and peft
folders apart (the CLI's ``--adapter`` and the library both use it)."""

from __future__ import annotations

import json
import os
import re
from enum import Enum
from pathlib import Path
from typing import Any

from torch import nn

from .names import CONFIG_FILE, FUSION_CONFIG, HUB_FUSION_CONFIG, HUB_SETUP

__all__ = ["FolderKind", "folder_kind", "load_folder", "unique_name"]


class FolderKind(str, Enum):
    """The kinds of saved folder adaptune reads."""

    ADAPTER = "adapter"  # adaptune's save_adapter
    FUSION = "fusion"  # adaptune's save_fusion
    HUB_ADAPTER = "adapterhub adapter"  # AdapterHub's save_adapter
    HUB_SETUP = "adapterhub setup"  # AdapterHub's setup folder (Stack / Fuse of adapters)
    HUB_FUSION = "adapterhub fusion"  # AdapterHub's save_adapter_fusion
    PEFT_ADAPTER = "peft adapter"  # peft's save_pretrained (LoRA, (IA)³)


def folder_kind(folder: str | os.PathLike[str]) -> FolderKind:
    """What ``folder`` holds, from its files. A folder that is none of the known kinds counts as an adaptune
    adapter, so that loading it reports what is missing."""
    from .adapterhub import is_adapterhub_folder
    from .peft import is_peft_folder

    src = Path(folder)
    if (src / FUSION_CONFIG).is_file():
        return FolderKind.FUSION
    if (src / HUB_SETUP).is_file():
        return FolderKind.HUB_SETUP
    if (src / HUB_FUSION_CONFIG).is_file():
        return FolderKind.HUB_FUSION
    if is_adapterhub_folder(src):
        return FolderKind.HUB_ADAPTER
    if is_peft_folder(src):
        return FolderKind.PEFT_ADAPTER
    return FolderKind.ADAPTER


def load_folder(
    model: nn.Module, folder: str | os.PathLike[str], *, activate: bool = False, load_head: bool = True
) -> Any:
    """Load whatever ``folder`` is into ``model``: an adapter (under a free name, see ``unique_name``) returns its
    name; a fusion or a setup returns its composition.

    AdapterHub fusion folders hold only the fusion layer: load the adapters it fuses first. ``load_head=False``
    leaves the model's task head as it is (AdapterHub setup folders never carry one).
    """
    kind = folder_kind(folder)
    if kind in (FolderKind.FUSION, FolderKind.HUB_FUSION):
        from .fusion import load_fusion

        return load_fusion(model, folder, activate=activate, load_head=load_head)
    if kind is FolderKind.HUB_SETUP:
        from .adapterhub import load_adapterhub_setup

        return load_adapterhub_setup(model, folder, activate=activate)
    if kind is FolderKind.PEFT_ADAPTER:
        from .peft import load_peft

        return load_peft(model, folder, name=unique_name(model, folder), activate=activate, load_head=load_head)
    from .native import load_adapter

    return load_adapter(model, folder, name=unique_name(model, folder), activate=activate, load_head=load_head)


def unique_name(model: nn.Module, folder: str | os.PathLike[str]) -> str:
    """A free adapter name for a saved folder: its saved name, else the run folder's name (``runs/sst/adapter``
    -> ``sst``) made into an identifier."""
    from ..core.model import list_adapters

    try:
        meta = json.loads((Path(folder) / CONFIG_FILE).read_text(encoding="utf-8"))
        saved = meta.get("name") if isinstance(meta, dict) else None
    except (OSError, ValueError):
        saved = None  # load_adapter reports the real problem
    taken = set(list_adapters(model))
    if isinstance(saved, str) and saved not in taken and saved != "adapter":
        return saved
    p = Path(folder)
    base = re.sub(r"\W", "_", (p.parent.name if p.name == "adapter" else p.name)) or "adapter"
    base = base if base[0].isalpha() or base[0] == "_" else f"a_{base}"
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    return name
