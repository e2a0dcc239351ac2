"""``adaptune serve`` for causal LMs: OpenAI-compatible completions against a real uvicorn server — concurrent
requests on different adapters equal each generated alone, decode steps really batch them, streaming, chat, stop
strings, bad requests, unloading while a stream runs, and the SIGTERM drain of the real CLI process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

import adaptune
from adaptune.serve import ServeOptions, Server, build_server, start_background

from .cli_fixtures import free_port, make_model_dir, make_tokenizer, vocabulary

PROMPTS = ["the film was", "what is the plot of the story", "good acting", "a very dull film was quite"]
NEW = 12


def _save_adapter(model_dir: Path, name: str, seed: int, out: Path) -> Path:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    adaptune.add_adapter(model, name, adaptune.AdapterConfig.pfeiffer())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if ".adapters." in pname:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    folder = out / name
    adaptune.save_adapter(model, name, folder, heads=())
    info = {"task": "causal-lm", "labels": None, "model": str(model_dir), "max_length": 64}
    (folder / "task.json").write_text(json.dumps(info), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("serve-lm")
    model_dir = make_model_dir(root, "llama")
    return model_dir, {n: _save_adapter(model_dir, n, i + 1, root / "adapters") for i, n in enumerate(("a", "b"))}


@pytest.fixture(scope="module")
def served(assets: tuple[Path, dict[str, Path]]) -> Iterator[tuple[Server, str]]:
    _, folders = assets
    options = ServeOptions(adapter_root=folders["a"].parent, max_tokens=40)
    server = build_server([(None, f) for f in folders.values()], options, precision="fp32")
    uv, port = start_background(server)
    yield server, f"http://127.0.0.1:{port}"
    uv.should_exit = True
    uv.adaptune_thread.join(30)


def _alone(model_dir: Path, folders: dict[str, Path], setup: str | None, prompt: str, new: int = NEW) -> str:
    """The completion ``generate`` gives for ``prompt`` alone under ``setup``, decoded after the prompt."""
    from transformers import AutoModelForCausalLM

    from adaptune.core.composition import parse
    from adaptune.formats.detect import load_folder

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for folder in folders.values():
        load_folder(model, folder)
    adaptune.set_active(model, None if setup is None else parse(setup))
    tok = make_tokenizer(vocabulary())
    ids = torch.tensor([tok(prompt)["input_ids"]])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, do_sample=False)
    return tok.decode(out[0, ids.shape[1] :].tolist(), skip_special_tokens=True)


def _words(text: str) -> list[str]:
    return text.split()


def _decode_hist(metrics: str) -> tuple[float, float]:
    """(decode steps with one row, all decode steps) from /metrics."""
    one = total = 0.0
    for line in metrics.splitlines():
        if line.startswith('adaptune_batch_rows_bucket{kind="decode",le="1.0"}'):
            one = float(line.split()[-1])
        if line.startswith('adaptune_batch_rows_count{kind="decode"}'):
            total = float(line.split()[-1])
    return one, total


def test_concurrent_completions_on_different_adapters_equal_each_alone(
    served: tuple[Server, str], assets: tuple[Path, dict[str, Path]]
) -> None:
    server, url = served
    model_dir, folders = assets
    jobs = list(zip(["a", "b", server.registry.base_name, "Stack(a, b)"], PROMPTS, strict=True))
    one_before, total_before = _decode_hist(httpx.get(f"{url}/metrics").text)
    with httpx.Client(base_url=url, timeout=60) as c, ThreadPoolExecutor(4) as pool:
        body = {"max_tokens": NEW, "temperature": 0}
        out = list(pool.map(lambda j: c.post("/v1/completions", json={**body, "model": j[0], "prompt": j[1]}), jobs))
    texts = {}
    for (model, prompt), resp in zip(jobs, out, strict=True):
        assert resp.status_code == 200, resp.text
        data = resp.json()
        assert data["object"] == "text_completion" and data["model"] == model
        choice = data["choices"][0]
        setup = None if model == server.registry.base_name else model
        assert _words(choice["text"]) == _words(_alone(model_dir, folders, setup, prompt)), model
        assert data["usage"]["completion_tokens"] <= NEW and data["usage"]["prompt_tokens"] > 0
        texts[model] = choice["text"]
    assert len(set(texts.values())) > 1  # the adapters matter
    one, total = _decode_hist(httpx.get(f"{url}/metrics").text)
    assert total - total_before > one - one_before, "no decode step held more than one request"


def _sse(resp: httpx.Response) -> list[Any]:
    events = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def test_streaming_gives_the_same_text_in_chunks(served: tuple[Server, str]) -> None:
    _, url = served
    body = {"model": "b", "prompt": PROMPTS[1], "max_tokens": NEW, "temperature": 0}
    whole = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()["choices"][0]
    with httpx.stream("POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        events = _sse(resp)
    assert events[-1] == "[DONE]"
    chunks = [e["choices"][0] for e in events[:-1]]
    assert len(chunks) > 2  # more than one text chunk: tokens stream as they come
    assert "".join(c["text"] for c in chunks) == whole["text"]
    assert chunks[-1]["finish_reason"] == whole["finish_reason"] and all(
        c["finish_reason"] is None for c in chunks[:-1]
    )


def test_chat_completions_and_chat_streaming(served: tuple[Server, str]) -> None:
    _, url = served
    body = {"model": "a", "messages": [{"role": "user", "content": "what is the story"}], "max_tokens": 6}
    data = httpx.post(f"{url}/v1/chat/completions", json={**body, "temperature": 0}, timeout=60).json()
    assert data["object"] == "chat.completion"
    message = data["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str)
    with httpx.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True, "temperature": 0}) as resp:
        events = _sse(resp)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant"} and events[-1] == "[DONE]"
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[1:-1])
    assert streamed == message["content"]


def test_stop_string_cuts_the_completion(served: tuple[Server, str]) -> None:
    _, url = served
    body = {"model": "a", "prompt": PROMPTS[0], "max_tokens": NEW, "temperature": 0}
    full = httpx.post(f"{url}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    words = full.split()
    stop = words[len(words) // 2]
    cut = httpx.post(f"{url}/v1/completions", json={**body, "stop": [stop]}, timeout=60).json()["choices"][0]
    assert cut["finish_reason"] == "stop" and cut["text"] == full[: full.index(stop)]


def test_models_lists_base_and_adapters(served: tuple[Server, str]) -> None:
    server, url = served
    ids = [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]]
    assert ids == [server.registry.base_name, "a", "b"]
    classify = httpx.post(f"{url}/v1/classify", json={"adapter": "a", "texts": ["good"]})
    assert classify.status_code == 400 and "/v1/completions" in classify.json()["error"]["message"]


LONG_PROMPT = " ".join(["good"] * 40)
BAD = [
    ("unknown_model", {"model": "zzz", "prompt": "good"}, 404, "model"),
    ("max_tokens_over_limit", {"model": "a", "prompt": "good", "max_tokens": 41}, 400, "max_tokens"),
    ("max_tokens_zero", {"model": "a", "prompt": "good", "max_tokens": 0}, 400, "max_tokens"),
    ("prompt_too_long", {"model": "a", "prompt": LONG_PROMPT, "max_tokens": 30}, 413, "prompt"),
    ("prompt_wrong_type", {"model": "a", "prompt": 5}, 400, "prompt"),
    ("missing_prompt", {"model": "a"}, 400, "prompt"),
    ("temperature_out_of_range", {"model": "a", "prompt": "good", "temperature": 3}, 400, "temperature"),
    ("n_above_one", {"model": "a", "prompt": "good", "n": 2}, 400, "n"),
    ("too_many_stops", {"model": "a", "prompt": "good", "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("stream_wrong_type", {"model": "a", "prompt": "good", "stream": "yes"}, 400, "stream"),
]


@pytest.mark.parametrize(("case", "body", "status", "field"), BAD, ids=[b[0] for b in BAD])
def test_bad_completion_requests(served: tuple[Server, str], case: str, body: Any, status: int, field: str) -> None:
    _, url = served
    resp = httpx.post(f"{url}/v1/completions", json=body, timeout=60)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["field"] == field


def test_bad_chat_requests(served: tuple[Server, str]) -> None:
    _, url = served
    cases = [
        ({"model": "a", "messages": []}, "messages"),
        ({"model": "a", "messages": [{"role": "x", "content": "hi"}]}, "messages[0].role"),
    ]
    for body, field in cases:
        resp = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
        assert resp.status_code == 400 and resp.json()["error"]["field"] == field, resp.text


def test_unload_waits_for_a_running_stream(assets: tuple[Path, dict[str, Path]]) -> None:
    _, folders = assets
    server = build_server([(None, f) for f in folders.values()], ServeOptions(max_tokens=40), precision="fp32")
    uv, port = start_background(server)
    url = f"http://127.0.0.1:{port}"
    finished: dict[str, Any] = {}
    started = threading.Event()

    def stream() -> None:
        body = {"model": "b", "prompt": "good", "max_tokens": 40, "temperature": 0, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as resp:
            events = []
            for line in resp.iter_lines():
                started.set()
                if line.startswith("data: "):
                    events.append(line)
            finished["events"] = events

    worker = threading.Thread(target=stream)
    try:
        worker.start()
        assert started.wait(30)
        deleted = httpx.delete(f"{url}/v1/adapters/b", timeout=60)
        worker.join(60)
        assert deleted.status_code == 200
        assert finished["events"][-1] == "data: [DONE]"
        last = json.loads(finished["events"][-2][len("data: ") :])["choices"][0]
        assert last["finish_reason"] in ("length", "stop")  # ran to its end, not cut by the unload
        assert httpx.post(f"{url}/v1/completions", json={"model": "b", "prompt": "good"}).status_code == 404
    finally:
        uv.should_exit = True
        uv.adaptune_thread.join(30)


def test_sigterm_drains_in_flight_requests_and_exits_0(assets: tuple[Path, dict[str, Path]]) -> None:
    _, folders = assets
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "adaptune",
        "serve",
        "--adapter",
        str(folders["a"]),
        "--port",
        str(port),
        "--precision",
        "fp32",
        "--gen-batch",
        "1",
        "--max-tokens",
        "50",
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        body = {"model": "a", "prompt": "good", "max_tokens": 50, "temperature": 0}

        def post() -> tuple[httpx.Response, float]:
            resp = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
            return resp, time.monotonic()

        with ThreadPoolExecutor(6) as pool:
            # gen-batch 1: the 6 requests run one after another, so most are queued when SIGTERM arrives
            futures = [pool.submit(post) for _ in range(6)]
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            sent = time.monotonic()
            answered = [f.result() for f in futures]
        assert proc.wait(120) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
    responses = [r for r, _ in answered]
    assert [r.status_code for r in responses] == [200] * 6
    assert any(t > sent for _, t in answered), "every request ended before SIGTERM: the drain was not exercised"
    assert all(r.json()["choices"][0]["finish_reason"] in ("length", "stop") for r in responses)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{url}/health", timeout=2)
