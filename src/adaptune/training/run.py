"""The training run behind ``adaptune train``, in three named stages: ``prepare`` (data, model + adapter,
optimizer, schedule, resume) -> ``fit`` (the loop, checkpoints) -> ``finish`` (test metrics, save, report).

The loop is plain PyTorch (AdamW, ``lr_factor``: linear warm-up then linear decay) so that a checkpoint can hold
exactly what a resume needs: trainable weights, optimizer, scheduler, RNG states and the data position. The data
order of epoch ``e`` is a permutation drawn from ``seed`` and ``e`` alone, so a resumed run sees the same batches
as an uninterrupted one. Ctrl-C and SIGTERM save a checkpoint at the start of the interrupted step before exiting
(see ``signals``).
"""

from __future__ import annotations

import math
import os
import random
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.precision import Precision, autocast
from ..util import write_json_atomic
from .build import build_model, rebuild_unsharded, save_result, set_run_precision
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import RunConfig, RunResult
from .data.datasets import Dataset, load_dataset
from .distributed import Dist, gather_trainable, load_optimizer_state, optimizer_state, reshard, wrap
from .distributed import setup as setup_distributed
from .evaluate import evaluate
from .signals import StopSignals, Terminated
from .tasks import task_named
from .tasks.base import Encoder

__all__ = ["Run", "RunConfig", "RunResult", "epoch_order", "finish", "fit", "lr_factor", "prepare", "run_training"]


@dataclass
class Run:
    """What a run carries from stage to stage."""

    cfg: RunConfig
    job: Dist
    data: Dataset
    model: torch.nn.Module  # the plain model (names unchanged; FSDP2 shards it in place)
    runner: torch.nn.Module  # what the loop calls: the model, or its DDP wrapper
    tok: Any
    fuse: Any  # the fusion being trained, if any
    summary: Any  # trainable parameter counts
    encode: Encoder
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    total: int  # optimizer steps of the whole run
    batches_per_epoch: int
    precision: Precision
    step: int = 0
    epoch: int = 0
    cursor: int = 0  # next micro-batch index within the epoch
    history: list[dict[str, float]] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return Path(self.cfg.out)

    @property
    def fsdp(self) -> bool:
        return self.cfg.strategy == "fsdp" and self.job.world > 1

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]


def run_training(cfg: RunConfig) -> RunResult:
    """Train, checkpoint, evaluate on the test split, save the adapter and write the report."""
    run = prepare(cfg)
    fit(run)
    return finish(run)


def _log(msg: str) -> None:
    if os.environ.get("RANK", "0") == "0":  # one log per job, not one per process
        print(f"adaptune: {msg}", file=sys.stderr, flush=True)


def lr_factor(step: int, total: int, warmup: int) -> float:
    """The learning-rate multiplier after ``step`` optimizer steps: linear warm-up over ``warmup`` steps, then a
    linear decay that reaches 0 at ``total``."""
    return min(1.0, (step + 1) / max(1, warmup)) * max(0.0, (total - step) / max(1, total - warmup))


