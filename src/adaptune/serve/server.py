"""What one ``adaptune serve`` process holds: the base model in its serving precision, the adapter registry, the
classification batcher or the generation engine, the metrics; and how it is built from adapter folders."""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..core.model import DEFAULT_HEADS, head_modules
from ..core.precision import Precision, autocast, set_precision
from .heads import HeadBank
from .metrics import Metrics
from .registry import Registry, ServeError, read_task_info

# Tasks with an endpoint: /v1/classify, or /v1/completions and /v1/chat/completions.
SERVED_TASKS: tuple[str, ...] = ("classification", "qa", "causal-lm")

__all__ = ["ServeOptions", "Server", "build_server"]


@dataclass
class ServeOptions:
    """Limits and knobs of a server (the CLI's options).

    Attributes:
        host, port: where uvicorn listens (127.0.0.1 by default: nothing outside the machine reaches it).
        api_key: required on every endpoint but ``/health`` (and the static page) when set.
        adapter_root: hot-loading reads folders under it only; ``None`` turns hot-loading off.
        max_batch: most texts per classification forward; max_wait_ms: how long a batch waits for company.
        max_texts: most texts per classify request; max_body_bytes: largest request body.
        max_tokens: largest ``max_tokens`` of a completion (also its default); gen_batch: most sequences per
            decode step.
        drain_seconds: how long SIGTERM waits for in-flight requests.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    adapter_root: Path | None = None
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_texts: int = 64
    max_body_bytes: int = 1 << 20
    max_tokens: int = 256
    gen_batch: int = 8
    drain_seconds: float = 30.0

    @property
    def loopback(self) -> bool:
        """True when only this machine can connect."""
        if self.host == "localhost":
            return True
        with contextlib.suppress(ValueError):
            return ipaddress.ip_address(self.host).is_loopback
        return False


class Server:
    """The state behind the HTTP app.

    Args:
        model, tokenizer: the base, already in ``precision`` and in eval mode.
        task: ``classification`` or a generative task (``causal-lm``, ``qa``).
        precision: the serving precision.
        options: limits.
        base_name: the name that means "no adapter" in a completion's ``model`` field.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        task: str,
        precision: Precision,
        options: ServeOptions,
        base_name: str = "base",
    ) -> None:
        self.model, self.tokenizer, self.task = model, tokenizer, task
        self.precision, self.options = precision, options
        # A fast tokenizer is not safe to share between threads ("Already borrowed" when one thread changes its
        # padding / truncation while another encodes): the event loop, the batch thread and the decode thread
        # each get their own.
        self.batch_tokenizer = copy.deepcopy(tokenizer)
        self.lock = threading.Lock()
        self.generative = task != "classification"
        heads = None if self.generative else HeadBank(model, required=_head_leaves(model))
        self.registry = Registry(model, task, precision, heads, self.lock, base_name=base_name)
        self.metrics = Metrics()
        self.max_length = _model_max_length(model, tokenizer)
        self.device = next(model.parameters()).device
        self.engine: Any = None
        if self.generative:
            from .generation import DecodeEngine

            self.engine = DecodeEngine(
                model,
                copy.deepcopy(tokenizer),
                max_batch=options.gen_batch,
                lock=self.lock,
                autocast=self.autocast,
                on_step=lambda kind, rows: self.metrics.batch_rows.labels(kind).observe(rows),
                activate=self.registry.activate,
            )
            self.metrics.watch_queue("generation", lambda: self.engine.queue_depth)

    def adapter_label(self, text: str) -> str:
        """Metric label of a request's adapter: a loaded name, 'composition' or 'unknown' (never raw client text,
        so the label set stays bounded)."""
        if text in self.registry.entries or text == self.registry.base_name:
            return text
        return "composition" if "(" in text else "unknown"

    def autocast(self) -> Any:
        """The forward's precision context."""
        return autocast(self.precision, self.device)


def _head_leaves(model: nn.Module) -> list[str]:
    """The parameter-holding leaves of the task head (``classifier``, ``score``...): every classification entry
    must bring its own, or it would score with the base's untrained head."""
    leaves = []
    for path, module in head_modules(model, DEFAULT_HEADS).items():
        for name, sub in module.named_modules():
            if next(sub.parameters(recurse=False), None) is not None:
                leaves.append(f"{path}.{name}" if name else path)
    return leaves


def _model_max_length(model: nn.Module, tokenizer: Any) -> int:
    """The most tokens the model accepts: its position table, or the tokenizer's limit if smaller."""
    limit = getattr(model.config, "max_position_embeddings", None) or 1 << 30
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_limit, int) and tok_limit < limit:
        limit = tok_limit
    return int(limit)


def build_server(
    adapters: list[tuple[str | None, Path]],
    options: ServeOptions,
    model: str | None = None,
    task: str | None = None,
    precision: str = "auto",
) -> Server:
    """A server with ``adapters`` ((name or None, folder) pairs) loaded behind one base.

    The base and task come from the first adapter's ``task.json`` unless ``model`` / ``task`` say otherwise.

    Raises:
        ServeError / ValueError / FileNotFoundError: a folder that cannot be served, no model to serve.
    """
    from ..training.assets import resolve_model
    from ..training.tasks import task_named

    info = read_task_info(adapters[0][1]) if adapters else {}
    model_name = model or info.get("model")
    task_name = task or info.get("task")
    if not model_name or not task_name:
        raise ValueError("serve: give --model and --task, or an adapter folder written by `adaptune train`")
    if task_name not in SERVED_TASKS:
        where = f"{adapters[0][1]}: " if adapters and not task else ""
        raise ValueError(
            f"{where}task {task_name!r} is not served yet; adaptune serve runs {', '.join(SERVED_TASKS)} "
            "(use adaptune predict for the others)"
        )
    base, tok = task_named(task_name).load_model(resolve_model(model_name), info.get("labels"))
    base.eval().requires_grad_(False)
    resolved = set_precision(base, precision)
    server = Server(base, tok, task_name, resolved, options, base_name=Path(str(model_name)).name)
    for name, folder in adapters:
        server.registry.load(name, folder)
    return server


def api_key_from_env(given: str | None) -> str | None:
    """``--api-key`` or else ``ADAPTUNE_API_KEY``."""
    return given or os.environ.get("ADAPTUNE_API_KEY") or None


__all__ += ["ServeError", "api_key_from_env"]
