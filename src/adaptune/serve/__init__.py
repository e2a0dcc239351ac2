"""``adaptune serve``: many adapters behind one base model over HTTP, with requests for different adapters batched
into one forward.

Layers inside: ``heads`` (one task head per adapter) and ``registry`` (load / resolve / unload) over the model;
``batching`` (classification micro-batches) and ``generation`` (decode-step batching) run forwards; ``server``
holds the state; ``app`` / ``openai`` / ``http`` / ``schemas`` are the HTTP surface; ``runner`` starts uvicorn.
"""

from __future__ import annotations

from .server import ServeOptions, Server, build_server

__all__ = ["ServeOptions", "Server", "build_server", "create_app", "run_foreground", "start_background"]


def __getattr__(name: str):  # the HTTP stack (FastAPI, uvicorn) loads only when asked for
    if name == "create_app":
        from .app import create_app

        return create_app
    if name in ("run_foreground", "start_background"):
        from . import runner

        return getattr(runner, name)
    raise AttributeError(name)
