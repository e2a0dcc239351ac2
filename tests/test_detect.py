"""formats.detect: what a saved folder is (from its files), and free adapter names for loaded folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from torch import nn

from adaptune.formats.detect import FolderKind, folder_kind, unique_name
from adaptune.formats.names import CONFIG_FILE, FUSION_CONFIG, HUB_CONFIG, HUB_FUSION_CONFIG, HUB_SETUP


def folder(root: Path, name: str, files: dict[str, object]) -> Path:
    out = root / name
    out.mkdir(parents=True)
    for file, content in files.items():
        (out / file).write_text(json.dumps(content), encoding="utf-8")
    return out


@pytest.mark.parametrize(
    ("files", "kind"),
    [
        ({CONFIG_FILE: {"format": "adaptune", "name": "a"}}, FolderKind.ADAPTER),
        ({FUSION_CONFIG: {"adapters": ["a", "b"]}}, FolderKind.FUSION),
        ({HUB_CONFIG: {"config": {"reduction_factor": 16}, "name": "a"}}, FolderKind.HUB_ADAPTER),
        ({HUB_SETUP: {"adapter_setup": "a"}}, FolderKind.HUB_SETUP),
        ({HUB_FUSION_CONFIG: {"config": {}}}, FolderKind.HUB_FUSION),
        ({}, FolderKind.ADAPTER),  # nothing known: loading it as an adapter says what is missing
    ],
)
def test_folder_kind(tmp_path: Path, files: dict[str, object], kind: FolderKind) -> None:
    assert folder_kind(folder(tmp_path, "f", files)) is kind


def test_unique_name_prefers_the_saved_name_then_the_run_folder(tmp_path: Path, monkeypatch) -> None:
    import adaptune.core.model as core_model

    taken: list[str] = ["sst"]
    monkeypatch.setattr(core_model, "list_adapters", lambda model: taken)
    model = nn.Linear(1, 1)
    assert unique_name(model, folder(tmp_path, "x/adapter", {CONFIG_FILE: {"name": "lang"}})) == "lang"
    # the default name "adapter" says nothing: the run folder names it; a taken name gets a number
    assert unique_name(model, folder(tmp_path, "sst/adapter", {CONFIG_FILE: {"name": "adapter"}})) == "sst_2"
    assert unique_name(model, folder(tmp_path, "2024-run", {})) == "a_2024_run"


@pytest.mark.parametrize(
    ("files", "loader"),
    [
        ({FUSION_CONFIG: {}}, "adaptune.formats.fusion.load_fusion"),
        ({HUB_FUSION_CONFIG: {}}, "adaptune.formats.fusion.load_fusion"),  # after its adapters were loaded
        ({HUB_SETUP: {}}, "adaptune.formats.adapterhub.load_adapterhub_setup"),
        ({CONFIG_FILE: {"name": "lang"}}, "adaptune.formats.native.load_adapter"),
    ],
)
def test_load_folder_routes_each_kind(tmp_path: Path, monkeypatch, files: dict[str, object], loader: str) -> None:
    import adaptune.core.model as core_model
    from adaptune.formats.detect import load_folder

    monkeypatch.setattr(core_model, "list_adapters", lambda model: [])
    calls: list[tuple[object, ...]] = []
    monkeypatch.setattr(loader, lambda *a, **kw: calls.append((*a[1:], kw)) or "loaded")
    src = folder(tmp_path, "f", files)
    assert load_folder(nn.Linear(1, 1), src) == "loaded"
    assert calls and calls[0][0] == src and calls[0][-1]["activate"] is False
    if loader.endswith("load_adapter"):
        assert calls[0][-1]["name"] == "lang"
