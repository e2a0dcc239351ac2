"""Round-trip check: adapters exported by adaptune (`save_adapterhub`) load in the real AdapterHub `adapters`
and reproduce the fixture outputs. Runs in the fixture venv (see make_adapterhub_fixtures.py), after

    .venv/bin/python scripts/adapterhub_roundtrip.py export /tmp/rt      # adaptune side (Transformers 5)
    /tmp/ahvenv/bin/python scripts/adapterhub_roundtrip.py check /tmp/rt # adapters 1.3.0 side (Transformers 4.57)
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "adapterhub"
CASES = ["bert_seq_bn", "bert_double_seq_bn", "bert_par_bn", "bert_scaled_par_bn", "bert_seq_bn_ln_before",
         "bert_seq_bn_ln_after", "bert_seq_bn_leave_out", "bert_seq_bn_gelu", "roberta_seq_bn",
         "electra_double_seq_bn", "deberta_v2_seq_bn"]  # fmt: skip


def export(out: Path) -> None:
    sys.path.insert(0, str(ROOT.parents[2]))
    from adaptune.formats.adapterhub import load_adapterhub, save_adapterhub
    from tests.adapterhub_cases import build_base, load_case

    for name in CASES:
        case, _, _ = load_case(name)
        model = build_base(case, name)
        load_adapterhub(model, ROOT / name / case["layout"]["adapter_dir"])
        save_adapterhub(model, "a", out / name)
        print(f"exported {name}")


def check(out: Path) -> None:
    from adapters import AutoAdapterModel

    worst = 0.0
    for name in CASES:
        case = json.loads((ROOT / name / "case.json").read_text())
        base = (ROOT / name / case["base_model"]["dir"]).resolve()
        hf = out / f"_hf_{base.name}"
        if not hf.exists():
            hf.mkdir(parents=True)
            shutil.copy(base / "config.json", hf / "config.json")
            shutil.copy(base / "base.safetensors", hf / "model.safetensors")
        model = AutoAdapterModel.from_pretrained(hf).eval()
        model.load_adapter(str(out / name), load_as="a", use_safetensors=True)
        model.set_active_adapters("a")
        raw = json.loads((ROOT / name / "inputs.json").read_text())
        ids, mask = torch.tensor(raw["input_ids"]), torch.tensor(raw["attention_mask"])
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
        files = load_file(ROOT / name / "expected.safetensors")
        expected, base_out = files["last_hidden_state"], files["base_last_hidden_state"]
        diff = float((hidden - expected)[mask.bool()].abs().max())
        effect = float((hidden - base_out)[mask.bool()].abs().max())  # proves the adapter was active
        assert effect > 0.1, f"{name}: the exported adapter did not change the output"
        worst = max(worst, diff)
        print(f"{name}: max |delta| {diff:.2e} (adapter effect {effect:.2f})")
    print(f"worst {worst:.2e}")


if __name__ == "__main__":
    {"export": export, "check": check}[sys.argv[1]](Path(sys.argv[2]))
