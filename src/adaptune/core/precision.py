"""The precision policy: which dtype the frozen base is stored in, which dtype compute runs in, and why.

Three steps, each usable alone::

    precision = resolve_precision("auto", "cpu")    # reason: "auto: bf16 (CPU has avx512_bf16)"
    adaptune.train_adapter(model, "task")            # decide what trains first ...
    apply_precision(model, precision)                # ... then store the frozen base in bf16, trainables in fp32
    optimizer = torch.optim.AdamW(p for p in model.parameters() if p.requires_grad)   # fp32 master weights + state
    with autocast(precision, "cpu"):
        logits = model(input_ids).logits
    loss = F.cross_entropy(logits.float(), labels)  # losses and metrics in fp32: upcast outside the autocast block

Decisions (measured in docs/results/precision_probe.md):

- ``auto`` picks bf16 only where the hardware runs it natively (CPU flags ``avx512_bf16`` / ``amx_bf16``; CUDA
  ``torch.cuda.is_bf16_supported()``), fp32 elsewhere; the ``reason`` says which and why.
- ``fp16`` on CPU is refused (``ValueError``): no CPU here has native fp16 matmuls (it is emulated, slower than
  fp32) and fp16 training needs loss scaling; bf16 has fp32's range and needs none. On CUDA fp16 is allowed and
  ``Precision.needs_grad_scaler`` is True.
- An explicit ``bf16`` on a CPU without native bf16 is honoured (it runs, slowly) and the reason says so.
- Two ways to compute with a bf16 base, measured equal-or-better for the explicit one on MiniLM adapter training:
  explicit casts (no autocast: the base runs natively in bf16, ``Bottleneck``/``Fusion`` cast to their own fp32
  dtype and back, ``add_input_casts`` makes heads cast their inputs) and ``autocast`` (handles any mixed-dtype
  boundary, e.g. a fp32 norm weight before a bf16 Linear, so it is the robust fallback). Full fine-tuning uses
  fp32 weights + ``autocast``.
- Buffers are never cast: they are tiny, and some must stay fp32 (rotary ``inv_freq``).

Pure torch; no Transformers imports.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .model import DEFAULT_HEADS, head_modules

__all__ = [
    "PRECISIONS",
    "Precision",
    "PrecisionSummary",
    "add_input_casts",
    "apply_precision",
    "autocast",
    "cpu_bf16_features",
    "cuda_bf16_supported",
    "is_norm",
    "resolve_precision",
    "set_precision",
]

PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# /proc/cpuinfo flags of CPUs whose matmul kernels (oneDNN) run bf16 natively.
_CPU_BF16_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Precision:
    """A resolved precision.

    Attributes:
        name: ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        compute_dtype: the dtype matmuls run in (the autocast dtype; fp32 means no autocast).
        storage_dtype: the dtype the frozen base is stored in when adapters train.
        reason: one human-readable line for logs and reports, e.g. ``"auto: bf16 (CPU has avx512_bf16)"``.
    """

    name: str
    compute_dtype: torch.dtype
    storage_dtype: torch.dtype
    reason: str

    @property
    def is_reduced(self) -> bool:
        """True for bf16 / fp16."""
        return self.name != "fp32"

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling (``torch.amp.GradScaler``); bf16 and fp32 need none."""
        return self.name == "fp16"


@dataclass(frozen=True)
class PrecisionSummary:
    """What ``apply_precision`` did.

    Attributes:
        precision: the precision name applied.
        cast: frozen parameters now stored in the storage dtype.
        kept: frozen parameters kept in fp32 (``keep`` matched them).
        trainable: trainable parameters (all fp32).
        bytes: parameter bytes after.
        bytes_fp32: parameter bytes if everything were fp32.
    """

    precision: str
    cast: int
    kept: int
    trainable: int
    bytes: int
    bytes_fp32: int


# ---- capability detection (module-level functions so tests can monkeypatch them) --------------------------
def cpu_bf16_features() -> tuple[str, ...]:
    """The native-bf16 features of this CPU (``()`` if none): ``/proc/cpuinfo`` flags on Linux, else torch's probe."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("flags"):  # every core lists the same flags; the first line is enough
            flags = set(line.split(":", 1)[-1].split())
            return tuple(f for f in _CPU_BF16_FLAGS if f in flags)
    # No /proc (macOS, Windows): ask torch's own CPU probe (private API, so guarded).
    probes = {"avx512_bf16": "_is_avx512_bf16_supported", "amx_bf16": "_is_amx_tile_supported"}
    found = []
    for flag, probe in probes.items():
        fn: Callable[[], bool] | None = getattr(torch.cpu, probe, None)
        with contextlib.suppress(Exception):
            if fn is not None and fn():
                found.append(flag)
    return tuple(found)


def cuda_bf16_supported() -> bool:
    """True if a CUDA device is present and runs bf16 natively (Ampere or newer)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _device_type(device: str | torch.device) -> str:
    return torch.device(device).type


def resolve_precision(requested: str = "auto", device: str | torch.device = "cpu") -> Precision:
    """Turn a requested precision into a concrete one for ``device``, with the reason.

    Args:
        requested: ``"auto"``, ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        device: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``).

    Raises:
        ValueError: an unknown name, or ``fp16`` on CPU.
    """
    if requested not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {requested!r}")
    kind = _device_type(device)
    if kind == "cuda":
        native = cuda_bf16_supported()
        why = "CUDA device supports bf16" if native else "this CUDA device has no native bf16"
    elif kind == "cpu":
        features = cpu_bf16_features()
        native = bool(features)
        why = f"CPU has {', '.join(features)}" if native else "no native bf16 on this CPU"
    else:  # mps, xpu, ...: nothing measured there, so auto stays safe
        native, why = False, f"bf16 speed not measured on {kind}"
    if requested == "auto":
        name = "bf16" if native else "fp32"
        return _make(name, f"auto: {name} ({why})")
    if requested == "fp16" and kind == "cpu":
        raise ValueError(
            "fp16 on CPU is refused: it is emulated (slower than fp32) and needs loss scaling; use bf16 or auto"
        )
    if requested == "bf16" and not native:
        return _make("bf16", f"bf16 requested ({why}: emulated, likely slower than fp32)")
    return _make(requested, f"{requested} requested")


