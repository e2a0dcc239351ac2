"""Options and helpers the commands share: adapter options, data options, loading a saved adapter / fusion /
setup for eval, predict and explain."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..core.config import PLACEMENTS, MethodConfig
from ..core.contract import DEFAULT_METHOD, METHODS, Method
from ..core.precision import PRECISIONS
from ..formats.names import TASK_FILE
from ..methods.bottleneck import ACTIVATIONS, AdapterConfig
from ..training.config import RunConfig
from ..training.options import (
    add_method_options,
    add_options,
    method_options,
    positive_float,
    positive_int,
    probability,
)
from ..training.tasks import task_names

__all__ = [
    "DATA_OPTIONS",
    "PRESETS",
    "adapter_config_from_args",
    "add_adapter_options",
    "add_data_options",
    "add_setup_options",
    "examples_from_args",
    "inference_context",
    "load_adapted",
    "model_task",
]

PRESETS = ("pfeiffer", "houlsby", "parallel")
# RunConfig options that say which data to read (eval and explain take them too).
DATA_OPTIONS = ("data", "text_column", "label_column", "target_column", "limit")


def _add_method_choice(p: argparse.ArgumentParser) -> None:
    """``--method`` and, for every registered method, the options its config declares (default: unset)."""
    p.add_argument(
        "--method", choices=sorted(METHODS), default=DEFAULT_METHOD, help="adapter method (default: %(default)s)"
    )
    add_method_options(p, METHODS.values())


def add_adapter_options(p: argparse.ArgumentParser) -> None:
    """The options that describe a new adapter (train, plan)."""
    _add_method_choice(p)
    g = p.add_argument_group("adapter")
    g.add_argument("--preset", choices=PRESETS, default="pfeiffer")
    g.add_argument("--placement", choices=PLACEMENTS, help="override the preset's placement")
    g.add_argument("--layers", help="all | 0,2,4 | 2-5 | last:K | top-half | bottom-half")
    g.add_argument("--reduction-factor", type=positive_float, default=16.0)
    g.add_argument(
        "--bottleneck-size", type=positive_int, help="explicit bottleneck size (overrides --reduction-factor)"
    )
    g.add_argument("--activation", choices=ACTIVATIONS, help="override the preset's activation")
    g.add_argument("--scaling", type=float, help="override the preset's scaling")
    g.add_argument("--adapter-dropout", type=probability, default=0.0)
    g.add_argument("--target-modules", nargs="+", help="explicit module names / .suffixes / regexes")


def adapter_config_from_args(a: argparse.Namespace) -> MethodConfig:
    """The adapter config the options describe: ``--method``'s config (a bottleneck ``AdapterConfig`` by default).

    Raises:
        ValueError: a bottleneck-only option with another method, or an invalid value (names the field).
    """
    method = getattr(a, "method", DEFAULT_METHOD)
    if method != "bottleneck":
        return _method_config_from_args(a, METHODS[method])
    kwargs: dict[str, Any] = {"reduction_factor": a.reduction_factor, "dropout": a.adapter_dropout}
    for key in ("bottleneck_size", "activation", "scaling", "layers", "placement", "target_modules"):
        if getattr(a, key, None) is not None:
            kwargs[key] = getattr(a, key)
    preset = getattr(AdapterConfig, a.preset)
    return preset(**kwargs)


def _method_config_from_args(a: argparse.Namespace, method: Method) -> MethodConfig:
    # A method that adapts single projections (LoRA, (IA)³) ignores --placement; one placed like a bottleneck
    # (Compacter: --placement ffn is Compacter++) takes it.
    placed = method.config_class().projections() is None
    bottleneck_only = ("bottleneck_size", "activation", "scaling") + (() if placed else ("placement",))
    if given := [k for k in bottleneck_only if getattr(a, k, None) is not None]:
        flags = ", ".join("--" + k.replace("_", "-") for k in given)
        raise ValueError(f"{flags}: bottleneck options; --method {method.name} takes the --{method.name}-* options")
    kwargs: dict[str, Any] = {k: getattr(a, k) for k in ("layers", "target_modules") if getattr(a, k, None)}
    if placed and getattr(a, "placement", None):
        kwargs["placement"] = a.placement
    for flag, f in method_options(method).items():
        value = getattr(a, flag[2:].replace("-", "_"), None)
        if value is not None:
            kwargs[f.name] = value
    return method.config_class(**kwargs)


def add_data_options(p: argparse.ArgumentParser) -> None:
    """--data and its column options, as RunConfig declares them."""
    add_options(p, RunConfig, names=DATA_OPTIONS)


def add_split_option(p: argparse.ArgumentParser) -> None:
    """--split of eval / explain."""
    p.add_argument(
        "--split",
        choices=("train", "validation", "test", "all"),
        help="default: 'test' for a built-in dataset, 'all' rows of a file or folder",
    )


def add_setup_options(p: argparse.ArgumentParser, required: bool = False) -> None:
    """Which saved adapters to load and how to compose them (eval, predict, explain)."""
    p.add_argument(
        "--adapter",
        nargs="+",
        required=required,
        help="saved adapter or fusion folder(s); omit to use the base model (" + " / ".join(_base_tasks()) + ")",
    )
    p.add_argument("--setup", help="composition of the loaded adapters, e.g. 'Stack(lang, task)' or 'Average(a, b)'")
    p.add_argument(
        "--model",
        help="default: the model the (first) adapter was trained on; without --adapter: a fully fine-tuned model "
        "folder (`adaptune train --full-finetune` writes OUT/model) or a base model with --task",
    )
    p.add_argument(
        "--task",
        choices=_base_tasks(),
        help="task of a base --model (a folder's task.json, or a *ForSequenceClassification config, says it "
        "otherwise)",
    )
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="auto: bf16 where the hardware runs it natively (else fp32); the whole model is stored in it",
    )


def _base_tasks() -> tuple[str, ...]:
    return task_names(needs_labels=False)  # a bare base model has no trained head


def read_task(adapter_dir: Path) -> dict[str, Any]:
    """The ``task.json`` that ``adaptune train`` writes beside a saved adapter."""
    from ..util import read_json_object

    return read_json_object(adapter_dir / TASK_FILE, "written by `adaptune train`; pass --model and data options")


# Tasks a plain Hugging Face folder (no task.json) can run with a trained head, and the ``architectures`` suffix
# of its config that shows the head is there; a classifier's label names come from the config's ``id2label``.
HEAD_ARCHITECTURES = {
    "classification": "ForSequenceClassification",
    "extractive-qa": "ForQuestionAnswering",
    "token-classification": "ForTokenClassification",
}


def model_task(folder: Path, task: str | None) -> dict[str, Any]:
    """The task info (task, labels, model, max_length) of a model folder given as ``--model`` without ``--adapter``.

    In order: the folder's ``task.json`` (``adaptune train --full-finetune`` writes it beside ``config.json``);
    a Hugging Face classifier (``architectures`` ``*ForSequenceClassification``: labels from ``id2label``); a base
    model with ``task`` naming a task that needs no trained head.

    Raises:
        ValueError: ``task`` contradicts ``task.json``, or nothing says the task / labels (names the folder and
            what is missing).
    """
    from ..training.tasks import task_named
    from ..util import read_json_object

    if (folder / TASK_FILE).is_file():
        info = read_task(folder)
        if task and task != info.get("task"):
            raise ValueError(f"--task {task}: {folder / TASK_FILE} says the model was trained for {info.get('task')}")
        return {"max_length": 128, **info, "model": str(folder)}
    config = read_json_object(folder / "config.json", "expected a Hugging Face model folder")
    archs = [str(x) for x in config.get("architectures") or []]
    headed = [t for t, suffix in HEAD_ARCHITECTURES.items() if any(x.endswith(suffix) for x in archs)]
    task = task or (headed[0] if headed else None)
    if task is None:
        raise ValueError(
            f"{folder}: no {TASK_FILE} (`adaptune train --full-finetune` writes one) and config.json's architectures "
            f"{archs} name no classification head; give --task ({' or '.join(_base_tasks())}) to use it as a base "
            "model, or --adapter"
        )
    if not task_named(task).needs_labels:
        return {"task": task, "labels": None, "model": str(folder), "max_length": 256}
    if task not in headed:
        suffix = HEAD_ARCHITECTURES.get(task, "")
        raise ValueError(
            f"--task {task}: {folder} has no {TASK_FILE} and config.json's architectures {archs} name no trained "
            f"head{f' (*{suffix})' if suffix else ''}; a {task} model needs its label set (train one with "
            "`adaptune train`)"
        )
    return {"task": task, "labels": _config_labels(folder, config), "model": str(folder), "max_length": 128}


def _config_labels(folder: Path, config: dict[str, Any]) -> list[str]:
    """The label names of a Hugging Face config's ``id2label`` (JSON keys are the ids as strings), in id order."""
    id2label = config.get("id2label")
    try:
        labels = [str(id2label[str(i)]) for i in range(len(id2label))]  # type: ignore[arg-type,index]
    except (TypeError, KeyError):
        raise ValueError(f"{folder / 'config.json'}: id2label must map the ids 0..n-1 to label names") from None
    if not labels:
        raise ValueError(f"{folder / 'config.json'}: id2label is empty; a classifier needs its label names")
    return labels


