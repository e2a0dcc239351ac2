"""``RunConfig``: every option of a training run, declared once. Its field metadata makes the ``train`` / ``fuse``
command-line options and the ``adaptune train`` command lines that ``compare`` / ``sweep`` run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..core.config import MethodConfig
from ..core.precision import PRECISIONS
from ..methods.bottleneck import AdapterConfig
from .distributed import STRATEGIES
from .options import on_off, option, positive_float, positive_int
from .tasks import task_names

__all__ = ["RunConfig", "RunResult"]

_T = "training"  # --help section of the loop options


@dataclass
class RunConfig:
    """Everything one training run needs (the CLI builds this from its options)."""

    data: str = field(metadata=option("built-in dataset name, CSV/TSV/JSONL file, or label/*.txt folder"))
    out: str = field(metadata=option("output folder (adapter, checkpoints, report)"))
    task: str = field(default="classification", metadata=option(choices=task_names()))
    model: str = field(default="minilm", metadata=option("built-in alias (minilm, smollm2) or a local HF folder"))
    # any registered method's config (bottleneck, LoRA, (IA)³ ...); None: full fine-tuning
    adapter: MethodConfig | None = field(default_factory=AdapterConfig.pfeiffer)
    name: str = field(default="adapter", metadata=option("adapter name", commands=("train",)))
    # extra modules that train (and are saved) with the head, e.g. bert.pooler
    train_modules: tuple[str, ...] = field(
        default=(), metadata=option("extra modules trained and saved with the head (e.g. bert.pooler)")
    )
    # saved adapters that run frozen below the new one (MAD-X: a language adapter under a task adapter)
    stack_on: tuple[str, ...] = field(
        default=(),
        metadata=option(
            "saved adapter folders that run frozen below the new adapter: trains Stack(those..., new)",
            commands=("train",),
        ),
    )
    # saved adapter folders to fuse (AdapterFusion) instead of a new adapter
    fuse_from: tuple[str, ...] = field(
        default=(), metadata=option("saved adapter folders to fuse (2 or more)", commands=("fuse",), flag="--adapters")
    )
    fusion_reg: float = field(default=0.01, metadata=option("λ of the value regulariser", commands=("fuse",)))
    text_column: str | None = field(default=None, metadata=option())
    label_column: str | None = field(default=None, metadata=option())
    target_column: str | None = field(default=None, metadata=option())
    limit: int | None = field(default=None, metadata=option("cap each split at this many examples", type=int))
    epochs: float = field(default=1.0, metadata=option(type=positive_float, group=_T))
    max_steps: int | None = field(
        default=None,
        metadata=option("stop after this many optimizer steps (overrides --epochs)", type=positive_int, group=_T),
    )
    lr: float = field(default=1e-3, metadata=option(type=positive_float, group=_T))
    weight_decay: float = field(default=0.0, metadata=option(group=_T))
    warmup_ratio: float = 0.06  # share of the steps spent warming the learning rate up
    batch_size: int = field(default=16, metadata=option(type=positive_int, group=_T))
    grad_accum: int = field(default=1, metadata=option(type=positive_int, group=_T))
    max_length: int = field(default=128, metadata=option(type=positive_int, group=_T))
    seed: int = field(default=0, metadata=option(group=_T))
    eval_every: int | None = field(default=None, metadata=option("validate every N steps", type=int, group=_T))
    eval_limit: int | None = field(default=500, metadata=option("validation examples per pass", type=int, group=_T))
    save_every: int = field(default=100, metadata=option("checkpoint every N steps", type=positive_int, group=_T))
    log_every: int = field(default=10, metadata=option(type=positive_int, group=_T))
    resume: bool = field(default=False, metadata=option("continue from the newest checkpoint in --out", group=_T))
    generate_limit: int | None = 50  # test split: generate for at most this many examples
    exec_tests: bool = field(default=False, metadata=option("code data: run generated code for pass@1", group=_T))
    strategy: str = field(
        default="ddp",
        metadata=option(
            "under torchrun / accelerate launch: replicate the model (ddp) or shard it (fsdp)",
            choices=STRATEGIES,
            group=_T,
        ),
    )
    precision: str = field(
        default="auto",
        metadata=option(
            "auto: bf16 where the hardware runs it natively (else fp32). Adapter runs store the frozen base in it; "
            "adapters, fusion and head keep fp32 weights and optimizer state; compute runs under autocast",
            choices=PRECISIONS,
            group=_T,
        ),
    )
    # False: dropout off in the frozen pretrained body (adapters and head keep theirs)
    base_dropout: bool = field(
        default=True,
        metadata=option(
            "dropout inside the frozen pretrained body; off: ~30%% faster steps on CPU (adapter/head dropout kept)",
            type=on_off,
            group=_T,
        ),
    )

    def to_dict(self) -> dict[str, Any]:
        """Plain values for ``run_config.json`` and the report (the adapter config as its dict)."""
        d = asdict(self)
        d["adapter"] = self.adapter.to_dict() if self.adapter else None
        return d


@dataclass
class RunResult:
    """What a run measured."""

    metrics: dict[str, Any]
    history: list[dict[str, float]]
    out: Path
