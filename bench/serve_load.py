"""Load benchmark of `adaptune serve` (issue 12): a real server process, a real HTTP load generator.

    .venv/bin/python bench/serve_load.py [--seconds 20] [--precision auto|fp32|both] [--only classify|generate]

Classification: MiniLM with 8 adapters (pfeiffer, random non-zero weights and heads of 2-5 labels: speed does not
depend on what the weights learned), Rotten Tomatoes test texts, one text per request, closed-loop clients:
1 client one request at a time, 8 and 32 clients spread over the 8 adapters, and 32 clients on one adapter.
Generation: SmolLM2-135M with 4 such adapters, 4 concurrent clients (one per adapter) vs the same requests one
after another; greedy, 32 new tokens, eos ignored by the count (each request runs to max_tokens or a stop).

Both sides of every comparison run in the same server process, the same precision, on this machine's 2 cores
(the load generator shares them). Results: bench/results/serve_load.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
WORK = ROOT / "runs" / "bench-serve"


def make_adapters(kind: str, n: int) -> list[Path]:
    """``n`` saved adapters (+ heads and task.json for classification) on the real base; reused when present."""
    import torch

    import adaptune
    from adaptune.training.assets import resolve_model
    from adaptune.training.tasks import task_named

    folders = [WORK / kind / f"a{i}" for i in range(n)]
    if all((f / "task.json").is_file() for f in folders):
        return folders
    model_name, task = ("minilm", "classification") if kind == "classify" else ("smollm2", "causal-lm")
    for i, folder in enumerate(folders):
        labels = [f"l{j}" for j in range(2 + i % 4)] if task == "classification" else None
        model, _ = task_named(task).load_model(resolve_model(model_name), labels)
        adaptune.add_adapter(model, f"a{i}", adaptune.AdapterConfig.pfeiffer())
        gen = torch.Generator().manual_seed(i)
        with torch.no_grad():  # small random weights: every adapter differs from the base and from the others
            for name, p in model.named_parameters():
                if ".adapters." in name or name.startswith("classifier"):
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        heads = ("classifier", "bert.pooler") if labels else ()
        adaptune.save_adapter(model, f"a{i}", folder, heads=heads)
        info = {"task": task, "labels": labels, "model": model_name, "max_length": 128}
        (folder / "task.json").write_text(json.dumps(info), encoding="utf-8")
    return folders


def texts() -> list[str]:
    from adaptune.training.data.datasets import load_dataset

    return [e.text for e in load_dataset("rotten_tomatoes", "classification").split("test")]


class ServerProcess:
    """`adaptune serve` in a subprocess on a free loopback port; stops with SIGTERM (drain) on exit."""

    def __init__(self, adapters: list[Path], precision: str, extra: list[str]) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "adaptune", "serve", "--adapter", *map(str, adapters), "--port", str(self.port)]
        cmd += ["--precision", precision, "--log-level", "warning", *extra]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerProcess:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read() if self.proc.stderr else ''}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError("server did not start in 300 s")

    def rss_mib(self) -> float:
        """Peak resident memory of the server process (VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def closed_loop(url: str, clients: int, seconds: float, make_body: Any, path: str) -> dict[str, Any]:
    """``clients`` concurrent loops, each sending its next request when the last one answered, for ``seconds``
    (after a warm-up of 3 s not counted). Latencies in ms."""
    latencies: list[float] = []
    tokens = 0
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:

        async def loop(cid: int, until: float, record: bool) -> None:
            nonlocal tokens, errors
            i = 0
            while time.perf_counter() < until and i < 100_000:  # bounded in time and count
                body = make_body(cid, i)
                start = time.perf_counter()
                resp = await client.post(path, json=body)
                if not record:
                    i += 1
                    continue
                if resp.status_code != 200:
                    errors += 1
                else:
                    latencies.append((time.perf_counter() - start) * 1000)
                    tokens += resp.json().get("usage", {}).get("completion_tokens", 0)
                i += 1

        await asyncio.gather(*(loop(c, time.perf_counter() + 3, False) for c in range(clients)))
        t0 = time.perf_counter()
        await asyncio.gather(*(loop(c, t0 + seconds, True) for c in range(clients)))
        elapsed = time.perf_counter() - t0
    return summary(latencies, elapsed, tokens, errors)


def summary(latencies: list[float], elapsed: float, tokens: int, errors: int) -> dict[str, Any]:
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    return {
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 2),
        "req_per_s": round(len(latencies) / elapsed, 2),
        "tokens_per_s": round(tokens / elapsed, 2),
        "p50_ms": round(q[49], 1),
        "p99_ms": round(q[98], 1),
    }


