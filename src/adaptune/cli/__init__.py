"""``adaptune`` command line: train, eval, predict, plan, compare, sweep.

Every bad input ends in one line ``adaptune: error: ...`` naming the culprit and exit status 2;
Ctrl-C during training saves a checkpoint and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..core.config import PLACEMENTS
from ..formats.names import FUSION_CONFIG, HUB_SETUP, TASK_FILE
from ..methods.bottleneck import ACTIVATIONS, AdapterConfig
from ..training.distributed import STRATEGIES
from ..version import __version__

__all__ = ["adapter_config_from_args", "build_parser", "main"]


def _checked(convert: Any, ok: Any, expected: str) -> Any:
    """An argparse ``type=`` that converts, checks ``ok(value)`` and otherwise says what was expected."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):  # NaN fails every comparison, so it is refused too
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "an integer >= 1")
_positive_float = _checked(float, lambda v: v > 0, "a number > 0")
_probability = _checked(float, lambda v: 0 <= v < 1, "a probability in [0, 1)")


def _add_adapter_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("adapter")
    g.add_argument("--preset", choices=("pfeiffer", "houlsby", "parallel"), default="pfeiffer")
    g.add_argument("--placement", choices=PLACEMENTS, help="override the preset's placement")
    g.add_argument("--layers", help="all | 0,2,4 | 2-5 | last:K | top-half | bottom-half")
    g.add_argument("--reduction-factor", type=_positive_float, default=16.0)
    g.add_argument(
        "--bottleneck-size", type=_positive_int, help="explicit bottleneck size (overrides --reduction-factor)"
    )
    g.add_argument("--activation", choices=ACTIVATIONS, help="override the preset's activation")
    g.add_argument("--scaling", type=float, help="override the preset's scaling")
    g.add_argument("--adapter-dropout", type=_probability, default=0.0)
    g.add_argument("--target-modules", nargs="+", help="explicit module names / .suffixes / regexes")


def adapter_config_from_args(a: argparse.Namespace) -> AdapterConfig:
    """The AdapterConfig the adapter options describe."""
    kwargs: dict[str, Any] = {"reduction_factor": a.reduction_factor, "dropout": a.adapter_dropout}
    for key in ("bottleneck_size", "activation", "scaling", "layers", "placement", "target_modules"):
        if getattr(a, key, None) is not None:
            kwargs[key] = getattr(a, key)
    preset = getattr(AdapterConfig, a.preset)
    return preset(**kwargs)


def _add_data_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument(
        "--data", required=required, help="built-in dataset name, CSV/TSV/JSONL file, or label/*.txt folder"
    )
    p.add_argument("--text-column")
    p.add_argument("--label-column")
    p.add_argument("--target-column")
    p.add_argument("--limit", type=int, help="cap each split at this many examples")


def _add_run_options(t: argparse.ArgumentParser) -> None:
    t.add_argument("--task", choices=("classification", "qa", "causal-lm"), default="classification")
    t.add_argument("--model", default="minilm", help="built-in alias (minilm, smollm2) or a local HF folder")
    _add_data_options(t)
    t.add_argument("--out", required=True, help="output folder (adapter, checkpoints, report)")
    t.add_argument(
        "--train-modules",
        nargs="+",
        default=[],
        help="extra modules trained and saved with the head (e.g. bert.pooler)",
    )
    g = t.add_argument_group("training")
    g.add_argument("--epochs", type=_positive_float, default=1.0)
    g.add_argument("--max-steps", type=_positive_int, help="stop after this many optimizer steps (overrides --epochs)")
    g.add_argument("--lr", type=_positive_float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--batch-size", type=_positive_int, default=16)
    g.add_argument("--grad-accum", type=_positive_int, default=1)
    g.add_argument("--max-length", type=_positive_int, default=128)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--eval-every", type=int, help="validate every N steps")
    g.add_argument("--eval-limit", type=int, default=500, help="validation examples per pass")
    g.add_argument("--save-every", type=_positive_int, default=100, help="checkpoint every N steps")
    g.add_argument("--log-every", type=_positive_int, default=10)
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    g.add_argument("--exec-tests", action="store_true", help="code data: run generated code for pass@1")
    g.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="ddp",
        help="under torchrun / accelerate launch: replicate the model (ddp) or shard it (fsdp)",
    )
    g.add_argument(
        "--base-dropout",
        choices=("on", "off"),
        default="on",
        help="dropout inside the frozen pretrained body; off: ~30%% faster steps on CPU (adapter/head dropout kept)",
    )


