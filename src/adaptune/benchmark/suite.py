"""``adaptune bench``: every configuration side by side, each measurement in its own process.

The job list is fixed here; ``worker`` measures one job; results go to ``results.json`` (everything measured),
``results.md`` (tables and each target met or missed) and ``bench.png``. Jobs that need AdapterHub ``adapters``
run under ``--adapters-python`` (a venv with Transformers 4.57.6); jobs that need ``peft`` run where it is
installed. A job whose package is missing is recorded as skipped, with the reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tables import write_outputs

__all__ = ["Options", "jobs", "run_suite"]

SECTIONS = ("train", "infer", "memory", "direct", "decoder", "bf16", "methods")
OURS_TRAIN = ["pfeiffer", "houlsby", "parallel", "pfeiffer_top_half", "fusion3"]
NODROP = ["pfeiffer+nodrop", "houlsby+nodrop", "pfeiffer_top_half+nodrop", "fusion3+nodrop"]
AH_TRAIN = ["ah_seq_bn", "ah_double_seq_bn", "ah_par_bn", "ah_fusion3"]


@dataclass(frozen=True)
class Options:
    """What to run: sections, timing pairs, interpreters."""

    out: Path
    sections: tuple[str, ...] = SECTIONS
    pairs: int = 10
    warmup: int = 2
    threads: int = 2
    adapters_python: str | None = None  # interpreter of a venv with adapters==1.3.0 + transformers==4.57.6
    quick: bool = False  # tiny model, few configurations: checks the machinery, measures nothing useful
    append: bool = False  # keep the jobs already in results.json; a re-measured job replaces its old row


def _job(kind: str, cand: str, ref: str | None, model: str, bs: int, length: int, o: Options, **extra: Any) -> dict:
    where = "adapters" if cand.startswith("ah_") or (ref or "").startswith("ah_") or extra.pop("ah", False) else "main"
    # An inference pair is ~10x cheaper than a training pair and the effects sought are a few percent: 3x the pairs.
    pairs = o.pairs * 3 if kind == "infer" else o.pairs
    return {
        "kind": kind,
        "cand": cand,
        "ref": ref,
        "model": model,
        "batch": bs,
        "length": length,
        "pairs": pairs,
        "warmup": o.warmup,
        "threads": o.threads,
        "venv": where,
        **extra,
    }


def jobs(o: Options) -> list[dict[str, Any]]:
    """Every measurement, in run order."""
    if o.quick:
        tiny = ("tiny", 2, 8)
        quick = {"pairs": 2, "warmup": 1}
        return [
            {**_job("train", "fusion3+nodrop", "full", *tiny, o), **quick},
            {**_job("infer", "pfeiffer", "base", *tiny, o), **quick},
            _job("memory", "pfeiffer", None, *tiny, o),
        ]
    out: list[dict[str, Any]] = []
    mini = ("minilm", 16, 128)
    if "train" in o.sections:
        out += [_job("train", c, "full", *mini, o) for c in [*OURS_TRAIN, *NODROP, "peft_lora", *AH_TRAIN]]
    if "direct" in o.sections:  # ours against AdapterHub in one process (same Transformers 4.57 base)
        out += [_job("train", c, "ah_seq_bn", *mini, o) for c in ("pfeiffer", "pfeiffer+nodrop")]
        out += [_job("infer", "pfeiffer", "ah_seq_bn", *mini, o)]
    if "infer" in o.sections:
        out += [_job("infer", "pfeiffer", "base", "minilm", 1, 128, o)]
        setups = ["pfeiffer", "houlsby", "fusion3", "peft_lora", "peft_lora_merged", *AH_TRAIN, "ah_init"]
        out += [_job("infer", c, "base", *mini, o) for c in setups]
        out += [_job("infer", "mixed8", "pfeiffer", "minilm", 8, 128, o)]
    if "memory" in o.sections:
        configs = ["full", *OURS_TRAIN, *NODROP, "peft_lora"]
        out += [_job("memory", c, None, *mini, o) for c in configs]
        out += [_job("memory", "full", None, *mini, o, ah=True)]
        out += [_job("memory", c, None, *mini, o) for c in AH_TRAIN]
    if "bf16" in o.sections:
        out += _bf16_jobs(o)
    if "methods" in o.sections:  # issue 14: adaptune LoRA / (IA)³ against peft's, same configuration and precision
        for suffix in ("", "@bf16"):
            pairs = [("lora", "peft_lora"), ("ia3", "peft_ia3")]
            out += [_job(k, c + suffix, r + suffix, *mini, o) for k in ("train", "infer") for c, r in pairs]
            out += [_job("infer", "lora_merged" + suffix, "base" + suffix, *mini, o)]
    if "decoder" in o.sections:
        smol = ("smollm2", 4, 128)
        out += [_job("train", c, "full", *smol, o) for c in ("pfeiffer", "pfeiffer_top_half", "peft_lora")]
        out += [_job("infer", c, "base", *smol, o) for c in ("pfeiffer", "peft_lora")]
        out += [_job("memory", c, None, *smol, o) for c in ("full", "pfeiffer", "peft_lora")]
    return out


def _bf16_jobs(o: Options) -> list[dict[str, Any]]:
    """The precision policy's rows (issue 11): bf16 against fp32 and against bf16, ours and the other libraries'."""
    mini, smol = ("minilm", 16, 128), ("smollm2", 4, 128)
    pf, nd = "pfeiffer@bf16", "pfeiffer+nodrop@bf16"
    train = [(pf, "full"), (nd, "full"), ("full@bf16", "full"), (pf, "full@bf16"), (nd, "full@bf16")]
    train += [("fusion3@bf16", "full@bf16"), ("peft_lora@bf16", "full@bf16"), (pf, "peft_lora@bf16")]
    train += [(pf, "ah_seq_bn@bf16"), (nd, "ah_seq_bn@bf16")]
    out = [_job("train", c, r, *mini, o) for c, r in train]
    infer = [("base@bf16", "base"), (pf, "base"), (pf, "base@bf16"), ("fusion3@bf16", "base@bf16")]
    infer += [("peft_lora@bf16", "base@bf16"), ("mixed8@bf16", "pfeiffer@bf16")]
    out += [_job("infer", c, r, *mini, o) for c, r in infer]
    out += [_job("memory", c, None, *mini, o) for c in (pf, nd, "full@bf16")]
    out += [_job("train", c, r, *smol, o) for c, r in ((pf, "full"), (pf, "full@bf16"), (pf, "peft_lora@bf16"))]
    out += [
        _job("infer", c, r, *smol, o) for c, r in ((pf, "base"), (pf, "base@bf16"), ("peft_lora@bf16", "base@bf16"))
    ]
    return out


def _run_one(job: dict[str, Any], o: Options) -> dict[str, Any]:
    python = sys.executable
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if job["venv"] == "adapters":
        if not o.adapters_python:
            return {**job, "skipped": "needs --adapters-python (a venv with adapters + transformers 4.57)"}
        python = o.adapters_python
        src = str(Path(__file__).resolve().parents[2])  # this checkout's adaptune, importable in that venv
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    cmd = [python, "-m", "adaptune.benchmark.worker", json.dumps(job)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        return {**job, "skipped": lines[-1] if lines else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _key(job: dict[str, Any]) -> tuple[Any, ...]:
    return job["kind"], job["cand"], job["ref"], job["model"], job["batch"], job["length"], job["venv"]


def run_suite(o: Options, log: Any = print) -> dict[str, Any]:
    """Run every job, write the outputs under ``o.out``, and return the results."""
    todo = jobs(o)
    results: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "options": {"pairs": o.pairs, "warmup": o.warmup, "threads": o.threads, "quick": o.quick},
        "jobs": [],
    }
    old = o.out / "results.json"
    if o.append and old.is_file():
        results = json.loads(old.read_text(encoding="utf-8"))
        results.setdefault("appended", []).append(time.strftime("%Y-%m-%d %H:%M:%S"))
    t0 = time.perf_counter()
    for i, job in enumerate(todo, 1):
        r = _run_one(job, o)
        same = [k for k, j in enumerate(results["jobs"]) if _key(j) == _key(r)]
        if same:
            results["jobs"][same[0]] = r
        else:
            results["jobs"].append(r)
        what = f"{job['kind']} {job['cand']} vs {job['ref']}" if job["ref"] else f"{job['kind']} {job['cand']}"
        got = r.get("skipped") and f"skipped: {r['skipped']}"
        got = got or (f"{r['ratio']:.3f}" if "ratio" in r else f"peak {r['peak_rss_mb']:.0f} MB")
        log(f"[{i}/{len(todo)}] {job['model']} {what}: {got}  ({time.perf_counter() - t0:.0f} s)")
        write_outputs(results, o.out)  # after every job: an interrupted run keeps what it measured
    return results
