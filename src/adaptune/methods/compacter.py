"""Compacter and Compacter++ (Karimi Mahabadi et al. 2021, https://arxiv.org/abs/2106.04647): a bottleneck adapter
whose projections are parameterised hypercomplex multiplication (PHM) layers.

A PHM layer ``d -> k`` computes ``y = x H + b`` with ``H = Σ_{i=1..n} A_i ⊗ B_i`` (d, k)::

    A_i (n, n)          "slow" rule matrices: one (n, n, n) tensor shared by every PHM layer of one adapter
    B_i (d/n, k/n)      "fast" weights, low rank: B_i = s_i t_iᵀ, s_i (d/n, r), t_i (r, k/n)

``Compacter`` at one place (the bottleneck layout of ``methods.bottleneck``)::

    h ──┬───────────────────────────────────────────┐
        └─ down PHM (d→m) ─ act ─ up PHM (m→d) ─ ×s ─(+)─> h'

Compacter puts it after the attention and the FFN sublayers (Houlsby placement, ``placement="both"``);
Compacter++ after the FFN only (``CompacterConfig.plus_plus()``). Names and shapes follow AdapterHub's
``PHMLayer`` (``W_left`` (n, d/n, r), ``W_right`` (n, r, k/n), ``W`` (n, d/n, k/n) unfactorised, ``b``), so its
folders map key by key. Identity at init: the up-projection's right factor ``t`` (``up.W_right``, or the whole
``up.W`` unfactorised) and its bias start at zero, so a new adapter's delta is exactly zero.

Sharing: with ``shared_phm_rule`` the first module of an adapter owns ``phm_rule``; ``share`` hands the others a
reference that is not a registered parameter, so ``state_dict`` and saved files hold one copy, optimisers see
one tensor, and deleting the adapter drops it with its modules. Pure torch: no Transformers imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..core.config import MethodConfig, Placement
from ..core.contract import AdapterModule, Method
from .bottleneck import ACTIVATIONS, make_activation

if TYPE_CHECKING:
    from ..core.placement import Target

__all__ = ["METHOD", "Compacter", "CompacterConfig", "PHMLinear", "phm_weight"]


@dataclass(frozen=True)
class CompacterConfig(MethodConfig):
    """Compacter: ``h' = h + s · up(act(down(h)))`` with PHM projections; ``placement`` as for bottlenecks.

    Attributes:
        reduction_factor: bottleneck size m = width // reduction_factor, rounded down to a multiple of ``phm_dim``.
        phm_dim: n, the number of Kronecker terms; the width and m must be multiples of it.
        phm_rank: r, the rank of each fast weight ``B_i`` (with ``factorized_phm_W``).
        shared_phm_rule: one rule tensor ``A`` (n, n, n) for every PHM layer of the adapter (the paper), else one
            per PHM layer.
        factorized_phm_W: ``B_i = s_i t_iᵀ`` of rank ``phm_rank`` (Compacter), else full ``B_i`` (PHM-Adapter).
        phm_bias: a bias on each PHM layer.
        phm_init_range: standard deviation of the rule matrices' normal init (AdapterHub's default).
        activation: one of ``methods.bottleneck.ACTIVATIONS``.
        scaling: the factor ``s`` on the branch.
    """

    method: ClassVar[str] = "compacter"

    placement: Placement = "both"  # Houlsby placement; Compacter++ is "ffn"
    reduction_factor: float = field(default=32, metadata={"help": "bottleneck size = width // reduction_factor"})
    phm_dim: int = field(default=4, metadata={"help": "n, the number of Kronecker products in each PHM weight"})
    phm_rank: int = field(default=1, metadata={"help": "rank of each fast weight B_i"})
    shared_phm_rule: bool = field(default=True, metadata={"help": "share the rule matrices A_i across layers"})
    factorized_phm_W: bool = field(default=True, metadata={"help": "low-rank fast weights B_i = s_i t_i^T"})
    phm_bias: bool = field(default=True, metadata={"help": "a bias on each PHM layer"})
    phm_init_range: float = 1e-4
    activation: str = field(default="gelu", metadata={"help": "bottleneck activation", "choices": ACTIVATIONS})
    scaling: float = 1.0

    def _validate(self) -> None:
        super()._validate()
        for name in ("phm_dim", "phm_rank"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise self._bad(name, "an integer >= 1")
        for name in ("shared_phm_rule", "factorized_phm_W", "phm_bias"):
            if not isinstance(getattr(self, name), bool):
                raise self._bad(name, "true or false")
        if not isinstance(self.reduction_factor, (int, float)) or not self.reduction_factor > 0:
            raise self._bad("reduction_factor", "a number > 0")
        if not self.phm_init_range > 0:
            raise self._bad("phm_init_range", "a number > 0")
        if self.activation not in ACTIVATIONS:
            raise self._bad("activation", f"one of {ACTIVATIONS}")

    @classmethod
    def plus_plus(cls, **kwargs: Any) -> CompacterConfig:
        """Compacter++: one adapter after the FFN sublayer only."""
        kwargs.setdefault("placement", "ffn")
        return cls(**kwargs)

    def hidden_size_for(self, width: int) -> int:
        """The bottleneck size m for an adapter reading ``width`` features (a multiple of ``phm_dim``)."""
        size = int(width // self.reduction_factor) // self.phm_dim * self.phm_dim
        return max(self.phm_dim, size)


def phm_weight(rule: torch.Tensor, fast: torch.Tensor) -> torch.Tensor:
    """``H = Σ_i rule[i] ⊗ fast[i]``: rule (n, n, n), fast (n, p, q) -> (n·p, n·q)."""
    n, p, q = fast.shape
    # H[a·p + b, c·q + e] = Σ_i rule[i, a, c] · fast[i, b, e]
    return torch.einsum("iac,ibe->abce", rule, fast).reshape(n * p, n * q)


class PHMLinear(nn.Module):
    """A PHM layer ``y = x H + b`` (x: (..., d) -> (..., k)); the rule tensor is passed to ``forward``."""

    def __init__(self, in_width: int, out_width: int, config: CompacterConfig, zero: bool = False) -> None:
        super().__init__()
        n, r = config.phm_dim, config.phm_rank
        self.in_width, self.out_width, self.factorized = in_width, out_width, config.factorized_phm_W
        p, q = in_width // n, out_width // n
        if self.factorized:
            self.W_left = nn.Parameter(torch.empty(n, p, r))  # s_i
            self.W_right = nn.Parameter(torch.empty(n, r, q))  # t_iᵀ
        else:
            self.W = nn.Parameter(torch.empty(n, p, q))
        self.b = nn.Parameter(torch.zeros(out_width)) if config.phm_bias else None
        with torch.no_grad():
            for t in self.factors():
                for i in range(n):
                    nn.init.xavier_uniform_(t[i])  # as AdapterHub's glorot-uniform, one slice per term
            if zero:  # the right factor only: the left one still carries gradient to it
                self.factors()[-1].zero_()

    def factors(self) -> list[nn.Parameter]:
        """The fast-weight tensors: ``[W_left, W_right]`` or ``[W]``."""
        return [self.W_left, self.W_right] if self.factorized else [self.W]

    def fast_weight(self) -> torch.Tensor:
        """``B`` (n, d/n, k/n): ``W_left @ W_right`` or ``W``."""
        return torch.bmm(self.W_left, self.W_right) if self.factorized else self.W

    def forward(self, x: torch.Tensor, rule: torch.Tensor) -> torch.Tensor:
        y = x @ phm_weight(rule.to(x.dtype), self.fast_weight().to(x.dtype))  # (..., k)
        return y if self.b is None else y + self.b.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_width}->{self.out_width}, factorized={self.factorized}"


class Compacter(AdapterModule):
    """The Compacter adapter at one place: PHM down (d→m), activation, PHM up (m→d'), scaled."""

    method = "compacter"

    def __init__(self, target: Target, config: CompacterConfig) -> None:
        super().__init__()
        self.config = config
        self.mode = target.mode
        self.in_width, self.out_width = target.in_width, target.out_width
        self.size = config.hidden_size_for(target.in_width)
        n = config.phm_dim
        for what, width in (("input width", self.in_width), ("output width", self.out_width)):
            if width % n:
                raise ValueError(
                    f"CompacterConfig.phm_dim={n}: the {what} {width} at {target.module} is not a multiple of it"
                )
        self.down = PHMLinear(self.in_width, self.size, config)
        self.act = make_activation(config.activation)
        self.up = PHMLinear(self.size, self.out_width, config, zero=True)
        self.phm_rule: nn.Parameter | None = nn.Parameter(torch.empty(n, n, n))
        nn.init.normal_(self.phm_rule, std=config.phm_init_range)
        # Set by ``share`` on every module but the owner: a tuple, so the owner is not registered as a child here.
        self._rule_owner: tuple[Compacter, ...] = ()

    def rule(self) -> torch.Tensor:
        """The rule matrices ``A`` (n, n, n): this module's own, or the adapter's shared ones."""
        return self._rule_owner[0].rule() if self._rule_owner else self.phm_rule  # type: ignore[return-value]

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, delta_only: bool = False) -> torch.Tensor:
        """``residual + s·up(act(down(x)))`` (residual defaults to ``x``) in the residual's dtype."""
        base = x if residual is None else residual
        dtype = self.up.factors()[0].dtype
        z = x if torch.is_autocast_enabled(x.device.type) else x.to(dtype)
        rule = self.rule()
        delta = self.up(self.act(self.down(z, rule)), rule) * self.config.scaling  # (..., m) -> (..., d')
        delta = delta.to(base.dtype)
        return delta if delta_only else base + delta

    def extra_repr(self) -> str:
        owner = "shared" if self._rule_owner else "own"
        return f"{self.in_width}->{self.size}->{self.out_width}, n={self.config.phm_dim}, rule={owner}"


def build(target: Target, config: CompacterConfig) -> Compacter:
    """The Compacter adapter ``config`` puts at ``target``."""
    return Compacter(target, config)


def share(modules: list[AdapterModule]) -> None:
    """With ``shared_phm_rule``: the first module keeps its rule matrices, the others drop theirs and read it."""
    owner = modules[0]
    assert isinstance(owner, Compacter)
    if not owner.config.shared_phm_rule:
        return
    for module in modules[1:]:
        assert isinstance(module, Compacter)
        del module.phm_rule  # unregisters the parameter: one copy in state_dict, saved files and optimisers
        module.phm_rule = None
        module._rule_owner = (owner,)


METHOD = Method("compacter", CompacterConfig, build, modes=("output", "parallel", "post_ln"), share=share)
