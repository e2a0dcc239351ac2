"""``adaptune serve`` for classification, against a real uvicorn server on a free loopback port with a real HTTP
client: mixed-adapter batches equal one-adapter-alone outputs, batching really merges requests, every bad request
is a 4xx naming its field and leaves the rest of its batch alone, a failing batch fails only itself, hot load /
unload under traffic, the adapter root and the API key."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from adaptune.serve import ServeOptions, Server, build_server, start_background

from .serve_fixtures import LABELS, make_adapters, reference_probs

TEXTS = ["the film was good", "what a boring plot really", "great fun", "the acting was quite sad and dull"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    return make_adapters(tmp_path_factory.mktemp("serve"))


def _start(adapters: dict[str, Path], **options: Any) -> tuple[Server, Any, str]:
    root = next(iter(adapters.values())).parent
    opts = ServeOptions(adapter_root=root, max_wait_ms=options.pop("max_wait_ms", 150), **options)
    server = build_server([(None, p) for p in adapters.values()], opts, precision="fp32")
    uv, port = start_background(server)
    return server, uv, f"http://127.0.0.1:{port}"


def _stop(uv: Any) -> None:
    uv.should_exit = True
    uv.adaptune_thread.join(30)


@pytest.fixture(scope="module")
def served(assets: tuple[Path, dict[str, Path]]) -> Iterator[tuple[Server, str]]:
    server, uv, url = _start(assets[1])
    yield server, url
    _stop(uv)


@pytest.fixture(scope="module")
def refs(assets: tuple[Path, dict[str, Path]]) -> dict[str, torch.Tensor]:
    model_dir, folders = assets
    return {n: torch.stack(reference_probs(model_dir, folders[n], LABELS[n], TEXTS)[1]) for n in LABELS}


def _probs(body: dict[str, Any]) -> torch.Tensor:
    return torch.tensor([list(r["probabilities"].values()) for r in body["results"]])


def _histogram_count(metrics: str, name: str, le: str | None = None, labels: str = "") -> float:
    """A Prometheus histogram's total count, or the count of its bucket ``le``."""
    if le is None:
        pattern = rf"^{name}_count{{?{labels}}}? (\S+)$" if labels else rf"^{name}_count (\S+)$"
    else:
        inner = f'{labels},le="{le}"' if labels else f'le="{le}"'
        pattern = rf"^{name}_bucket{{{inner}}} (\S+)$"
    found = re.search(pattern, metrics, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def test_concurrent_mixed_adapters_equal_each_adapter_alone_and_are_batched(
    served: tuple[Server, str], refs: dict[str, torch.Tensor]
) -> None:
    _server, url = served
    before = _histogram_count(httpx.get(f"{url}/metrics").text, "adaptune_batch_requests")
    jobs = [(name, TEXTS[i:] + TEXTS[:i]) for i, name in enumerate(LABELS)] * 3  # 12 requests, 4 adapters
    with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(12) as pool:
        bodies = list(pool.map(lambda j: client.post("/v1/classify", json={"adapter": j[0], "texts": j[1]}), jobs))
    for (name, texts), resp in zip(jobs, bodies, strict=True):
        assert resp.status_code == 200, resp.text
        order = [TEXTS.index(t) for t in texts]
        torch.testing.assert_close(_probs(resp.json()), refs[name][order], atol=1e-5, rtol=0)
        top = resp.json()["results"][0]
        assert top["label"] in LABELS[name] and top["score"] == max(top["probabilities"].values())
    metrics = httpx.get(f"{url}/metrics").text
    forwards = _histogram_count(metrics, "adaptune_batch_requests") - before
    assert 0 < forwards < len(jobs), "12 concurrent requests should share forwards"
    assert _histogram_count(metrics, "adaptune_batch_requests", le="1.0") < _histogram_count(
        metrics, "adaptune_batch_requests"
    ), "no forward held more than one request"


def test_composition_runs_the_stack(
    served: tuple[Server, str], assets: tuple[Path, dict[str, Path]], refs: dict[str, torch.Tensor]
) -> None:
    _, url = served
    resp = httpx.post(f"{url}/v1/classify", json={"adapter": "Stack(sent, topic)", "texts": TEXTS[:2]}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert list(resp.json()["results"][0]["probabilities"]) == LABELS["topic"]  # the last adapter's head scores it
    model_dir, folders = assets
    from adaptune.formats.detect import load_folder

    from .serve_fixtures import load_classifier

    model = load_classifier(model_dir, LABELS["topic"])
    load_folder(model, folders["sent"], load_head=False)
    load_folder(model, folders["topic"])
    import adaptune

    adaptune.set_active(model, adaptune.Stack("sent", "topic"))
    from .cli_fixtures import make_tokenizer, vocabulary

    tok = make_tokenizer(vocabulary())
    with torch.no_grad():
        expected = torch.stack([model(**tok([t], return_tensors="pt")).logits[0].softmax(-1) for t in TEXTS[:2]])
    torch.testing.assert_close(_probs(resp.json()), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(expected, refs["topic"][:2], atol=1e-3)  # the stack differs from topic alone


LONG = " ".join(["good"] * 80)  # 82 tokens; the tiny model has 64 positions

BAD_REQUESTS = [
    ("invalid_json", b'{"adapter": "sent", "texts": [', 400, "body"),
    ("not_object", b'["sent"]', 400, "body"),
    ("empty_body", b"", 400, "body"),
    ("unknown_adapter", {"adapter": "nope", "texts": ["good"]}, 404, "adapter"),
    ("bad_composition", {"adapter": "Stack(sent,", "texts": ["good"]}, 400, "adapter"),
    ("missing_texts", {"adapter": "sent"}, 400, "texts"),
    ("empty_texts", {"adapter": "sent", "texts": []}, 400, "texts"),
    ("empty_text", {"adapter": "sent", "texts": ["good", "  "]}, 400, "texts[1]"),
    ("wrong_type_texts", {"adapter": "sent", "texts": "good"}, 400, "texts"),
    ("wrong_type_item", {"adapter": "sent", "texts": ["good", 3]}, 400, "texts[1]"),
    ("wrong_type_adapter", {"adapter": 7, "texts": ["good"]}, 400, "adapter"),
    ("unknown_field", {"adapter": "sent", "texts": ["good"], "x": 1}, 400, "x"),
    ("too_many_texts", {"adapter": "sent", "texts": ["good"] * 65}, 413, "texts"),
    ("too_long_text", {"adapter": "sent", "texts": ["good", LONG]}, 413, "texts[1]"),
    ("too_big_body", {"adapter": "sent", "texts": ["good " * 250_000]}, 413, "body"),
]


def test_a_chunked_body_over_the_limit_is_cut_off(served: tuple[Server, str]) -> None:
    _, url = served

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server counts as the bytes come
        yield b'{"adapter": "sent", "texts": ["'
        for _ in range(40):
            yield b"good " * 10_000
        yield b'"]}'

    resp = httpx.post(f"{url}/v1/classify", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413 and resp.json()["error"]["field"] == "body"


@pytest.mark.parametrize(("case", "body", "status", "field"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request_is_a_4xx_naming_the_field(
    served: tuple[Server, str], case: str, body: Any, status: int, field: str
) -> None:
    _, url = served
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    resp = httpx.post(f"{url}/v1/classify", headers={"content-type": "application/json"}, timeout=30, **kwargs)
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["field"] == field and error["code"] == status
    assert error["message"].startswith(field.split("[")[0]) or field in error["message"], error["message"]


def test_truncate_true_accepts_a_long_text(served: tuple[Server, str]) -> None:
    _, url = served
    resp = httpx.post(f"{url}/v1/classify", json={"adapter": "sent", "texts": [LONG], "truncate": True}, timeout=30)
    assert resp.status_code == 200, resp.text


def test_bad_requests_leave_good_ones_in_the_same_window_intact(
    served: tuple[Server, str], refs: dict[str, torch.Tensor]
) -> None:
    _, url = served
    good = [{"adapter": "emo", "texts": TEXTS}, {"adapter": "sent", "texts": TEXTS}]
    bad = [{"adapter": "nope", "texts": TEXTS}, {"adapter": "sent", "texts": [1]}, {"adapter": "emo", "texts": []}]
    with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(5) as pool:
        out = list(pool.map(lambda b: client.post("/v1/classify", json=b), good + bad))
    assert [r.status_code for r in out] == [200, 200, 404, 400, 400]
    torch.testing.assert_close(_probs(out[0].json()), refs["emo"], atol=1e-5, rtol=0)
    torch.testing.assert_close(_probs(out[1].json()), refs["sent"], atol=1e-5, rtol=0)


def test_an_exception_in_a_batch_fails_that_batch_only(
    served: tuple[Server, str], refs: dict[str, torch.Tensor]
) -> None:
    server, url = served
    model = server.model
    calls = {"n": 0}
    original = model.forward

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated failure inside the forward")
        return original(*args, **kwargs)

    model.forward = failing_once
    try:
        first = httpx.post(f"{url}/v1/classify", json={"adapter": "sent", "texts": TEXTS}, timeout=30)
        second = httpx.post(f"{url}/v1/classify", json={"adapter": "sent", "texts": TEXTS}, timeout=30)
    finally:
        del model.forward
    assert first.status_code == 500 and "simulated failure" in first.json()["error"]["message"]
    assert second.status_code == 200
    torch.testing.assert_close(_probs(second.json()), refs["sent"], atol=1e-5, rtol=0)


def test_hot_load_and_unload_while_traffic_flows(
    assets: tuple[Path, dict[str, Path]], refs: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    _model_dir, folders = assets
    server, uv, url = _start({"sent": folders["sent"]}, max_wait_ms=5)
    stop = threading.Event()
    statuses: list[int] = []

    def traffic() -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            for _ in range(400):  # bounded: at most 400 requests
                if stop.is_set():
                    break
                r = c.post("/v1/classify", json={"adapter": "sent", "texts": TEXTS})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    torch.testing.assert_close(_probs(r.json()), refs["sent"], atol=1e-5, rtol=0)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            loaded = c.post("/v1/adapters", json={"name": "topic2", "path": "topic"})
            assert loaded.status_code == 201, loaded.text
            assert loaded.json()["labels"] == LABELS["topic"]
            r = c.post("/v1/classify", json={"adapter": "topic2", "texts": TEXTS})
            torch.testing.assert_close(_probs(r.json()), refs["topic"], atol=1e-5, rtol=0)
            assert c.post("/v1/adapters", json={"name": "topic2", "path": "emo"}).status_code == 409
            assert c.delete("/v1/adapters/topic2").json() == {"unloaded": "topic2"}
            gone = c.post("/v1/classify", json={"adapter": "topic2", "texts": TEXTS})
            assert gone.status_code == 404 and gone.json()["error"]["field"] == "adapter"
            assert c.delete("/v1/adapters/topic2").status_code == 404
            again = c.post("/v1/adapters", json={"path": str(folders["emo"])})  # absolute, still under the root
            assert again.status_code == 201 and again.json()["name"] == "emo"
            assert [a["name"] for a in c.get("/v1/adapters").json()["adapters"]] == ["sent", "emo"]
    finally:
        stop.set()
        worker.join(60)
        _stop(uv)
    assert statuses and set(statuses) == {200}, "traffic on another adapter saw errors during load / unload"
    assert not [n for n in server.registry.entries if n == "topic2"]
    assert not [name for name, _ in server.model.named_parameters() if "topic" in name]  # weights really deleted


def test_hot_load_refuses_paths_outside_the_root(served: tuple[Server, str], tmp_path: Path) -> None:
    server, url = served
    root = server.options.adapter_root
    assert root is not None
    escape = root / "escape"
    escape.symlink_to(tmp_path, target_is_directory=True)
    try:
        cases = {"../": 403, str(tmp_path): 403, "escape": 403, "missing": 404, "sent/task.json": 400}
        for path, status in cases.items():
            resp = httpx.post(f"{url}/v1/adapters", json={"path": path}, timeout=30)
            assert resp.status_code == status, (path, resp.text)
            assert resp.json()["error"]["field"] == "path"
    finally:
        escape.unlink()


def test_hot_load_names_a_broken_task_file(served: tuple[Server, str]) -> None:
    server, url = served
    root = server.options.adapter_root
    assert root is not None
    broken = root / "broken"
    broken.mkdir()
    try:
        (broken / "task.json").write_text("{not json", encoding="utf-8")
        resp = httpx.post(f"{url}/v1/adapters", json={"path": "broken"}, timeout=30)
    finally:
        (broken / "task.json").unlink()
        broken.rmdir()
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "path"
    assert "task.json: not valid JSON" in resp.json()["error"]["message"]


def test_api_key_guards_everything_but_health(assets: tuple[Path, dict[str, Path]]) -> None:
    _, folders = assets
    _server, uv, url = _start({"sent": folders["sent"]}, api_key="s3cret")
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            assert c.get("/health").status_code == 200
            guarded = [("GET", "/v1/adapters"), ("GET", "/metrics"), ("POST", "/v1/classify")]
            guarded += [("DELETE", "/v1/adapters/sent"), ("POST", "/v1/adapters")]
            for method, path in guarded:
                resp = c.request(method, path, json={})
                assert resp.status_code == 401 and resp.json()["error"]["field"] == "authorization", (method, path)
            assert c.get("/v1/adapters", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get("/v1/adapters", headers={"Authorization": "Bearer s3cret"}).status_code == 200
            ok = c.post("/v1/classify", headers={"X-API-Key": "s3cret"}, json={"adapter": "sent", "texts": ["good"]})
            assert ok.status_code == 200
    finally:
        _stop(uv)


def test_admin_needs_a_key_beyond_loopback(served: tuple[Server, str]) -> None:
    server, url = served
    server.options.host = "0.0.0.0"  # as if bound to every interface (the socket itself stays on loopback)
    try:
        resp = httpx.post(f"{url}/v1/adapters", json={"path": "sent"}, timeout=30)
        assert resp.status_code == 403 and "--api-key" in resp.json()["error"]["message"]
        assert httpx.delete(f"{url}/v1/adapters/sent", timeout=30).status_code == 403
        assert httpx.post(f"{url}/v1/classify", json={"adapter": "sent", "texts": ["good"]}).status_code == 200
    finally:
        server.options.host = "127.0.0.1"


def test_metrics_count_requests_and_errors_by_adapter(served: tuple[Server, str]) -> None:
    _, url = served
    httpx.post(f"{url}/v1/classify", json={"adapter": "sarc", "texts": ["good"]}, timeout=30)
    httpx.post(f"{url}/v1/classify", json={"adapter": "nope", "texts": ["good"]}, timeout=30)
    metrics = httpx.get(f"{url}/metrics").text
    assert re.search(r'adaptune_requests_total\{adapter="sarc",endpoint="/v1/classify",status="200"\} [1-9]', metrics)
    assert re.search(r'adaptune_errors_total\{adapter="unknown",endpoint="/v1/classify",status="404"\} [1-9]', metrics)
    assert re.search(r'adaptune_queue_depth\{kind="classify"\} 0\.0', metrics)
    assert "adaptune_request_seconds_bucket" in metrics


def test_health_models_and_page(served: tuple[Server, str]) -> None:
    _, url = served
    health = httpx.get(f"{url}/health").json()
    assert health == {"status": "ok", "task": "classification", "adapters": 4, "precision": "fp32"}
    adapters = httpx.get(f"{url}/v1/adapters").json()["adapters"]
    assert {a["name"]: a["labels"] for a in adapters} == LABELS
    assert all(a["parameters"] > 0 and a["config"] for a in adapters)
    page = httpx.get(f"{url}/")
    assert page.status_code == 200 and "/v1/classify" in page.text
    completion = httpx.post(f"{url}/v1/completions", json={"model": "sent", "prompt": "hi"}, timeout=30)
    assert completion.status_code == 400 and "/v1/classify" in completion.json()["error"]["message"]


def test_cli_refuses_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adaptune.cli import main

    assert main(["serve", "--adapter-root", str(tmp_path / "none")]) == 2
    assert "--adapter-root" in capsys.readouterr().err
    assert main(["serve"]) == 2
    assert "--model and --task" in capsys.readouterr().err
