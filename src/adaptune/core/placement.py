"""Where adapters go: find transformer blocks and the sublayer outputs to adapt, from the model's structure.

Search order (the README's "How placement works" says the same for users):

1. ``MethodConfig.target_modules`` — explicit patterns from the user (exact name, ``.suffix`` or regex);
2. the structural rule — blocks are the items of the outermost ``nn.ModuleList`` whose items share one class
   and contain an attention child; in a block the attention output is the last linear writing the block
   width inside the first child named like ``attn|attention``; the FFN output is the last such linear
   elsewhere; fused MoE experts (3-D ``nn.Parameter``) make the FFN target the sublayer module itself.
   "Linear" means ``nn.Linear``, Transformers' ``Conv1D`` (GPT-2) or a 1x1 ``nn.Conv1d`` (SqueezeBERT);
3. ``ARCH_TABLE`` — a small table keyed by ``config.model_type`` that overrides the rule's answer for the
   few layouts it gets wrong.

Methods that adapt single linear projections (LoRA, (IA)³) ask for projection kinds instead of a placement
(``MethodConfig.projections``); ``block_projections`` finds them with the same rule: inside each attention group,
the output projection is the last linear writing the block width and the linears reading the block width are the
query / key / value (told apart by their names ``q|query|q_proj|...``, else registration order; one such linear is
a fused ``qkv``); outside attention, linears from the width to a wider space are FFN inputs and linears back to the
width FFN outputs (routers, narrower than the width, are neither).

Nothing here modifies the model.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass
from typing import Literal

from torch import nn

from .config import LayerSpec, MethodConfig, parse_layers

__all__ = [
    "ARCH_TABLE",
    "PROJECTIONS",
    "Block",
    "ModelShape",
    "Target",
    "block_projections",
    "find_blocks",
    "find_projection_targets",
    "find_targets",
    "is_adaptune_path",
    "is_channels_first",
    "linear_dims",
    "matches_pattern",
    "model_target",
]

_ATTN = re.compile(r"attn|attention", re.IGNORECASE)

# model_type -> {"attention"|"ffn"|"parallel": module suffix relative to a block}, for layouts the structural rule
# gets wrong; kinds not listed keep the rule's answer. Each entry says why. Kept deliberately small: the rule is the
# default.
ARCH_TABLE: dict[str, dict[str, str]] = {
    # The `attention` child ends at the q/k/v projections (the rule would take `value`); the attention output
    # projection is the sibling `post_attention.conv1d`.
    "squeezebert": {"attention": "post_attention.conv1d"},
}

# Post-LN models: each sublayer ends in LN(x + h). Registration order cannot tell them from pre-LN models (BART and
# mBART declare the same children), so the post-LN interop placements are limited to these model types.
POST_LN_MODEL_TYPES: frozenset[str] = frozenset(
    {
        "bert",
        "roberta",
        "xlm-roberta",
        "camembert",
        "distilbert",
        "albert",
        "electra",
        "deberta",
        "deberta-v2",
        "mpnet",
        "bart",
        "ernie",
        "xlm-roberta-xl",
    }
)


@dataclass(frozen=True)
class Block:
    """One transformer block: its global index, dotted path and hidden width."""

    index: int
    path: str
    width: int


@dataclass(frozen=True)
class ModelShape:
    """What a whole-model method (``MethodConfig.whole_model``) needs to size its parameters.

    Attributes:
        hidden: the input-embedding width.
        layers: attention layers that keep a key/value cache (``config.num_hidden_layers``).
        kv_heads: key/value heads per layer (``num_key_value_heads``, else ``num_attention_heads``).
        head_dim: width of one head (``head_dim``, else hidden / heads).
        cache: the model reads a key/value cache through its ``cache`` argument and is not an encoder-decoder
            (what prefix tuning feeds its prefixes through).
    """

    hidden: int
    layers: int
    kv_heads: int
    head_dim: int
    cache: bool = True


@dataclass(frozen=True)
class Target:
    """One place an adapter is attached.

    Attributes:
        layer: global block index (module order across stacks), or -1 for a module outside any block.
        location: ``"attention"``, ``"ffn"`` or ``"custom"`` (an explicit pattern).
        module: dotted path of the hooked module; the adapters live under ``<module>.adapters``.
        in_width: width of what the adapter reads: the hooked module's output, or for ``"parallel"`` the
            sublayer input.
        out_width: width of what the adapter writes: the hooked module's output.
        mode: ``"output"`` (``out + s·f(out)``), ``"parallel"`` (``out + s·f(x)``, x the FFN input),
            ``"post_ln"`` (the module is the sublayer's closing LayerNorm: ``LN(v + s·f(LN(v)))``) or ``"input"``
            (the adapter rewrites the module's input before the module runs; widths are its in-features).
        input_module: for ``"parallel"`` when the FFN has no container module: the first FFN linear, whose input
            is the FFN input. ``None`` means the hooked module's own input is used.
        channels_first: the hooked tensors are ``(B, C, T)`` (a 1x1 ``nn.Conv1d`` host); the slot transposes
            them so adapters always see ``(..., width)``.
        shape: for mode ``"model"`` (the whole model's inputs, module ``""``), the model's measured sizes.
        parts: for a mix of methods (``MethodConfig.components``), the indices of the members placed here (they
            run in this order, one after the other); ``()`` for a single method.
    """

    layer: int
    location: Literal["attention", "ffn", "custom"]
    module: str
    in_width: int
    out_width: int
    mode: Literal["output", "parallel", "post_ln", "input", "model"] = "output"
    input_module: str | None = None
    channels_first: bool = False
    shape: ModelShape | None = None
    parts: tuple[int, ...] = ()

    @property
    def width(self) -> int:
        """The hidden width the adapter writes (= ``in_width`` except beside a non-square projection)."""
        return self.out_width


def linear_dims(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) features of a projection: ``nn.Linear``, Transformers' ``Conv1D`` (GPT-2) or a 1x1 ``nn.Conv1d``
    (SqueezeBERT; grouped too: still an ``in -> out`` map per position, and SqueezeBERT's q/k/v and FFN use
    groups=4); else ``None``."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if is_channels_first(module):
        assert isinstance(module, nn.Conv1d)
        return module.in_channels, module.out_channels
    # transformers.pytorch_utils.Conv1D stores weight as (in, out); matched by shape contract, not import.
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and getattr(module, "weight", None) is not None:
        return int(module.weight.shape[0]), int(module.nf)
    return None


def is_channels_first(module: nn.Module) -> bool:
    """True for a 1x1 ``nn.Conv1d``: a projection whose input and output are ``(B, C, T)``."""
    return (
        isinstance(module, nn.Conv1d)
        and tuple(module.kernel_size) == (1,)
        and tuple(module.stride) == (1,)
        and tuple(module.dilation) == (1,)
        and module.padding in ((0,), "valid")
    )


def is_adaptune_path(path: str) -> bool:
    return path == "adapters" or path.endswith(".adapters") or ".adapters." in path


def find_blocks(model: nn.Module) -> list[Block]:
    """Transformer blocks in module order across stacks (encoder before decoder, text before vision).

    Raises:
        ValueError: no block list was found.
    """
    lists: list[str] = []
    blocks: list[Block] = []
    for name, mod in model.named_modules():
        if is_adaptune_path(name) or not isinstance(mod, nn.ModuleList) or len(mod) == 0:
            continue
        if any(name.startswith(p + ".") for p in lists):
            continue  # nested inside a block list already taken (e.g. MoE experts, T5's inner layer list)
        if len({type(m) for m in mod}) != 1:
            continue
        if not any(_ATTN.search(n) for n, _ in mod[0].named_modules() if n):
            continue  # conv stacks, head lists: no attention, not transformer blocks
        lists.append(name)
        for i, item in enumerate(mod):
            width = _block_width(item)
            if width is not None:
                blocks.append(Block(len(blocks), f"{name}.{i}" if name else str(i), width))
    if not blocks:
        raise ValueError(
            f"{type(model).__name__}: found no transformer blocks (looked for an nn.ModuleList whose items share "
            "one class and contain a child named like attn|attention). Set the config's target_modules to name "
            "the modules to adapt."
        )
    return blocks


def _block_width(block: nn.Module) -> int | None:
    # The first linear of a block reads the hidden states (q/qkv projection), so its input is the width.
    for _, mod in block.named_modules():
        dims = linear_dims(mod)
        if dims is not None:
            return dims[0]
    return None


def _attention_group(rel: str) -> str | None:
    """The prefix of ``rel`` up to and including its first attention-named component, else None."""
    parts = rel.split(".")
    for i, part in enumerate(parts):
        if _ATTN.search(part):
            return ".".join(parts[: i + 1])
    return None


def _target(
    block: Block,
    mod: nn.Module,
    location: Literal["attention", "ffn"],
    rel: str,
    mode: Literal["output", "parallel", "post_ln"] = "output",
    input_rel: str | None = None,
) -> Target:
    """The target at ``rel`` in ``block`` (``mod`` is the block module); a 1x1 Conv1d host is channels-first."""
    host = mod.get_submodule(rel)
    input_module = f"{block.path}.{input_rel}" if input_rel else None
    channels_first = is_channels_first(host)
    if input_rel is not None and is_channels_first(mod.get_submodule(input_rel)) != channels_first:
        # One slot applies one layout to the host output and the captured input.
        raise ValueError(f"{block.path}: {rel} and {input_rel} differ in layout (channels-first vs channels-last)")
    path = f"{block.path}.{rel}"
    return Target(block.index, location, path, block.width, block.width, mode, input_module, channels_first)


def _block_targets(block: Block, root: nn.Module, model_type: str | None) -> dict[str, Target]:
    """Attention and FFN targets of one block: the structural rule, then the table's overrides."""
    mod = root.get_submodule(block.path)
    out = _rule_targets(block, mod)
    for kind, suffix in ARCH_TABLE.get(model_type or "", {}).items():
        out.pop(f"{kind}_post_ln", None)  # the rule's closing norm belonged to the rule's (wrong) module
        if kind == "parallel":
            out[kind] = _target(block, mod, "ffn", suffix, "parallel")
        else:
            out[kind] = _target(block, mod, "attention" if kind == "attention" else "ffn", suffix)
    return out


def _rule_targets(block: Block, mod: nn.Module) -> dict[str, Target]:
    """The structural rule for one block (see the module docstring)."""
    attn_groups: dict[str, list[str]] = {}
    ffn_out: list[str] = []
    ffn_in: list[str] = []
    fused_sublayer: str | None = None
    for rel, sub in mod.named_modules():
        if not rel or is_adaptune_path(rel):
            continue
        group = _attention_group(rel)
        dims = linear_dims(sub)
        if group is not None:
            if dims is not None and dims[1] == block.width:
                attn_groups.setdefault(group, []).append(rel)
            continue
        if dims is not None:
            if dims[1] == block.width:
                ffn_out.append(rel)
            if dims[0] == block.width:
                ffn_in.append(rel)
        elif fused_sublayer is None and any(p.dim() >= 3 for p in sub.parameters(recurse=False)):
            fused_sublayer = rel.split(".")[0]  # the block's child holding fused experts: hook it whole
    out: dict[str, Target] = {}
    if attn_groups:
        first = next(iter(attn_groups.values()))
        out["attention"] = _target(block, mod, "attention", first[-1])
        norm = _norm_after(mod, first[-1])
        if norm is not None:
            out["attention_post_ln"] = _target(block, mod, "attention", norm, "post_ln")
    if fused_sublayer is not None:
        out["ffn"] = _target(block, mod, "ffn", fused_sublayer)
        out["parallel"] = _target(block, mod, "ffn", fused_sublayer, "parallel")
    elif ffn_out:
        last = ffn_out[-1]
        out["ffn"] = _target(block, mod, "ffn", last)
        norm = _norm_after(mod, last, avoid=tuple(attn_groups))
        if norm is not None:
            out["ffn_post_ln"] = _target(block, mod, "ffn", norm, "post_ln")
        if ffn_in:
            common = _common_prefix(ffn_in[0], last)
            if any(g.startswith(common + ".") for g in attn_groups):
                common = ""  # the shared parent also holds attention (ALBERT's layer): not an FFN container
            if common:  # the FFN has a container (mlp, DenseReluDense): hook it, out + f(its input)
                out["parallel"] = _target(block, mod, "ffn", common, "parallel")
            else:  # FFN linears sit directly in the block (BERT, OPT): read the input of the first one
                out["parallel"] = _target(block, mod, "ffn", last, "parallel", ffn_in[0])
    return out


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("LayerNorm")


def _norm_after(block: nn.Module, linear: str, avoid: tuple[str, ...] = ()) -> str | None:
    """The LayerNorm that closes the sublayer ending in ``linear`` (post-LN models: ``LN(x + h)``).

    Walks up from the linear: at each level, the first norm registered after the branch holding the linear
    (BERT's ``output.LayerNorm``, DistilBERT's ``sa_layer_norm``); at the linear's own parent, a norm registered
    before it also counts (ALBERT's ``full_layer_layer_norm``). ``None`` for pre-LN models.
    """
    parts = linear.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        parent_path = ".".join(parts[:depth])
        parent = block.get_submodule(parent_path) if parent_path else block
        names = list(parent._modules)
        here = names.index(parts[depth])
        for name in names[here + 1 :]:
            if _is_norm(parent._modules[name]):
                return f"{parent_path}.{name}" if parent_path else name
        if depth == len(parts) - 1:
            for name in names[:here]:
                path = f"{parent_path}.{name}" if parent_path else name
                if _is_norm(parent._modules[name]) and not any(path.startswith(a) for a in avoid):
                    return path
    return None


def _common_prefix(a: str, b: str) -> str:
    pa, pb = a.split("."), b.split(".")
    common = []
    for x, y in zip(pa[:-1], pb[:-1], strict=False):
        if x != y:
            break
        common.append(x)
    return ".".join(common)


def matches_pattern(name: str, pattern: str) -> bool:
    """True if module ``name`` matches a ``target_modules`` pattern: the exact name, a ``.suffix`` or a full regex."""
    if name == pattern:
        return True
    if pattern.startswith("."):
        return name.endswith(pattern)
    try:
        return re.fullmatch(pattern, name) is not None
    except re.error:
        return False


def _explicit_targets(model: nn.Module, config: MethodConfig, blocks: list[Block]) -> list[Target]:
    assert config.target_modules is not None
    default_mode = "parallel" if config.placement == "parallel" else "output"
    targets: list[Target] = []
    for name, sub in model.named_modules():
        if not name or is_adaptune_path(name) or not any(matches_pattern(name, p) for p in config.target_modules):
            continue
        mode = config.explicit_mode(name) or default_mode
        block = next((b for b in blocks if name.startswith(b.path + ".")), None)
        dims = linear_dims(sub)
        out_width = dims[1] if dims else (block.width if block else None)
        if out_width is None or (mode == "input" and dims is None):
            raise ValueError(f"target_modules: cannot tell the widths of {name} ({type(sub).__name__})")
        if mode == "input":  # the adapter rewrites the projection's input: its in-features on both sides
            assert dims is not None
            out_width = dims[0]
        # A parallel adapter reads the module's own input: the projection's input width, which may differ.
        in_width = dims[0] if dims and mode == "parallel" else out_width
        layer = block.index if block else -1
        targets.append(
            Target(layer, "custom", name, in_width, out_width, mode, channels_first=is_channels_first(sub))  # type: ignore[arg-type]
        )
    if not targets:
        sample = [n for n, _ in model.named_modules() if n and not is_adaptune_path(n)][:8]
        raise ValueError(
            f"target_modules={list(config.target_modules)} matched no module of {type(model).__name__} "
            f"(patterns are an exact name, a '.suffix' or a full regex; names look like {sample})"
        )
    return targets


def find_targets(model: nn.Module, config: MethodConfig) -> list[Target]:
    """Every place ``config`` puts an adapter in ``model``, in module order.

    Raises:
        ValueError: nothing matches, or the layer selection is invalid; the message says what was tried.
    """
    if config.components():
        return _mix_targets(model, config.components())
    if config.whole_model:
        return [model_target(model)]
    if config.at_embeddings:
        return embedding_targets(model)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    projections = config.projections()
    if projections is not None and config.target_modules is None:
        return find_projection_targets(model, projections, config.layers)
    if config.target_modules is not None:
        try:
            blocks = find_blocks(model)
        except ValueError:
            blocks = []
        targets = _explicit_targets(model, config, blocks)
        if config.layers is not None and blocks:
            keep = set(parse_layers(config.layers, len(blocks)))
            targets = [t for t in targets if t.layer in keep]
        return targets

    if config.placement.endswith("_post_ln") and model_type not in POST_LN_MODEL_TYPES:
        raise ValueError(
            f"placement={config.placement!r} reproduces AdapterHub's post-LN layout and needs a post-LN model "
            f"({', '.join(sorted(POST_LN_MODEL_TYPES))}); {type(model).__name__} has model_type {model_type!r}"
        )
    blocks = find_blocks(model)
    keep = set(parse_layers(config.layers, len(blocks)))
    wanted = {
        "attention": ["attention"],
        "ffn": ["ffn"],
        "both": ["attention", "ffn"],
        "parallel": ["parallel"],
        "attention_post_ln": ["attention_post_ln"],
        "ffn_post_ln": ["ffn_post_ln"],
        "both_post_ln": ["attention_post_ln", "ffn_post_ln"],
    }
    targets = []
    missing: list[str] = []
    for block in blocks:
        if block.index not in keep:
            continue
        found = _block_targets(block, model, model_type)
        for kind in wanted[config.placement]:
            if kind in found:
                targets.append(found[kind])
            else:
                missing.append(f"{kind} in {block.path}")
    if missing:
        raise ValueError(
            f"{type(model).__name__} ({model_type}): placement={config.placement!r} found no target for "
            f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''} (rule: last linear writing the block "
            "width inside an attn|attention child / elsewhere in the block). Set the config's target_modules."
        )
    return targets


def _mix_targets(model: nn.Module, members: tuple[MethodConfig, ...]) -> list[Target]:
    """The union of the members' places, one target per hooked module listing the members there (in member order).

    Members meeting at one module must hook it the same way (mode, widths, input module): the mix runs them in
    one module there, one after the other. Targets come in module order (the model's own root last).
    """
    merged: dict[str, Target] = {}
    for i, member in enumerate(members):
        for t in find_targets(model, member):
            prev = merged.get(t.module)
            if prev is None:
                merged[t.module] = dataclasses.replace(t, parts=(i,))
                continue
            same = (prev.mode, prev.in_width, prev.out_width, prev.input_module, prev.channels_first)
            if same != (t.mode, t.in_width, t.out_width, t.input_module, t.channels_first):
                j = prev.parts[-1]
                raise ValueError(
                    f"mix members {j} ({members[j].method}) and {i} ({member.method}) both hook "
                    f"{t.module or 'the model'} but differently (modes {prev.mode!r} / {t.mode!r}); members that "
                    "meet at a module must hook it the same way: move one with its layers or target_modules"
                )
            merged[t.module] = dataclasses.replace(prev, parts=(*prev.parts, i))
    # Module order, as the model lists the attached slots (the root's slot is its last child): saved files record
    # the targets in that order and loading matches them position by position.
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(merged.values(), key=lambda t: order[t.module] if t.module else len(order))


# Linear projections that methods adapting single projections (LoRA, (IA)³) can ask for (``block_projections``).
PROJECTIONS: tuple[str, ...] = ("query", "key", "value", "qkv", "attention_output", "ffn_input", "ffn_output")
_ROLE_NAMES: dict[str, re.Pattern[str]] = {
    role: re.compile(rf"^(w?{role[0]}|{role})(_?proj|_lin)?$", re.IGNORECASE) for role in ("query", "key", "value")
}


def block_projections(model: nn.Module, block: Block) -> dict[str, list[str]]:
    """Projection kind (``PROJECTIONS``) -> module paths relative to ``block``, in module order (see the module
    docstring for the rule). Fused MoE experts (``nn.Parameter``) hold no linear: their block has no FFN kinds."""
    mod = model.get_submodule(block.path)
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    # A table entry names the attention output where the rule would pick wrongly (SqueezeBERT: the last
    # width-writing linear of `attention` is `value`; the output is `post_attention.conv1d`).
    table_out = ARCH_TABLE.get(model_type or "", {}).get("attention")
    groups: dict[str, list[tuple[str, tuple[int, int]]]] = {}
    others: list[tuple[str, tuple[int, int]]] = []
    for rel, sub in mod.named_modules():
        dims = linear_dims(sub) if rel and not is_adaptune_path(rel) else None
        if dims is not None:
            group = _attention_group(rel)
            (groups.setdefault(group, []) if group is not None else others).append((rel, dims))
    found: dict[str, list[str]] = {kind: [] for kind in PROJECTIONS}
    for items in groups.values():
        writers = [r for r, d in items if d[1] == block.width]
        if table_out is not None:
            out = table_out if any(r == table_out for r, _ in items) else None
        else:
            out = writers[-1] if writers else None
        if out is not None:
            found["attention_output"].append(out)
        _assign_qkv([r for r, d in items if r != out and d[0] == block.width], found)
    for i, (rel, (d_in, d_out)) in enumerate(others):
        if d_out == block.width and (d_in > block.width or i == len(others) - 1):
            found["ffn_output"].append(rel)
        elif d_in == block.width and d_out >= block.width:
            found["ffn_input"].append(rel)
    return found


def _assign_qkv(inputs: list[str], found: dict[str, list[str]]) -> None:
    """Sort an attention group's input projections into query / key / value (one alone is a fused qkv)."""
    if len(inputs) == 1:
        found["qkv"].append(inputs[0])
        return
    named = {r: role for r in inputs for role, rx in _ROLE_NAMES.items() if rx.match(r.rsplit(".", 1)[-1])}
    if not named and len(inputs) == 3:  # unnamed separate projections: q, k, v in registration order
        named = dict(zip(inputs, ("query", "key", "value"), strict=True))
    for rel in inputs:
        if rel in named:
            found[named[rel]].append(rel)


def find_projection_targets(model: nn.Module, kinds: dict[str, str], layers: LayerSpec = None) -> list[Target]:
    """A target on every projection of the given kinds in the selected blocks, in module order.

    Args:
        model: the model.
        kinds: projection kind (``PROJECTIONS``) -> the slot mode the adapter runs in there (``"parallel"`` reads
            the projection's input and adds to its output, ``"output"`` rewrites its output, ``"input"`` its input).
        layers: which blocks (``MethodConfig.layers``).

    Raises:
        ValueError: an unknown kind, or no block holds any of the kinds; the message says what was looked for.
    """
    if unknown := sorted(set(kinds) - set(PROJECTIONS)):
        raise ValueError(f"unknown projection kinds {unknown}; expected some of {PROJECTIONS}")
    blocks = find_blocks(model)
    keep = set(parse_layers(layers, len(blocks)))
    targets: list[Target] = []
    for block in blocks:
        if block.index not in keep:
            continue
        found = block_projections(model, block)
        order = {rel: i for i, (rel, _) in enumerate(model.get_submodule(block.path).named_modules())}
        picked = sorted(((rel, kind) for kind in kinds for rel in found[kind]), key=lambda rk: order[rk[0]])
        for rel, kind in picked:
            targets.append(_projection_target(model, block, rel, kind, kinds[kind]))
    if not targets:
        raise ValueError(
            f"{type(model).__name__}: found no {' / '.join(kinds)} projection in the selected blocks (looked for "
            "linears inside attn|attention children and in the FFN). Set the config's target_modules."
        )
    return targets


def _projection_target(model: nn.Module, block: Block, rel: str, kind: str, mode: str) -> Target:
    host = model.get_submodule(f"{block.path}.{rel}")
    d_in, d_out = linear_dims(host)  # type: ignore[misc]
    in_width, out_width = {"parallel": (d_in, d_out), "output": (d_out, d_out), "input": (d_in, d_in)}[mode]
    location = "ffn" if kind.startswith("ffn") else "attention"
    path = f"{block.path}.{rel}"
    return Target(block.index, location, path, in_width, out_width, mode, channels_first=is_channels_first(host))  # type: ignore[arg-type]


def model_target(model: nn.Module) -> Target:
    """The one target of a whole-model method: the model itself, with its sizes read from its input embeddings
    and its Transformers config.

    Raises:
        ValueError: no input embeddings or no config with the sizes; the message names what is missing.
    """
    emb = _input_embeddings(model)
    cfg = getattr(model, "config", None)
    if (
        not isinstance(emb, nn.Embedding)
        or cfg is None
        or getattr(model, "main_input_name", "input_ids") != "input_ids"
    ):
        raise ValueError(
            f"{type(model).__name__}: prompt / prefix tuning need a Transformers text model (input_ids, "
            "get_input_embeddings() returning an nn.Embedding, a config)"
        )
    cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    sizes = {k: getattr(cfg, k, None) for k in ("num_hidden_layers", "num_attention_heads")}
    if missing := [k for k, v in sizes.items() if not isinstance(v, int)]:
        raise ValueError(
            f"{type(model).__name__}: config has no integer {missing}; cannot size prompt / prefix tuning"
        )
    heads = sizes["num_attention_heads"]
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    if getattr(cfg, "multi_query", False) and not getattr(cfg, "new_decoder_architecture", True):
        kv_heads = 1  # Falcon-style multi-query attention: one key/value head (its num_kv_heads says otherwise)
    head_dim = getattr(cfg, "head_dim", None) or getattr(cfg, "hidden_size", emb.embedding_dim) // heads
    body = getattr(model, "base_model", model)
    takes_cache = "cache" in inspect.signature(body.forward).parameters and not getattr(
        cfg, "is_encoder_decoder", False
    )
    shape = ModelShape(emb.embedding_dim, sizes["num_hidden_layers"], kv_heads, head_dim, takes_cache)
    return Target(-1, "custom", "", emb.embedding_dim, emb.embedding_dim, "model", shape=shape)


def embedding_targets(model: nn.Module) -> list[Target]:
    """The places of an embedding-level method (``MethodConfig.at_embeddings``).

    1. The input embeddings' output (mode ``"output"``); the output of their ``*embeddings`` container when there
       is one, as in BERT (after position embeddings and the norm, where AdapterHub puts invertible adapters).
    2. When the model has output embeddings (the LM head's vocabulary projection: ``lm_head``, BERT's
       ``cls.predictions.decoder``), their input (mode ``"input"``): after any head transform, as AdapterHub does.

    Raises:
        ValueError: no input embeddings, or output embeddings reading another width than the embeddings write; the
            message says which.
    """
    get_out = getattr(model, "get_output_embeddings", None)
    emb = _input_embeddings(model)
    if not isinstance(emb, nn.Module) or getattr(emb, "weight", None) is None:
        raise ValueError(f"{type(model).__name__}: no input embeddings (get_input_embeddings()) to place adapters at")
    names = {id(m): n for n, m in model.named_modules()}
    width = int(emb.weight.shape[1])
    host = names[id(emb)]
    parent = host.rpartition(".")[0]
    if "embed" in parent.rpartition(".")[2]:  # BERT-style ``embeddings`` container: after positions and its norm
        host = parent
    targets = [Target(-1, "custom", host, width, width, "output")]
    out = get_out() if callable(get_out) else None
    if isinstance(out, nn.Module) and id(out) in names:
        reads = linear_dims(out)
        if reads is None or reads[0] != width:
            raise ValueError(
                f"{type(model).__name__}: the output embeddings {names[id(out)]} read width "
                f"{reads[0] if reads else '?'} but the embeddings write {width}; an invertible adapter needs both "
                "sides the same width"
            )
        targets.append(Target(-1, "custom", names[id(out)], width, width, "input"))
    return targets


def _input_embeddings(model: nn.Module) -> nn.Module | None:
    """``model.get_input_embeddings()``, or None where a model has none (Transformers raises NotImplementedError for
    some multi-modal / speech models, e.g. CLIP, wav2vec2)."""
    get = getattr(model, "get_input_embeddings", None)
    try:
        return get() if callable(get) else None
    except NotImplementedError:
        return None
