"""The ``adaptune bench`` sub-command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .suite import SECTIONS, Options, run_suite

__all__ = ["add_bench_parser", "run_bench"]


def add_bench_parser(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser(
        "bench",
        help="speed / memory side by side with full FT, peft and AdapterHub (results to files)",
        description="Paired step-time ratios, peak memory, trainable parameters and saved sizes; each "
        "measurement in its own process. Takes ~25 minutes on 2 CPU cores; `make bench` sets up both venvs.",
    )
    b.add_argument("--out", default="bench/results", help="folder for results.json, results.md, bench.png")
    b.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="sections to run")
    b.add_argument("--pairs", type=int, default=10, help="measured A/B pairs per timing (after the warm-up)")
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every measurement")
    b.add_argument("--adapters-python", help="python of a venv with adapters==1.3.0 + transformers==4.57.6")
    b.add_argument("--quick", action="store_true", help="tiny model, a few jobs: checks the machinery only")
    b.add_argument("--append", action="store_true", help="add to results.json (re-measured jobs replace old rows)")
    b.add_argument("--render", action="store_true", help="only redraw results.md and bench.png from results.json")


def run_bench(a: argparse.Namespace) -> int:
    if a.pairs < 1 or a.warmup < 0 or a.threads < 1:
        raise ValueError("--pairs and --threads must be >= 1, --warmup >= 0")
    if a.render:
        import json

        from .tables import write_outputs

        src = Path(a.out) / "results.json"
        if not src.is_file():
            raise FileNotFoundError(f"{src}: missing (run the benchmark first)")
        write_outputs(json.loads(src.read_text(encoding="utf-8")), Path(a.out))
        print(f"results: {Path(a.out) / 'results.md'}")
        return 0
    if a.adapters_python and not Path(a.adapters_python).is_file():
        raise FileNotFoundError(f"--adapters-python {a.adapters_python}: no such interpreter")
    o = Options(
        out=Path(a.out),
        sections=tuple(a.only),
        pairs=a.pairs,
        warmup=a.warmup,
        threads=a.threads,
        adapters_python=a.adapters_python,
        quick=a.quick,
        append=a.append,
    )
    run_suite(o, log=lambda msg: print(f"adaptune: {msg}", file=sys.stderr, flush=True))
    print(f"results: {o.out / 'results.md'}")
    return 0