def _refuse_model_folders(adapters: list[str]) -> None:
    """A full model folder given as ``--adapter`` (a common slip after ``train --full-finetune``) gets a pointer."""
    from ..formats.detect import FolderKind, folder_kind
    from ..formats.names import CONFIG_FILE

    for folder in map(Path, adapters):
        if (
            (folder / "config.json").is_file()
            and not (folder / CONFIG_FILE).is_file()
            and folder_kind(folder) is FolderKind.ADAPTER
        ):
            raise ValueError(f"--adapter {folder}: a full model folder (config.json, no {CONFIG_FILE}); use --model")


def load_adapted(a: argparse.Namespace) -> tuple[Any, Any, dict[str, Any]]:
    """Model + tokenizer with the adapters / fusion of ``a.adapter`` loaded and ``a.setup`` active, or a model
    folder alone (fully fine-tuned, a Hugging Face classifier, or a base model with ``--task``, see
    ``model_task``); plus the task info (task, labels, model, max_length)."""
    from ..core.composition import parse
    from ..core.model import set_active
    from ..formats.detect import load_folder
    from ..training.assets import resolve_model
    from ..training.tasks import task_named

    if a.adapter:
        _refuse_model_folders(a.adapter)
        info = read_task(Path(a.adapter[0]))
        path = resolve_model(a.model or info["model"])
    elif a.model:
        path = resolve_model(a.model)
        info = model_task(path, a.task)
    else:
        raise ValueError("give --adapter, or --model (a fully fine-tuned model folder, or a base model with --task)")
    model, tok = task_named(info["task"]).load_model(path, info.get("labels"))
    setups = [load_folder(model, folder, activate=False) for folder in a.adapter or []]
    if a.setup:
        set_active(model, parse(a.setup))
    elif setups:
        set_active(model, setups if len(setups) > 1 else setups[0])
    model.eval()
    info["precision"] = _inference_precision(model, a.precision)
    return model, tok, info


def _inference_precision(model: Any, requested: str) -> Any:
    """Store the whole model (adapters and head too: nothing trains) in the resolved precision; callers run the
    forward inside ``inference_context``."""
    import sys

    from ..core.precision import set_precision

    model.requires_grad_(False)
    precision = set_precision(model, requested)
    print(f"adaptune: precision: {precision.reason}", file=sys.stderr)
    return precision


def inference_context(model: Any, info: dict[str, Any]) -> Any:
    """The autocast context of the precision ``load_adapted`` chose (eval, predict, explain run inside it)."""
    from ..core.precision import autocast

    return autocast(info["precision"], next(model.parameters()).device)


def examples_from_args(a: argparse.Namespace, task: str) -> list[Any]:
    """The examples of ``--data`` / ``--split`` (a file's rows all count unless a split is asked for)."""
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
