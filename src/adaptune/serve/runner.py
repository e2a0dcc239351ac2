"""Running the app under uvicorn: in the foreground (the CLI; SIGTERM / Ctrl-C drain and exit 0) or on a
background thread (tests and the load benchmark)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

from .server import Server

__all__ = ["run_foreground", "start_background"]


def _config(server: Server, port: int, log_level: str) -> Any:
    import uvicorn

    from .app import create_app

    return uvicorn.Config(
        create_app(server),
        host=server.options.host,
        port=port,
        log_level=log_level,
        # SIGTERM: stop accepting, let open requests finish within this many seconds, then shut down
        timeout_graceful_shutdown=int(server.options.drain_seconds),
        access_log=False,
    )


def run_foreground(server: Server, log_level: str = "info") -> None:
    """Serve until SIGTERM / Ctrl-C, then drain in-flight requests and return (the CLI then exits 0)."""
    import uvicorn

    class Draining(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            # uvicorn re-raises the signal after its graceful shutdown, so the process would die of SIGTERM
            # (status 143); a drained shutdown is a clean exit here.
            with super().capture_signals():
                try:
                    yield
                finally:
                    self._captured_signals.clear()

    Draining(_config(server, server.options.port, log_level)).run()


def start_background(server: Server, log_level: str = "warning", timeout: float = 60.0) -> tuple[Any, int]:
    """Start uvicorn on a free port of ``server.options.host`` on a daemon thread; returns (uvicorn server, port).
    Stop it with ``uv.should_exit = True``."""
    import uvicorn

    with socket.socket() as probe:  # a free port; uvicorn binds it right after
        probe.bind((server.options.host, 0))
        port = probe.getsockname()[1]
    uv = uvicorn.Server(_config(server, port, log_level))
    thread = threading.Thread(target=uv.run, name="adaptune-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"adaptune serve: uvicorn did not start on {server.options.host}:{port}")
        time.sleep(0.02)
    uv.adaptune_thread = thread  # type: ignore[attr-defined]
    return uv, port