WRK_SCRIPT = """
local bodies = {}
function init(args)
  for line in io.lines(args[1]) do bodies[#bodies + 1] = line end
  counter = tonumber(args[2]) or 0
end
function request()
  counter = counter + 1
  local body = bodies[(counter % #bodies) + 1]
  return wrk.format("POST", "/v1/classify", {["Content-Type"] = "application/json"}, body)
end
"""


def wrk_load(url: str, clients: int, seconds: float, bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """Closed-loop load from ``wrk`` (C, one thread: it leaves the cores to the server), after 3 s of warm-up."""
    WORK.mkdir(parents=True, exist_ok=True)
    body_file, script = WORK / "bodies.jsonl", WORK / "classify.lua"
    body_file.write_text("".join(json.dumps(b) + "\n" for b in bodies))
    script.write_text(WRK_SCRIPT)

    def run(duration: float) -> str:
        cmd = [
            "wrk",
            "-t1",
            f"-c{clients}",
            f"-d{round(duration)}s",
            "--latency",
            "--timeout",
            "30s",
            "-s",
            str(script),
            url,
            "--",
            str(body_file),
            "0",
        ]
        return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=duration + 60).stdout

    run(3)
    out = run(seconds)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    elapsed = _seconds(re.search(r"requests in ([\d.]+\w+),", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = int(bad.group(1)) if bad else 0
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": requests,
        "errors": errors,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
        "seconds": round(elapsed, 2),
        "req_per_s": round(requests / elapsed, 2),
        "p50_ms": round(_seconds(re.search(r"50%\s+([\d.]+\w+)", out).group(1)) * 1000, 1),
        "p99_ms": round(_seconds(re.search(r"99%\s+([\d.]+\w+)", out).group(1)) * 1000, 1),
    }


def _seconds(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def bench_classify(precision: str, seconds: float) -> dict[str, Any]:
    folders = make_adapters("classify", 8)
    pool = texts()
    names = [f.name for f in folders]
    mixed = [{"adapter": names[i % len(names)], "texts": [pool[(i * 7919) % len(pool)]]} for i in range(4000)]
    single = [{"adapter": names[0], "texts": [b["texts"][0]]} for b in mixed]
    out: dict[str, Any] = {"load generator": "wrk" if shutil.which("wrk") else "httpx (Python)"}
    with ServerProcess(folders, precision, ["--max-batch", "32", "--max-wait-ms", "5"]) as srv:
        for label, clients, bodies in (
            ("1 client, one at a time, mixed", 1, mixed),
            ("8 clients, mixed over 8 adapters", 8, mixed),
            ("32 clients, mixed over 8 adapters", 32, mixed),
            ("32 clients, one adapter", 32, single),
        ):
            if shutil.which("wrk"):
                out[label] = wrk_load(srv.url, clients, seconds, bodies)
            else:
                body = lambda c, i, b=bodies: b[(c * 131 + i) % len(b)]  # noqa: E731
                out[label] = asyncio.run(closed_loop(srv.url, clients, seconds, body, "/v1/classify"))
            print(precision, label, out[label], flush=True)
        out["server_peak_rss_mib"] = round(srv.rss_mib(), 1)
    return out


def bench_generate(precision: str, requests_per_client: int) -> dict[str, Any]:
    folders = make_adapters("generate", 4)
    names = [f.name for f in folders]
    prompts = [
        "Write a short poem about the sea.",
        "What is the capital of France?",
        "List three colours.",
        "Explain what an adapter is in one sentence.",
    ]

    def body(cid: int, i: int) -> dict[str, Any]:
        prompt = prompts[(cid + i) % len(prompts)]
        return {
            "model": names[cid % len(names)],
            "prompt": prompt,
            "max_tokens": 32,
            "temperature": 0,
            "ignore_eos": True,
        }

    out: dict[str, Any] = {}
    with ServerProcess(folders, precision, ["--gen-batch", "8"]) as srv:
        asyncio.run(fixed_requests(srv.url, 4, 1, body))  # warm-up
        out["4 clients, 4 adapters, concurrent"] = asyncio.run(fixed_requests(srv.url, 4, requests_per_client, body))
        out["same requests one after another"] = asyncio.run(
            fixed_requests(srv.url, 1, 4 * requests_per_client, lambda c, i: body(i % 4, i // 4))
        )
        for key in ("4 clients, 4 adapters, concurrent", "same requests one after another"):
            print(precision, key, out[key], flush=True)
        out["server_peak_rss_mib"] = round(srv.rss_mib(), 1)
    return out


async def fixed_requests(url: str, clients: int, per_client: int, make_body: Any) -> dict[str, Any]:
    """Each client sends ``per_client`` requests one after another; all clients at once."""
    latencies: list[float] = []
    tokens = 0
    errors = 0
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:

        async def loop(cid: int) -> None:
            nonlocal tokens, errors
            for i in range(per_client):
                start = time.perf_counter()
                resp = await client.post("/v1/completions", json=make_body(cid, i))
                if resp.status_code != 200:
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - start) * 1000)
                tokens += resp.json()["usage"]["completion_tokens"]

        t0 = time.perf_counter()
        await asyncio.gather(*(loop(c) for c in range(clients)))
        elapsed = time.perf_counter() - t0
    return summary(latencies, elapsed, tokens, errors)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per classification load")
    p.add_argument("--gen-requests", type=int, default=6, help="completion requests per generation client")
    p.add_argument("--precision", choices=("auto", "fp32", "both"), default="both")
    p.add_argument("--only", choices=("classify", "generate"))
    a = p.parse_args()
    random.seed(0)
    precisions = ["auto", "fp32"] if a.precision == "both" else [a.precision]
    results: dict[str, Any] = {"machine": f"{os.cpu_count()} CPU cores", "date": time.strftime("%Y-%m-%d %H:%M")}
    for precision in precisions:
        if a.only in (None, "classify"):
            results.setdefault("classify", {})[precision] = bench_classify(precision, a.seconds)
        if a.only in (None, "generate"):
            results.setdefault("generate", {})[precision] = bench_generate(precision, a.gen_requests)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "serve_load.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    for key in ("classify", "generate"):
        if key in results:
            old.setdefault(key, {}).update(results[key])
    old.update({k: v for k, v in results.items() if k not in ("classify", "generate")})
    path.write_text(json.dumps(old, indent=2) + "\n")
    (OUT / "serve_load.md").write_text(markdown(old))
    print(markdown(old))
    return 0


def markdown(r: dict[str, Any]) -> str:
    lines = [f"# adaptune serve load benchmark ({r.get('machine')}, {r.get('date')})", ""]
    for precision, rows in r.get("classify", {}).items():
        lines += [
            f"## Classification, MiniLM, 8 adapters, precision {precision}",
            "",
            "| load | req/s | p50 ms | p99 ms | errors |",
            "|---|---|---|---|---|",
        ]
        for label, row in rows.items():
            if isinstance(row, dict):
                lines.append(f"| {label} | {row['req_per_s']} | {row['p50_ms']} | {row['p99_ms']} | {row['errors']} |")
        mixed, single = rows["32 clients, mixed over 8 adapters"], rows["32 clients, one adapter"]
        seq = rows["1 client, one at a time, mixed"]
        lines += [
            "",
            f"- 32 mixed / 32 one adapter: {mixed['req_per_s'] / single['req_per_s']:.2f}x (target >= 0.9)",
            f"- 32 mixed / one at a time: {mixed['req_per_s'] / seq['req_per_s']:.2f}x (target >= 4)",
            f"- p99 / p50 at 32 mixed: {mixed['p99_ms'] / mixed['p50_ms']:.2f} (target <= 3)",
            f"- server peak RSS: {rows['server_peak_rss_mib']} MiB",
            "",
        ]
    for precision, rows in r.get("generate", {}).items():
        lines += [
            f"## Generation, SmolLM2-135M, 4 adapters, precision {precision}",
            "",
            "| load | tokens/s | req/s | p50 ms | p99 ms | errors |",
            "|---|---|---|---|---|---|",
        ]
        for label, row in rows.items():
            if isinstance(row, dict):
                lines.append(
                    f"| {label} | {row['tokens_per_s']} | {row['req_per_s']} | {row['p50_ms']} | "
                    f"{row['p99_ms']} | {row['errors']} |"
                )
        conc, seq = rows["4 clients, 4 adapters, concurrent"], rows["same requests one after another"]
        lines += [
            "",
            f"- concurrent / sequential tokens/s: {conc['tokens_per_s'] / seq['tokens_per_s']:.2f}x (target >= 2.5)",
            f"- server peak RSS: {rows['server_peak_rss_mib']} MiB",
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