def _add_setup_options(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--adapter",
        nargs="+",
        required=required,
        help="saved adapter or fusion folder(s); omit to use the base model (qa / causal-lm)",
    )
    p.add_argument("--setup", help="composition of the loaded adapters, e.g. 'Stack(lang, task)' or 'Average(a, b)'")
    p.add_argument("--model", help="default: the model the (first) adapter was trained on")
    p.add_argument("--task", choices=("qa", "causal-lm"), help="task of the base model (without --adapter)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for documentation and tests)."""
    parser = argparse.ArgumentParser(prog="adaptune", description="Bottleneck adapters for Transformers models.")
    parser.add_argument("--version", action="version", version=f"adaptune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train an adapter (or fully fine-tune) and write a report")
    _add_run_options(t)
    t.add_argument("--name", default="adapter", help="adapter name")
    _add_adapter_options(t)
    t.add_argument("--full-finetune", action="store_true", help="train every weight instead of an adapter")

    f = sub.add_parser("fuse", help="train an AdapterFusion over saved adapters (they stay frozen)")
    _add_run_options(f)
    f.add_argument("--adapters", nargs="+", required=True, help="saved adapter folders to fuse (2 or more)")
    f.add_argument("--fusion-reg", type=float, default=0.01, help="λ of the value regulariser")

    e = sub.add_parser("eval", help="metrics of a saved adapter on data")
    _add_setup_options(e)
    _add_data_options(e)
    e.add_argument(
        "--split",
        choices=("train", "validation", "test", "all"),
        help="default: 'test' for a built-in dataset, 'all' rows of a file or folder",
    )
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--max-length", type=int)
    e.add_argument("--exec-tests", action="store_true", help="code data: run generated code for pass@1")
    e.add_argument("--generate-limit", type=int, default=50, help="generate for at most N examples (qa/code)")
    e.add_argument("--max-new-tokens", type=int, default=64, help="generation budget per example")
    e.add_argument("--json", action="store_true", help="print metrics as JSON")

    pr = sub.add_parser("predict", help="labels / answers / completions for texts")
    _add_setup_options(pr)
    pr.add_argument("texts", nargs="*", help="texts (or use --file; '-' reads stdin)")
    pr.add_argument("--file", help="a .txt (one text per line) or .jsonl (field 'text') file; '-' = stdin")
    pr.add_argument("--batch-size", type=int, default=16)
    pr.add_argument("--max-new-tokens", type=int, default=64)
    pr.add_argument("--jsonl", action="store_true", help="one JSON object per line")

    x = sub.add_parser("explain", help="plots of fusion attention, adapter contributions and gates on data")
    _add_setup_options(x, required=True)
    _add_data_options(x)
    x.add_argument("--split", choices=("train", "validation", "test", "all"))
    x.add_argument("--out", required=True)
    x.add_argument("--batch-size", type=int, default=32)
    x.add_argument("--max-length", type=int)

    pl = sub.add_parser("plan", help="where adapters would go and what they cost")
    pl.add_argument("--model", default="minilm")
    pl.add_argument("--task", choices=("classification", "qa", "causal-lm"))
    _add_adapter_options(pl)

    from ..training.experiments import add_compare_parser, add_sweep_parser

    add_compare_parser(sub)
    add_sweep_parser(sub)
    from ..benchmark.command import add_bench_parser

    add_bench_parser(sub)
    return parser


def _read_task(adapter_dir: Path) -> dict[str, Any]:
    path = adapter_dir / TASK_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (written by `adaptune train`; pass --model and data options)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: unreadable ({err})") from None


def _load_adapted(a: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """Model + tokenizer with the adapters / fusion of ``a.adapter`` loaded and ``a.setup`` active, or the bare
    base model without adapters."""
    from ..core.composition import parse
    from ..core.model import set_active
    from ..formats.fusion import load_fusion
    from ..formats.native import load_adapter
    from ..training.assets import resolve_model
    from ..training.run import unique_name
    from ..training.tasks import load_model

    if not a.adapter:
        if not (a.model and a.task):
            raise ValueError("without --adapter, give --model and --task (qa or causal-lm) to use the base model")
        info: dict[str, Any] = {"task": a.task, "labels": None, "model": a.model, "max_length": 256}
    else:
        info = _read_task(Path(a.adapter[0]))
    model, tok = load_model(info["task"], resolve_model(a.model or info["model"]), info.get("labels"))
    setups: list[Any] = []
    for folder in a.adapter or []:
        if (Path(folder) / FUSION_CONFIG).is_file():
            setups.append(load_fusion(model, folder, activate=False))
        elif (Path(folder) / HUB_SETUP).is_file():  # an AdapterHub setup (Stack / Fuse)
            from ..formats.adapterhub import load_adapterhub_setup

            setups.append(load_adapterhub_setup(model, folder, activate=False))
        else:
            setups.append(load_adapter(model, folder, name=unique_name(model, folder), activate=False))
    if a.setup:
        set_active(model, parse(a.setup))
    elif setups:
        set_active(model, setups if len(setups) > 1 else setups[0])
    model.eval()
    return model, tok, info


def _examples(a: argparse.Namespace, task: str) -> list[Any]:
    from ..training.data.builtin import BUILTIN_DATASETS
    from ..training.data.datasets import load_dataset, read_file

    split = a.split or ("test" if a.data in BUILTIN_DATASETS else "all")
    columns = {"text_column": a.text_column, "label_column": a.label_column, "target_column": a.target_column}
    if split == "all":  # a held-out file: every row counts, no train split needed
        examples = read_file(a.data, task, **columns).examples[: a.limit]
    else:
        examples = load_dataset(a.data, task, limit=a.limit, **columns).split(split)
    if not examples:
        raise ValueError(f"{a.data}: no examples in split {split!r}")
    return examples


def _run_config(a: argparse.Namespace, **what: Any) -> Any:
    """The RunConfig of ``train`` / ``fuse`` options, plus ``what`` to train (adapter, fusion...)."""
    from ..training.run import RunConfig

    shared = (
        "task",
        "model",
        "data",
        "out",
        "text_column",
        "label_column",
        "target_column",
        "epochs",
        "max_steps",
        "lr",
        "weight_decay",
        "batch_size",
        "grad_accum",
        "max_length",
        "seed",
        "limit",
        "eval_every",
        "eval_limit",
        "save_every",
        "log_every",
        "resume",
        "exec_tests",
        "strategy",
    )
    return RunConfig(
        **{k: getattr(a, k) for k in shared},
        train_modules=tuple(a.train_modules),
        base_dropout=a.base_dropout == "on",
        **what,
    )


def _train_and_report(cfg: Any, saved: str) -> int:
    """Run a training, print its test metrics and where the result (``OUT/<saved>``) and report are."""
    from ..training.run import run_training

    result = run_training(cfg)
    print(json.dumps({k: v for k, v in result.metrics.items() if k.startswith("test_")}))
    print(f"{saved}: {Path(cfg.out) / saved}  report: {Path(cfg.out) / 'report'}")
    return 0


def cmd_train(a: argparse.Namespace) -> int:
    cfg = _run_config(a, name=a.name, adapter=None if a.full_finetune else adapter_config_from_args(a))
    return _train_and_report(cfg, "model" if a.full_finetune else "adapter")


def cmd_eval(a: argparse.Namespace) -> int:
    from ..training.data.datasets import check_labels
    from ..training.evaluate import evaluate

    model, tok, info = _load_adapted(a)
    examples = _examples(a, info["task"])
    if info["task"] == "classification":
        check_labels(examples, info["labels"], a.data)
    metrics = evaluate(
        info["task"],
        model,
        tok,
        examples,
        labels=info.get("labels"),
        batch_size=a.batch_size,
        max_length=a.max_length or info.get("max_length", 128),
        generate_limit=a.generate_limit,
        exec_tests=a.exec_tests,
        max_new_tokens=a.max_new_tokens,
    )
    if a.json:
        print(json.dumps(metrics))
    else:
        for k, v in metrics.items():
            print(f"{k:>14}  {v:.4f}")
    return 0


def cmd_predict(a: argparse.Namespace) -> int:
    from ..training.data.datasets import read_texts
    from ..training.evaluate import predict_labels
    from ..training.tasks import LmEncoder, batches

    texts = list(a.texts)
    if a.file:
        texts += read_texts(a.file)
    if texts == ["-"]:
        texts = read_texts("-")
    if not texts:
        raise ValueError("predict: no texts (give them as arguments, with --file, or '-' for stdin)")
    model, tok, info = _load_adapted(a)
    max_length = info.get("max_length", 128)
    if info["task"] == "classification":
        for text, (label, prob) in zip(
            texts, predict_labels(model, tok, texts, info["labels"], a.batch_size, max_length), strict=True
        ):
            print(
                json.dumps({"text": text, "label": label, "prob": round(prob, 4)}, ensure_ascii=False)
                if a.jsonl
                else f"{label}\t{prob:.3f}\t{text}"
            )
        return 0
    encoder = LmEncoder(tok, info["task"], max_length)
    for chunk in batches(texts, a.batch_size):
        for text, out in zip(chunk, encoder.generate(model, chunk, a.max_new_tokens), strict=True):
            print(json.dumps({"text": text, "output": out}, ensure_ascii=False) if a.jsonl else f"{text}\n=> {out}\n")
    return 0


def cmd_fuse(a: argparse.Namespace) -> int:
    if len(a.adapters) < 2:
        raise ValueError("fuse: give at least two --adapters folders")
    cfg = _run_config(a, adapter=None, fuse_from=tuple(a.adapters), fusion_reg=a.fusion_reg)
    return _train_and_report(cfg, "fusion")


def cmd_explain(a: argparse.Namespace) -> int:
    from ..core.composition import Fuse
    from ..core.model import active_setup
    from ..training.explain import explain

    model, tok, info = _load_adapted(a)
    examples = _examples(a, info["task"])
    setup = active_setup(model)
    fused = list(setup.children) if isinstance(setup, Fuse) else []
    report = explain(
        model,
        tok,
        examples,
        a.out,
        fused=fused,
        batch_size=a.batch_size,
        max_length=a.max_length or info.get("max_length", 128),
    )
    print(f"report: {report}")
    return 0


def cmd_plan(a: argparse.Namespace) -> int:
    from transformers import AutoConfig, AutoModel

    from ..core.model import plan
    from ..training.assets import resolve_model

    path = resolve_model(a.model)
    # Empty weights are enough to plan: build on the meta device, no memory, no loading time.
    import torch

    with torch.device("meta"):
        model = AutoModel.from_config(AutoConfig.from_pretrained(path))
    print(plan(model, adapter_config_from_args(a)).table())
    return 0


COMMANDS = {
    "train": cmd_train,
    "fuse": cmd_fuse,
    "eval": cmd_eval,
    "predict": cmd_predict,
    "explain": cmd_explain,
    "plan": cmd_plan,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``adaptune`` command."""
    from ..training.data.datasets import DataError

    args = build_parser().parse_args(argv)
    # Transformers' load reports (e.g. "classifier.weight MISSING": expected for a new head) and its weight-loading
    # bars drown our own progress lines; keep its errors only.
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        if args.command in COMMANDS:
            return COMMANDS[args.command](args)
        from ..benchmark.command import run_bench
        from ..training.experiments import run_compare, run_sweep

        return {"compare": run_compare, "sweep": run_sweep, "bench": run_bench}[args.command](args)
    except KeyboardInterrupt:
        print("adaptune: interrupted", file=sys.stderr)
        return 130
    except (DataError, ValueError, FileNotFoundError, KeyError, OSError) as err:
        if os.environ.get("ADAPTUNE_DEBUG"):  # the full traceback, for bug reports
            raise
        msg = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"adaptune: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
