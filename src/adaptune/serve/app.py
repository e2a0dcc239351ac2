"""The FastAPI app of ``adaptune serve``: classification, adapter admin, health, metrics, the try-it page; the
OpenAI-compatible completion routes are in ``openai``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from .batching import ClassifyBatcher, ClassifyJob, classify_forward
from .http import check_key, error_response, field_of, parse_body, read_json
from .registry import ServeError
from .schemas import ClassifyRequest, LoadRequest
from .server import Server

__all__ = ["create_app"]

log = logging.getLogger("adaptune.serve")
PAGE = Path(__file__).with_name("page.html")
OPEN_PATHS = ("/health", "/")  # the page is static HTML with no data; every call it makes sends the key


def create_app(server: Server) -> FastAPI:
    """The ASGI app serving ``server`` (start it with uvicorn)."""
    batcher = None
    if not server.generative:
        batcher = ClassifyBatcher(
            lambda jobs: classify_forward(
                server.registry, server.batch_tokenizer, jobs, server.max_length, server.autocast
            ),
            max_batch=server.options.max_batch,
            max_wait=server.options.max_wait_ms / 1000,
            on_batch=lambda rows, reqs, seconds: _observe_batch(server, rows, reqs, seconds),
        )
        server.metrics.watch_queue("classify", lambda: batcher.depth)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if batcher is not None:
            batcher.start()
        if server.engine is not None:
            server.engine.start()
        yield
        # uvicorn has stopped accepting and waited for open requests (SIGTERM drain); finish what is queued.
        if batcher is not None:
            await batcher.stop()
        if server.engine is not None:
            await asyncio.to_thread(server.engine.stop, True, server.options.drain_seconds)

    app = FastAPI(title="adaptune serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    _install_guards(app, server)
    _install_info_routes(app, server)
    _install_admin_routes(app, server)
    _install_classify_route(app, server, batcher)
    from .openai import install_openai_routes

    install_openai_routes(app, server)
    return app


def _observe_batch(server: Server, rows: int, requests: int, seconds: float) -> None:
    server.metrics.batch_rows.labels("classify").observe(rows)
    server.metrics.forward_seconds.labels("classify").observe(seconds)
    server.metrics.batch_requests.observe(requests)


class Guard:
    """API key and metrics for every HTTP request, as plain ASGI (Starlette's ``BaseHTTPMiddleware`` costs a task
    group and a memory stream per request, which shows at hundreds of requests per second)."""

    def __init__(self, app: Any, server: Server) -> None:
        self.app, self.server = app, server

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        scope.setdefault("state", {})["adapter"] = "none"  # request.state.adapter: routes name the adapter used
        status = 500
        started = False

        async def send_and_watch(message: dict[str, Any]) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            if scope["path"] not in OPEN_PATHS:
                check_key(Request(scope), self.server.options.api_key)
            await self.app(scope, receive, send_and_watch)
        except Exception as err:  # answered here so that it is counted; the server goes on
            if isinstance(err, ServeError):
                response = error_response(err.status, err.message, err.field)
            else:
                log.exception("request failed")
                response = error_response(500, f"internal error: {type(err).__name__}: {err}")
            if not started:
                await response(scope, receive, send_and_watch)
        finally:
            if scope["path"] != "/metrics":
                route = scope.get("route")
                endpoint = getattr(route, "path", "unmatched")
                adapter = scope["state"].get("adapter", "none")
                self.server.metrics.observe(endpoint, adapter, status, time.perf_counter() - start)


def _install_guards(app: FastAPI, server: Server) -> None:
    # Guard answers any other exception with a JSON 500 (it sits inside Starlette's own error middleware).
    app.add_middleware(Guard, server=server)

    @app.exception_handler(ServeError)
    async def serve_error(request: Request, err: ServeError) -> JSONResponse:
        return error_response(err.status, err.message, err.field)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0]
        where = field_of(tuple(first.get("loc", ())))
        return error_response(400, f"{where}: {first.get('msg')}", where)


def _install_info_routes(app: FastAPI, server: Server) -> None:
    """Health, metrics, the page and the adapter list."""
    registry = server.registry
    page_html = PAGE.read_text(encoding="utf-8")  # static: read once, not per request

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "task": server.task,
            "adapters": len(registry.names()),
            "precision": server.precision.name,
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        from .metrics import CONTENT_TYPE

        return Response(server.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html)

    @app.get("/v1/adapters")
    async def list_adapters() -> dict[str, Any]:
        entries = [e.describe() for e in registry.entries.values() if not e.unloading]
        return {
            "base": registry.base_name,
            "task": server.task,
            "precision": server.precision.name,
            "adapters": entries,
        }


def _install_admin_routes(app: FastAPI, server: Server) -> None:
    """Hot load / unload (admin: beyond loopback they need the API key)."""
    registry, options = server.registry, server.options

    @app.post("/v1/adapters", status_code=201)
    async def load(request: Request) -> dict[str, Any]:
        _check_admin(server)
        req = parse_body(LoadRequest, await read_json(request, options.max_body_bytes))
        folder = _under_root(options.adapter_root, req.path)
        entry = await asyncio.to_thread(registry.load, req.name, folder)
        request.state.adapter = entry.name
        return entry.describe()

    @app.delete("/v1/adapters/{name}")
    async def unload(name: str, request: Request) -> dict[str, Any]:
        _check_admin(server)
        entry = registry.begin_unload(name)
        deadline = time.monotonic() + options.drain_seconds
        while entry.refs > 0 and time.monotonic() < deadline:  # requests already using it finish first
            await asyncio.sleep(0.01)
        if entry.refs > 0:
            entry.unloading = False
            raise ServeError(409, f"adapter {name!r} still has {entry.refs} requests after {options.drain_seconds}s")
        await asyncio.to_thread(registry.finish_unload, entry)
        return {"unloaded": name}


def _install_classify_route(app: FastAPI, server: Server, batcher: ClassifyBatcher | None) -> None:
    """``POST /v1/classify``: checked, then queued for the batcher."""
    registry, options = server.registry, server.options

    @app.post("/v1/classify")
    async def classify(request: Request) -> dict[str, Any]:
        if batcher is None:
            raise ServeError(400, f"this server runs a {server.task} model; use /v1/completions", "adapter")
        batcher.arriving += 1  # tells the batcher that company is on its way while this request is read
        queued = False
        try:
            req = parse_body(ClassifyRequest, await read_json(request, options.max_body_bytes))
            request.state.adapter = server.adapter_label(req.adapter)
            _check_texts(server, req)
            resolved = registry.resolve(req.adapter)
            if resolved.head is None or not resolved.labels:
                raise ServeError(400, f"adapter: {req.adapter!r} has no classification head", "adapter")
            registry.acquire(resolved)
            try:
                job = ClassifyJob(req.texts, resolved, asyncio.get_running_loop().create_future(), req.truncate)
                batcher.queue.put_nowait(job)
                batcher.arriving -= 1
                queued = True
                rows = await job.future
            except ServeError:
                raise
            except Exception as err:
                raise ServeError(500, f"the batch this request ran in failed: {type(err).__name__}: {err}") from None
            finally:
                registry.release(resolved)
        finally:
            if not queued:
                batcher.arriving -= 1
        labels = resolved.labels
        results = []
        for probs in rows:
            values = probs.tolist()
            best = max(range(len(values)), key=values.__getitem__)
            probabilities = dict(zip(labels, values, strict=True))
            results.append({"label": labels[best], "score": values[best], "probabilities": probabilities})
        return {"adapter": req.adapter, "results": results}


def _check_texts(server: Server, req: ClassifyRequest) -> None:
    """Too many texts, empty texts (texts longer than the model accepts are found in the batch thread, which
    tokenizes the whole batch in one call, and fail their own request with a 413)."""
    if len(req.texts) > server.options.max_texts:
        raise ServeError(
            413, f"texts: {len(req.texts)} texts, at most {server.options.max_texts} per request", "texts"
        )
    for i, text in enumerate(req.texts):
        if not text.strip():
            raise ServeError(400, f"texts[{i}]: empty text", f"texts[{i}]")


def _check_admin(server: Server) -> None:
    """Load / unload change what everyone gets: beyond loopback they need an API key, always."""
    if server.options.api_key is None and not server.options.loopback:
        raise ServeError(
            403, "admin endpoints need --api-key when the server listens beyond loopback", "authorization"
        )


def _under_root(root: Path | None, path: str) -> Path:
    """``path`` (relative to ``root`` or absolute) resolved with symlinks; refused unless it lies under ``root``."""
    if root is None:
        raise ServeError(403, "hot-loading is off: start the server with --adapter-root DIR", "path")
    base = root.resolve()
    candidate = Path(path) if Path(path).is_absolute() else base / path
    try:
        real = candidate.resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError):
        raise ServeError(404, f"path: {path!r} does not exist under --adapter-root", "path") from None
    if not real.is_relative_to(base):
        raise ServeError(403, f"path: {path!r} resolves outside --adapter-root", "path")
    if not real.is_dir():
        raise ServeError(400, f"path: {path!r} is not a folder", "path")
    return real
