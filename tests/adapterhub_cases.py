"""Helpers to rebuild the AdapterHub fixture cases (tests/fixtures/adapterhub) on Transformers 5."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).parent / "fixtures" / "adapterhub"


def case_names() -> list[str]:
    return sorted(p.name for p in ROOT.iterdir() if (p / "case.json").is_file())


def build_base(case: dict, name: str) -> torch.nn.Module:
    """The base model the case was made on: a tiny random model from its saved weights, or the real MiniLM."""
    from transformers import AutoConfig, AutoModel

    base = case["base_model"]
    if base["kind"] != "tiny":
        from .helpers import minilm_dir

        path = minilm_dir()
        if path is None:
            import pytest

            pytest.skip("MiniLM not installed")
        return AutoModel.from_pretrained(path).eval()
    folder = (ROOT / name / base["dir"]).resolve()
    model = AutoModel.from_config(AutoConfig.from_pretrained(folder))
    model.load_state_dict(load_file(folder / "base.safetensors"), strict=True)
    return model.eval()


def load_case(name: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    folder = ROOT / name
    case = json.loads((folder / "case.json").read_text())
    raw = json.loads((folder / "inputs.json").read_text())
    inputs = {k: torch.tensor(v) for k, v in raw.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    return case, inputs, load_file(folder / "expected.safetensors")
