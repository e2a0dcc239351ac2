"""The training run behind ``adaptune train``: data → model + adapter → loop → checkpoints → report.

The loop is plain PyTorch (AdamW, linear warm-up/decay) so that a checkpoint can hold exactly what a
resume needs: trainable weights, optimizer, scheduler, RNG states and the data position. The data order
of epoch ``e`` is a permutation drawn from ``seed`` and ``e`` alone, so a resumed run sees the same
batches as an uninterrupted one. Ctrl-C saves a checkpoint before exiting.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import resource
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.base_dropout import set_base_dropout
from ..core.model import DEFAULT_HEADS, add_adapter, head_modules, train_adapter, trainable_summary
from ..formats.names import CONFIG_FILE, TASK_FILE
from ..formats.native import load_adapter, save_adapter
from ..methods.bottleneck import AdapterConfig
from ..util import write_json_atomic
from .assets import resolve_model
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .data.datasets import Dataset, load_dataset
from .distributed import gather_trainable, load_optimizer_state, optimizer_state, reshard, wrap
from .distributed import setup as setup_distributed
from .evaluate import evaluate
from .tasks import LmEncoder, encode_classification, load_model

__all__ = ["RunConfig", "RunResult", "run_training"]


@dataclass
class RunConfig:
    """Everything one training run needs (the CLI builds this from its options)."""

    task: str
    model: str  # a built-in alias or a local Hugging Face folder
    data: str  # a built-in dataset name, a file or a folder
    out: str
    adapter: AdapterConfig | None = field(default_factory=AdapterConfig.pfeiffer)  # None: full fine-tuning
    name: str = "adapter"
    train_modules: tuple[str, ...] = ()  # extra modules that train (and are saved) with the head, e.g. bert.pooler
    fuse_from: tuple[str, ...] = ()  # saved adapter folders to fuse (AdapterFusion) instead of a new adapter
    fusion_reg: float = 0.01  # λ of the fusion value regulariser
    text_column: str | None = None
    label_column: str | None = None
    target_column: str | None = None
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.06
    batch_size: int = 16
    grad_accum: int = 1
    max_length: int = 128
    seed: int = 0
    limit: int | None = None  # cap each split (quick runs)
    eval_every: int | None = None  # steps between validation passes (None: at the end only)
    eval_limit: int | None = 500  # validation examples per pass
    save_every: int = 100  # steps between checkpoints
    log_every: int = 10
    resume: bool = False
    generate_limit: int | None = 50
    exec_tests: bool = False
    strategy: str = "ddp"  # ddp | fsdp, when launched on several processes
    base_dropout: bool = True  # False: dropout off in the frozen pretrained body (adapters and head keep theirs)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["adapter"] = self.adapter.to_dict() if self.adapter else None
        return d


@dataclass
class RunResult:
    """What a run measured."""

    metrics: dict[str, Any]
    history: list[dict[str, float]]
    out: Path


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux: the process's peak resident memory so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _log(msg: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # one log per job, not one per process
        print(f"adaptune: {msg}", file=sys.stderr, flush=True)


def _encode(cfg: RunConfig, data: Dataset, tok: Any, chunk: list[Any]) -> dict[str, torch.Tensor]:
    if cfg.task == "classification":
        assert data.labels is not None
        return encode_classification(tok, chunk, {n: i for i, n in enumerate(data.labels)}, cfg.max_length)
    return LmEncoder(tok, cfg.task, cfg.max_length).encode(chunk)


def run_training(cfg: RunConfig) -> RunResult:
    """Train, checkpoint, evaluate on the test split, save the adapter and write the report."""
    from .report import write_report

    out = Path(cfg.out)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    data = load_dataset(
        cfg.data,
        cfg.task,
        text_column=cfg.text_column,
        label_column=cfg.label_column,
        target_column=cfg.target_column,
        limit=cfg.limit,
    )
    if data.task != cfg.task:
        raise ValueError(f"data {cfg.data!r} is a {data.task} dataset, but --task is {cfg.task}")
    _log(data.summary())
    job = setup_distributed()
    device = job.device
    model, tok, fuse, summary = _build(cfg, data)
    model.to(device)
    _log(str(summary))

    train = data.train
    per_step = cfg.batch_size * cfg.grad_accum
    batches_per_epoch = math.ceil(len(train) / cfg.batch_size)
    if job.world > 1:
        if cfg.batch_size % job.world:
            raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by the {job.world} processes")
        batches_per_epoch = max(1, len(train) // cfg.batch_size)  # full global batches only: equal shards
    runner = wrap(model, job, cfg.strategy)
    fsdp = cfg.strategy == "fsdp" and job.world > 1
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * len(train) / per_step))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, warmup)) * max(0.0, (total - s) / max(1, total - warmup))
    )
    step, epoch, cursor = 0, 0, 0  # cursor: next micro-batch index within the epoch
    history: list[dict[str, float]] = []
    if cfg.resume:
        state = load_checkpoint(out, model)
        if state is None:
            _log(f"--resume: no checkpoint in {out / 'checkpoints'}; starting fresh")
        else:
            load_optimizer_state(model, opt, state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            step, epoch, cursor = state["step"], state["epoch"], state["cursor"]
            history = list(state["history"])
            _log(f"resumed from {state['folder']} at step {step}")

    def checkpoint(rng: dict[str, Any] | None = None, weights: dict[str, torch.Tensor] | None = None) -> Path:
        # Under FSDP the gathers are collectives: every rank takes part, rank 0 writes.
        weights = gather_trainable(model) if weights is None else weights
        optim = optimizer_state(model, opt, cfg.strategy)
        state = {
            "optimizer": optim,
            "scheduler": sched.state_dict(),
            "rng": rng or rng_state(),
            "step": step,
            "epoch": epoch,
            "cursor": cursor,
            "history": history,
        }
        return save_checkpoint(out, step, weights, state) if job.main else out

    def order(e: int) -> list[int]:
        g = torch.Generator().manual_seed(cfg.seed * 100_003 + e)
        return torch.randperm(len(train), generator=g).tolist()

    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=step, desc="train", disable=None if job.main else True, unit="step")
    step_times: list[float] = []
    perm = order(epoch)
    model.train()
    try:
        while step < total:
            # Where this step starts: an interrupt rolls back to here, so the resumed run redoes the step.
            start_epoch, start_cursor, start_rng = epoch, cursor, rng_state()
            t0 = time.perf_counter()
            loss_sum = 0.0
            for _ in range(cfg.grad_accum):
                if cursor >= batches_per_epoch:
                    epoch, cursor = epoch + 1, 0
                    perm = order(epoch)
                idx = perm[cursor * cfg.batch_size : (cursor + 1) * cfg.batch_size][job.rank :: job.world]
                cursor += 1
                batch = {k: v.to(device) for k, v in _encode(cfg, data, tok, [train[i] for i in idx]).items()}
                loss = runner(**batch).loss / cfg.grad_accum
                loss.backward()
                loss_sum += loss.item()
            loss_sum = job.mean(loss_sum)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            step_times.append(time.perf_counter() - t0)
            history.append({"step": step, "train_loss": loss_sum, "lr": sched.get_last_lr()[0]})
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum:.4f}")
            if step % cfg.log_every == 0 or step == total:
                _log(
                    f"step {step}/{total} loss {loss_sum:.4f} lr {sched.get_last_lr()[0]:.2e} "
                    f"{statistics.median(step_times[-cfg.log_every :]):.2f} s/step"
                )
            if cfg.eval_every and step % cfg.eval_every == 0 and step < total and (job.main or fsdp):
                # A sharded model runs only with every rank taking part; the ranks all see the same examples.
                history[-1] |= _validate(cfg, data, model, tok)
                if fsdp:
                    reshard(model)
                model.train()
            if step % cfg.save_every == 0 and step < total:
                checkpoint()
    except KeyboardInterrupt:
        bar.close()
        opt.zero_grad(set_to_none=True)
        epoch, cursor = start_epoch, start_cursor
        folder = checkpoint(start_rng)
        _log(f"interrupted: checkpoint saved at {folder}; continue with --resume")
        raise
    bar.close()
    trained = gather_trainable(model)  # one gather serves the last checkpoint and, under FSDP, the rebuild
    checkpoint(weights=trained)
    if fsdp:  # rank 0 carries on alone with a plain model
        job.barrier()
        job.close()
        if not job.main:
            return RunResult({}, history, out)
        model = _unsharded(cfg, data, trained).to(device)
    elif not job.main:  # rank 0 evaluates and writes; the others are done
        job.barrier()
        job.close()
        return RunResult({}, history, out)

    history[-1] |= _validate(cfg, data, model, tok)
    _log("evaluating on the test split")
    test = evaluate(
        cfg.task,
        model,
        tok,
        data.test,
        labels=data.labels,
        batch_size=cfg.batch_size * 2,
        max_length=cfg.max_length,
        generate_limit=cfg.generate_limit,
        exec_tests=cfg.exec_tests,
    )
    saved_bytes = _save(cfg, model, out, data.labels, fuse)
    metrics: dict[str, Any] = {f"test_{k}": v for k, v in test.items()}
    metrics |= {
        "trainable_params": summary.trainable,
        "total_params": summary.total,
        "trainable_percent": summary.percent,
        "saved_bytes": saved_bytes,
        "steps": step,
        "step_time_s": statistics.median(step_times) if step_times else None,
        "peak_rss_mb": _peak_rss_mb(),
        "train_examples": len(data.train),
        "test_examples": len(data.test),
    }
    write_json_atomic(out / "metrics.json", metrics)
    write_json_atomic(out / "run_config.json", cfg.to_dict())
    report = write_report(
        out / "report",
        title=f"adaptune train: {cfg.task} on {data.name} with {cfg.model}",
        config=cfg.to_dict(),
        metrics=metrics,
        history=history,
    )
    _log(f"report: {report}")
    if not fsdp:
        job.barrier()
        job.close()
    return RunResult(metrics, history, out)


def _build(cfg: RunConfig, data: Dataset) -> tuple[torch.nn.Module, Any, Any, Any]:
    """The model for this run with its adapter / fusion added and set to train: (model, tokenizer, fusion, summary)."""
    model, tok = load_model(cfg.task, resolve_model(cfg.model), data.labels)
    missing = [m for m in cfg.train_modules if m not in head_modules(model, cfg.train_modules)]
    if missing:
        raise ValueError(f"--train-modules: {type(model).__name__} has no module {missing[0]!r}")
    heads = (*DEFAULT_HEADS, *cfg.train_modules)
    fuse = None
    if cfg.fuse_from:
        from ..methods.fusion import add_fusion, train_fusion

        names = [
            load_adapter(model, d, name=unique_name(model, d), activate=False, load_head=False) for d in cfg.fuse_from
        ]
        fuse = add_fusion(model, names)
        summary = train_fusion(model, fuse, heads=heads, regularization=cfg.fusion_reg)
    elif cfg.adapter is not None:
        add_adapter(model, cfg.name, cfg.adapter)
        summary = train_adapter(model, cfg.name, heads=heads)
    else:
        if not cfg.base_dropout:
            raise ValueError("--base-dropout off: full fine-tuning has no frozen base; give an adapter")
        for p in model.parameters():
            p.requires_grad_(True)
        summary = trainable_summary(model)
    if not cfg.base_dropout:
        set_base_dropout(model, False, heads)
    return model, tok, fuse, summary


def _unsharded(cfg: RunConfig, data: Dataset, trained: dict[str, torch.Tensor]) -> torch.nn.Module:
    """After an FSDP run, rank 0 rebuilds a plain (unsharded) model from the base and the gathered trainable
    tensors, to evaluate and save without the other processes."""
    model, _, _, _ = _build(cfg, data)
    _, unexpected = model.load_state_dict(trained, strict=False)
    lost = [n for n, p in model.named_parameters() if p.requires_grad and n not in trained]
    if unexpected or lost:  # the rebuild must be the trained model, tensor for tensor
        raise RuntimeError(f"rebuilding the FSDP-trained model: unexpected {unexpected[:3]}, not trained {lost[:3]}")
    return model


def _validate(cfg: RunConfig, data: Dataset, model: torch.nn.Module, tok: Any) -> dict[str, float]:
    examples = data.validation[: cfg.eval_limit] if cfg.eval_limit else data.validation
    if not examples:
        return {}
    m = evaluate(
        cfg.task,
        model,
        tok,
        examples,
        labels=data.labels,
        batch_size=cfg.batch_size * 2,
        max_length=cfg.max_length,
        generate=False,
    )
    return {f"eval_{k}": v for k, v in m.items()}


def unique_name(model: torch.nn.Module, folder: str) -> str:
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


def _save(cfg: RunConfig, model: torch.nn.Module, out: Path, labels: list[str] | None, fuse: Any = None) -> int:
    """Save the adapter / fusion (+ head) or, for full fine-tuning, the whole model; return bytes on disk."""
    if fuse is not None:
        from ..formats.fusion import save_fusion

        folder = save_fusion(model, fuse, out / "fusion", heads=(*DEFAULT_HEADS, *cfg.train_modules))
    elif cfg.adapter is not None:
        folder = save_adapter(model, cfg.name, out / "adapter", heads=(*DEFAULT_HEADS, *cfg.train_modules))
    else:
        folder = out / "model"
        model.save_pretrained(folder)
    # What eval/predict need to rebuild the model around the adapter.
    info = {"task": cfg.task, "labels": labels, "model": cfg.model, "max_length": cfg.max_length}
    write_json_atomic(folder / TASK_FILE, info)
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