def epoch_order(seed: int, epoch: int, n: int) -> list[int]:
    """The order of the ``n`` training examples in ``epoch``: from ``seed`` and ``epoch`` alone, so a resumed run
    draws the same batches."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _load_data(cfg: RunConfig) -> Dataset:
    columns = {"text_column": cfg.text_column, "label_column": cfg.label_column, "target_column": cfg.target_column}
    data = load_dataset(cfg.data, cfg.task, limit=cfg.limit, **columns)
    if data.task != cfg.task:
        raise ValueError(f"data {cfg.data!r} is a {data.task} dataset, but --task is {cfg.task}")
    _log(data.summary())
    return data


def _schedule_length(cfg: RunConfig, job: Dist, n_train: int) -> tuple[int, int]:
    """(micro-batches per epoch, optimizer steps in the run)."""
    batches_per_epoch = math.ceil(n_train / cfg.batch_size)
    if job.world > 1:
        if cfg.batch_size % job.world:
            raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by the {job.world} processes")
        batches_per_epoch = max(1, n_train // cfg.batch_size)  # full global batches only: equal shards
    total = cfg.max_steps or max(1, math.ceil(cfg.epochs * n_train / (cfg.batch_size * cfg.grad_accum)))
    return batches_per_epoch, total


def prepare(cfg: RunConfig) -> Run:
    """Stage 1: seed, data, process group, model + adapter, optimizer and schedule; resume when asked."""
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    data = _load_data(cfg)
    job = setup_distributed()
    model, tok, fuse, summary = build_model(cfg, data)
    model.to(job.device)
    _log(str(summary))
    precision = set_run_precision(cfg, model, job.device, sharded=cfg.strategy == "fsdp" and job.world > 1)
    _log(f"precision: {precision.reason}")
    batches_per_epoch, total = _schedule_length(cfg, job, len(data.train))
    runner = wrap(model, job, cfg.strategy)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_ratio * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup))
    encode = task_named(cfg.task).encoder(tok, data.labels, cfg.max_length)
    run = Run(
        cfg, job, data, model, runner, tok, fuse, summary, encode, opt, sched, total, batches_per_epoch, precision
    )
    if cfg.resume:
        _resume(run)
    return run


def _resume(run: Run) -> None:
    state = load_checkpoint(run.out, run.model)
    if state is None:
        _log(f"--resume: no checkpoint in {run.out / 'checkpoints'}; starting fresh")
        return
    load_optimizer_state(run.model, run.opt, state["optimizer"])
    run.sched.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    run.step, run.epoch, run.cursor = state["step"], state["epoch"], state["cursor"]
    run.history = list(state["history"])
    _log(f"resumed from {state['folder']} at step {run.step}")


def checkpoint(run: Run, rng: dict[str, Any] | None = None, weights: dict[str, torch.Tensor] | None = None) -> Path:
    """Save the run's state at its current position (``rng``: the RNG state of that position, default now).

    Under FSDP the gathers are collectives: every rank takes part, rank 0 writes."""
    weights = gather_trainable(run.model) if weights is None else weights
    state = {
        "optimizer": optimizer_state(run.model, run.opt, run.cfg.strategy),
        "scheduler": run.sched.state_dict(),
        "rng": rng or rng_state(),
        "step": run.step,
        "epoch": run.epoch,
        "cursor": run.cursor,
        "history": run.history,
    }
    return save_checkpoint(run.out, run.step, weights, state) if run.job.main else run.out


def _encode(run: Run, chunk: list[Any]) -> dict[str, torch.Tensor]:
    return run.encode(chunk)


def _accumulate(run: Run, perm: list[int]) -> tuple[float, list[int]]:
    """Forward + backward over the step's micro-batches; returns (mean loss over ranks, the epoch's order)."""
    cfg, job = run.cfg, run.job
    loss_sum = 0.0
    for _ in range(cfg.grad_accum):
        if run.cursor >= run.batches_per_epoch:
            run.epoch, run.cursor = run.epoch + 1, 0
            perm = epoch_order(cfg.seed, run.epoch, len(run.data.train))
        idx = perm[run.cursor * cfg.batch_size : (run.cursor + 1) * cfg.batch_size][job.rank :: job.world]
        run.cursor += 1
        batch = {k: v.to(job.device) for k, v in _encode(run, [run.data.train[i] for i in idx]).items()}
        with autocast(run.precision, job.device):  # the loss itself comes out fp32 (autocast's loss ops)
            loss = run.runner(**batch).loss.float() / cfg.grad_accum
        loss.backward()
        loss_sum += loss.item()
    return job.mean(loss_sum), perm


def _commit(run: Run, loss: float) -> None:
    """Apply the step's update and count it (never cut by a signal: see ``signals``)."""
    torch.nn.utils.clip_grad_norm_(run.params, 1.0)
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    run.step += 1
    run.history.append({"step": run.step, "train_loss": loss, "lr": run.sched.get_last_lr()[0]})


def _after_step(run: Run, loss: float, bar: Any) -> None:
    """Progress, log line, periodic validation and checkpoint."""
    cfg, step = run.cfg, run.step
    bar.update(1)
    bar.set_postfix(loss=f"{loss:.4f}")
    if step % cfg.log_every == 0 or step == run.total:
        _log(
            f"step {step}/{run.total} loss {loss:.4f} lr {run.sched.get_last_lr()[0]:.2e} "
            f"{statistics.median(run.step_times[-cfg.log_every :]):.2f} s/step"
        )
    if cfg.eval_every and step % cfg.eval_every == 0 and step < run.total and (run.job.main or run.fsdp):
        # A sharded model runs only with every rank taking part; the ranks all see the same examples.
        run.history[-1] |= _validate(run)
        if run.fsdp:
            reshard(run.model)
        run.model.train()
    if step % cfg.save_every == 0 and step < run.total:
        checkpoint(run)