def _make(name: str, reason: str) -> Precision:
    dtype = _DTYPES[name]
    return Precision(name=name, compute_dtype=dtype, storage_dtype=dtype, reason=reason)


# ---- applying it -----------------------------------------------------------------------------------------
def is_norm(module: nn.Module) -> bool:
    """LayerNorm, RMSNorm and the models' own ``*Norm`` classes (``LlamaRMSNorm``, ``T5LayerNorm``...)."""
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or type(module).__name__.endswith("Norm")


def apply_precision(
    model: nn.Module,
    precision: Precision,
    *,
    frozen_base: bool = True,
    keep: Callable[[nn.Module], bool] | None = None,
) -> PrecisionSummary:
    """Store the frozen parameters in ``precision.storage_dtype`` and every trainable one in fp32, in place.

    Call it after ``train_adapter`` / ``train_fusion`` (it reads ``requires_grad``) and before building the
    optimizer, so the optimizer holds fp32 master weights and fp32 state. It is idempotent; call it again when
    the trainable set changes (a parameter that starts training is brought back to fp32; its lost bits are not
    restored — reload the model for an exact fp32 base). Parameters are changed through ``.data`` so ties
    (input embeddings = LM head) and references held elsewhere survive.

    Args:
        model: the model.
        precision: from ``resolve_precision``.
        frozen_base: adapter training (cast the frozen base). ``False`` is full fine-tuning: standard mixed
            precision, every parameter stays fp32 and only ``autocast`` lowers the compute.
        keep: modules whose frozen parameters stay fp32 (e.g. ``is_norm``). Default: none; the probe found no
            speed gain in keeping norms fp32, and their memory is negligible either way.

    Returns:
        A ``PrecisionSummary`` of what was cast.
    """
    kept_ids = set()
    if keep is not None:
        kept_ids = {id(p) for m in model.modules() if keep(m) for p in m.parameters(recurse=False)}
    cast = kept = trainable = nbytes = nbytes32 = 0
    seen: set[int] = set()
    for p in model.parameters():  # unique parameters: tied ones appear once
        if id(p) in seen or not p.is_floating_point():
            continue
        seen.add(id(p))
        if p.requires_grad or not frozen_base or not precision.is_reduced or id(p) in kept_ids:
            target = torch.float32
            trainable += p.requires_grad
            kept += (not p.requires_grad) and frozen_base and precision.is_reduced
        else:
            target = precision.storage_dtype
            cast += 1
        if p.dtype != target:
            p.data = p.data.to(target)
        nbytes += p.numel() * p.element_size()
        nbytes32 += p.numel() * 4
    return PrecisionSummary(precision.name, cast, kept, trainable, nbytes, nbytes32)


def set_precision(model: nn.Module, precision: str | Precision = "auto", *, frozen_base: bool = True) -> Precision:
    """Resolve ``precision`` for the model's device and apply it: the one call a user needs before training.

    Call it after ``train_adapter`` / ``train_fusion`` and before building the optimizer, then run the forward
    under ``autocast(returned_precision, device)``. ``frozen_base=False`` for full fine-tuning (fp32 weights).

    Returns:
        The resolved ``Precision`` (its ``reason`` says what ``auto`` chose and why).
    """
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    resolved = precision if isinstance(precision, Precision) else resolve_precision(precision, device)
    apply_precision(model, resolved, frozen_base=frozen_base)
    return resolved


@contextlib.contextmanager
def autocast(precision: Precision, device: str | torch.device = "cpu") -> Iterator[None]:
    """The forward's context: ``torch.autocast`` in the compute dtype, or nothing for fp32.

    Outputs come back in the compute dtype; take ``logits.float()`` before losses and metrics (and run the
    backward outside the block, as ``torch.autocast`` recommends).
    """
    if not precision.is_reduced:
        yield
        return
    with torch.autocast(_device_type(device), dtype=precision.compute_dtype):
        yield


def _cast_inputs(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    dtype = next(module.parameters()).dtype
    return tuple(a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)


def add_input_casts(model: nn.Module, enabled: bool = True, heads: Iterable[str] = DEFAULT_HEADS) -> int:
    """The explicit-cast alternative to autocast: fp32 heads cast their (bf16) inputs to fp32.

    With the base stored in bf16 and no autocast, the base computes in bf16 natively, adapters cast their input
    to their own dtype and back (``Bottleneck``), and only the task head needs a cast at its input. Covers models
    whose only boundary is base -> head (encoder classifiers); norms kept fp32 inside a decoder still need
    autocast. Returns the number of heads hooked; ``enabled=False`` removes the hooks.
    """
    for m in model.modules():
        for key, hook in list(m._forward_pre_hooks.items()):
            if hook is _cast_inputs:
                del m._forward_pre_hooks[key]
    if not enabled:
        return 0
    found = [h for h in head_modules(model, heads).values() if any(True for _ in h.parameters())]
    for head in found:
        head.register_forward_pre_hook(_cast_inputs)
    return len(found)
