"""``adaptune serve``: one base model, many adapters, over HTTP (see ``adaptune.serve``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..core.precision import PRECISIONS
from ..training.options import positive_float, positive_int

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    """Add ``serve`` to the sub-commands."""
    p = sub.add_parser("serve", help="serve adapters over HTTP (classification and OpenAI-compatible completions)")
    p.add_argument("--adapter", nargs="*", default=[], metavar="[NAME=]DIR", help="adapter / fusion folders to load")
    p.add_argument("--adapter-root", type=Path, help="folder hot-loading (POST /v1/adapters) may read under")
    p.add_argument("--model", help="base model alias or folder (default: the first adapter's)")
    p.add_argument("--task", help="task of the base without adapters: classification, causal-lm, qa")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", help="required on every endpoint but /health (default: $ADAPTUNE_API_KEY)")
    p.add_argument("--precision", choices=PRECISIONS, default="auto")
    p.add_argument("--max-batch", type=positive_int, default=32, help="most texts per classification forward")
    p.add_argument("--max-wait-ms", type=positive_float, default=5.0, help="how long a batch waits for company")
    p.add_argument("--max-texts", type=positive_int, default=64, help="most texts per classify request")
    p.add_argument("--max-body-bytes", type=positive_int, default=1 << 20)
    p.add_argument("--max-tokens", type=positive_int, default=256, help="largest max_tokens of a completion")
    p.add_argument("--gen-batch", type=positive_int, default=8, help="most sequences per decode step")
    p.add_argument("--drain-seconds", type=positive_float, default=30.0, help="SIGTERM waits this long for requests")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=run)


def _adapter_args(values: list[str]) -> list[tuple[str | None, Path]]:
    out: list[tuple[str | None, Path]] = []
    for value in values:
        name, sep, path = value.partition("=")
        out.append((name, Path(path)) if sep and name and not Path(value).exists() else (None, Path(value)))
    return out


def run(a: argparse.Namespace) -> int:
    """Load the base and the adapters, then serve until SIGTERM / Ctrl-C (exit 0 after draining)."""
    from ..serve import ServeOptions, build_server, run_foreground
    from ..serve.registry import ServeError
    from ..serve.server import api_key_from_env

    if a.adapter_root is not None and not a.adapter_root.is_dir():
        raise ValueError(f"--adapter-root {a.adapter_root}: not a folder")
    options = ServeOptions(
        host=a.host,
        port=a.port,
        api_key=api_key_from_env(a.api_key),
        adapter_root=a.adapter_root,
        max_batch=a.max_batch,
        max_wait_ms=a.max_wait_ms,
        max_texts=a.max_texts,
        max_body_bytes=a.max_body_bytes,
        max_tokens=a.max_tokens,
        gen_batch=a.gen_batch,
        drain_seconds=a.drain_seconds,
    )
    try:
        server = build_server(_adapter_args(a.adapter), options, model=a.model, task=a.task, precision=a.precision)
    except ServeError as err:
        raise ValueError(err.message) from None
    names = ", ".join(server.registry.names()) or "none"
    print(
        f"adaptune: serving {server.task} on http://{a.host}:{a.port} ({server.precision.reason}; adapters: {names})",
        file=sys.stderr,
    )
    if not options.loopback and options.api_key is None:
        print(
            "adaptune: warning: listening beyond loopback without --api-key; admin endpoints are refused",
            file=sys.stderr,
        )
    run_foreground(server, a.log_level)
    return 0