def fit(run: Run) -> None:
    """Stage 2: the training loop from ``run.step`` to ``run.total``, with periodic checkpoints. On Ctrl-C /
    SIGTERM: a checkpoint at the start of the interrupted step, then the exception goes on."""
    from tqdm.auto import tqdm

    bar = tqdm(total=run.total, initial=run.step, desc="train", disable=None if run.job.main else True, unit="step")
    perm = epoch_order(run.cfg.seed, run.epoch, len(run.data.train))
    run.model.train()
    # Where the current step starts (epoch, cursor, RNG): an interrupt rolls back to here, so the resumed run
    # redoes the step.
    start = (run.epoch, run.cursor, rng_state())
    with StopSignals(run.job.any if run.job.world > 1 else None) as stop:
        try:
            while run.step < run.total:
                start = (run.epoch, run.cursor, rng_state())
                stop.raise_pending()
                t0 = time.perf_counter()
                loss, perm = _accumulate(run, perm)
                with stop.deferred():
                    _commit(run, loss)
                start = (run.epoch, run.cursor, rng_state())
                run.step_times.append(time.perf_counter() - t0)
                _after_step(run, loss, bar)
            stop.raise_pending()
        except KeyboardInterrupt as err:
            bar.close()
            run.opt.zero_grad(set_to_none=True)
            run.epoch, run.cursor = start[0], start[1]
            with stop.deferred():  # a second signal must not cut the checkpoint in half
                folder = checkpoint(run, start[2])
            how = "terminated (SIGTERM)" if isinstance(err, Terminated) else "interrupted"
            _log(f"{how}: checkpoint saved at {folder}; continue with --resume")
            raise
    bar.close()


def _evaluate(run: Run, examples: list[Any], **options: Any) -> dict[str, float]:
    """The task's metrics of the run's model on ``examples``, under the run's precision (validation and test)."""
    cfg = run.cfg
    with autocast(run.precision, run.job.device):
        return evaluate(
            cfg.task,
            run.model,
            run.tok,
            examples,
            labels=run.data.labels,
            batch_size=cfg.batch_size * 2,
            max_length=cfg.max_length,
            **options,
        )


def _validate(run: Run) -> dict[str, float]:
    cfg, data = run.cfg, run.data
    examples = data.validation[: cfg.eval_limit] if cfg.eval_limit else data.validation
    if not examples:
        return {}
    return {f"eval_{k}": v for k, v in _evaluate(run, examples, generate=False).items()}


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux: the process's peak resident memory so far.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _end_workers(run: Run) -> bool:
    """Write the last checkpoint; under several processes leave only rank 0 running (True: this process is done).
    After FSDP, rank 0 goes on with a plain model rebuilt from the gathered weights."""
    trained = gather_trainable(run.model)  # one gather serves the last checkpoint and, under FSDP, the rebuild
    checkpoint(run, weights=trained)
    if run.fsdp:
        run.job.barrier()
        run.job.close()
        if not run.job.main:
            return True
        run.model = rebuild_unsharded(run.cfg, run.data, trained).to(run.job.device)
        # the plain rebuild may store the frozen base in the low precision like a one-process run
        run.precision = set_run_precision(run.cfg, run.model, run.job.device, sharded=False)
    elif not run.job.main:  # rank 0 evaluates and writes; the others are done
        run.job.barrier()
        run.job.close()
        return True
    return False


def _test_metrics(run: Run) -> dict[str, Any]:
    _log("evaluating on the test split")
    cfg = run.cfg
    test = _evaluate(run, run.data.test, generate_limit=cfg.generate_limit, exec_tests=cfg.exec_tests)
    return {f"test_{k}": v for k, v in test.items()}


def finish(run: Run) -> RunResult:
    """Stage 3: last checkpoint, final validation, test metrics, the saved adapter, ``metrics.json`` and the
    report (rank 0; the other ranks return empty metrics)."""
    from .report import write_report

    if _end_workers(run):
        return RunResult({}, run.history, run.out)
    cfg, data, out = run.cfg, run.data, run.out
    run.history[-1] |= _validate(run)
    metrics = _test_metrics(run)
    saved_bytes = save_result(cfg, run.model, out, data.labels, run.fuse)
    if cfg.adapter is None and run.fuse is None:  # a full model folder is usable alone: eval/predict --model OUT/model
        run.tok.save_pretrained(out / "model")
    metrics |= {
        "trainable_params": run.summary.trainable,
        "total_params": run.summary.total,
        "trainable_percent": run.summary.percent,
        "saved_bytes": saved_bytes,
        "steps": run.step,
        "step_time_s": statistics.median(run.step_times) if run.step_times else None,
        "peak_rss_mb": _peak_rss_mb(),
        "precision": run.precision.name,
        "precision_reason": run.precision.reason,
        "train_examples": len(data.train),
        "test_examples": len(data.test),
    }
    write_json_atomic(out / "metrics.json", metrics)
    write_json_atomic(out / "run_config.json", cfg.to_dict())
    title = f"adaptune train: {cfg.task} on {data.name} with {cfg.model}"
    report = write_report(out / "report", title=title, config=cfg.to_dict(), metrics=metrics, history=run.history)
    _log(f"report: {report}")
    if not run.fsdp:
        run.job.barrier()
        run.job.close()
    return RunResult(metrics, run.history, out)
