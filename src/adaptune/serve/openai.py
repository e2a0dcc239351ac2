"""OpenAI-compatible generation: ``POST /v1/completions``, ``POST /v1/chat/completions`` (``stream: true`` as
server-sent events) and ``GET /v1/models``; ``model`` names an adapter, a composition, or the base.

Requests go to the decode engine, which batches the decode steps of every running request whatever adapter it
uses; each request's events come back through an asyncio queue.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from .http import parse_body, read_json
from .registry import Resolved, ServeError
from .schemas import ChatRequest, CompletionRequest
from .server import Server

__all__ = ["install_openai_routes"]

COMPLETION_DEFAULT_TOKENS = 16  # OpenAI's default for /v1/completions


def install_openai_routes(app: FastAPI, server: Server) -> None:
    """Add the completion routes and the model list."""

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        names = [server.registry.base_name, *server.registry.names()] if server.generative else server.registry.names()
        return {"object": "list", "data": [{"id": n, "object": "model", "owned_by": "adaptune"} for n in names]}

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Any:
        req = parse_body(CompletionRequest, await read_json(request, server.options.max_body_bytes))
        ids = list(server.tokenizer(req.prompt)["input_ids"])
        return await _generate(server, request, req, ids, chat=False)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> Any:
        req = parse_body(ChatRequest, await read_json(request, server.options.max_body_bytes))
        return await _generate(server, request, req, _chat_ids(server.tokenizer, req), chat=True)


def _chat_ids(tok: Any, req: ChatRequest) -> list[int]:
    """The chat as prompt ids: the tokenizer's chat template, or 'role: content' lines when it has none."""
    messages = [m.model_dump() for m in req.messages]
    if getattr(tok, "chat_template", None):
        out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
        return [int(i) for i in ids]
    text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return list(tok(text)["input_ids"])


def _check(server: Server, req: Any, n_prompt: int, chat: bool) -> int:
    """The request's max_tokens after checking it and the prompt against the server's limits."""
    if not server.generative:
        raise ServeError(400, f"this server runs a {server.task} model; use /v1/classify", "model")
    limit = server.options.max_tokens
    max_tokens = req.max_tokens if req.max_tokens is not None else (limit if chat else COMPLETION_DEFAULT_TOKENS)
    if max_tokens > limit:
        raise ServeError(400, f"max_tokens: {max_tokens} is over this server's limit of {limit}", "max_tokens")
    if len(req.stops()) > 4 or any(not s for s in req.stops()):
        raise ServeError(400, "stop: at most 4 non-empty strings", "stop")
    field = "messages" if chat else "prompt"
    if n_prompt == 0:
        raise ServeError(400, f"{field}: empty", field)
    if n_prompt + max_tokens > server.max_length:
        raise ServeError(
            413,
            f"{field}: {n_prompt} prompt tokens + max_tokens {max_tokens} exceed the model's {server.max_length}",
            field,
        )
    return max_tokens


async def _generate(server: Server, request: Request, req: Any, ids: list[int], chat: bool) -> Any:
    from .generation import GenerationRequest

    request.state.adapter = server.adapter_label(req.model)
    max_tokens = _check(server, req, len(ids), chat)
    resolved = server.registry.resolve(req.model, "model", allow_base=True)
    server.registry.acquire(resolved)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[Any] = asyncio.Queue()
    gen = GenerationRequest(
        prompt_ids=ids,
        setup=resolved.setup,
        max_tokens=max_tokens,
        on_event=lambda e: loop.call_soon_threadsafe(events.put_nowait, e),
        temperature=float(req.temperature),
        top_p=float(req.top_p),
        stop=req.stops(),
        seed=req.seed,
        ignore_eos=req.ignore_eos,
    )
    try:
        handle = server.engine.submit(gen)
    except (KeyError, ValueError) as err:  # the engine's own checks (the schema and resolve ran before)
        server.registry.release(resolved)
        raise ServeError(400, f"model: {err}", "model") from None
    except RuntimeError as err:  # the engine is draining for shutdown
        server.registry.release(resolved)
        raise ServeError(503, f"server is shutting down ({err})") from None
    meta = {
        "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
        "created": int(time.time()),
        "model": req.model,
    }
    if req.stream:
        return StreamingResponse(_stream(server, events, handle, resolved, meta, chat), media_type="text/event-stream")
    try:
        text, final = await _collect(events)
    finally:
        handle.cancel()  # a no-op once finished; frees the row if the client went away
        server.registry.release(resolved)
    if final.finish_reason == "error":
        raise ServeError(500, f"generation failed: {final.error}")
    server.metrics.tokens.labels(request.state.adapter).inc(final.completion_tokens)
    return _full_body(meta, text, final, chat)


async def _collect(events: asyncio.Queue[Any]) -> tuple[str, Any]:
    parts: list[str] = []
    while True:
        event = await events.get()
        parts.append(event.text)
        if event.finished:
            return "".join(parts), event


def _usage(final: Any) -> dict[str, int]:
    return {
        "prompt_tokens": final.prompt_tokens,
        "completion_tokens": final.completion_tokens,
        "total_tokens": final.prompt_tokens + final.completion_tokens,
    }


def _full_body(meta: dict[str, Any], text: str, final: Any, chat: bool) -> dict[str, Any]:
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": final.finish_reason}
        return {**meta, "object": "chat.completion", "choices": [choice], "usage": _usage(final)}
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": final.finish_reason}
    return {**meta, "object": "text_completion", "choices": [choice], "usage": _usage(final)}


def _chunk(meta: dict[str, Any], text: str | None, finish: str | None, chat: bool, first: bool = False) -> str:
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        body = {**meta, "object": "chat.completion.chunk", "choices": [choice]}
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        body = {**meta, "object": "text_completion", "choices": [choice]}
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _stream(
    server: Server, events: asyncio.Queue[Any], handle: Any, resolved: Resolved, meta: dict[str, Any], chat: bool
) -> AsyncIterator[str]:
    """Server-sent events: one chunk per text delta, a final chunk with the finish reason, then ``[DONE]``."""
    try:
        if chat:
            yield _chunk(meta, None, None, chat, first=True)
        while True:
            event = await events.get()
            if event.finished and event.finish_reason == "error":
                error = {"message": f"generation failed: {event.error}", "type": "server_error", "code": 500}
                yield f"data: {json.dumps({'error': error})}\n\n"
                break
            if event.text:
                yield _chunk(meta, event.text, None, chat)
            if event.finished:
                server.metrics.tokens.labels(server.adapter_label(meta["model"])).inc(event.completion_tokens)
                yield _chunk(meta, None, event.finish_reason, chat)
                break
        yield "data: [DONE]\n\n"
    finally:
        handle.cancel()  # the client left mid-stream: its row leaves the batch at the next step
        server.registry.release(resolved)
