"""The benchmark machinery (never its timings): jobs, child processes, result files, target verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adaptune.benchmark import Options, jobs
from adaptune.benchmark.suite import _run_one
from adaptune.benchmark.tables import TARGETS, _markdown
from adaptune.cli import main


def test_full_job_list_covers_every_configuration_the_issue_names(tmp_path: Path) -> None:
    todo = jobs(Options(out=tmp_path))
    train = {j["cand"] for j in todo if j["kind"] == "train" and j["ref"] == "full" and j["model"] == "minilm"}
    assert {"pfeiffer", "houlsby", "parallel", "pfeiffer_top_half", "fusion3", "peft_lora"} <= train
    assert {"ah_seq_bn", "ah_double_seq_bn", "ah_par_bn", "ah_fusion3"} <= train
    infer = {(j["cand"], j["batch"]) for j in todo if j["kind"] == "infer"}
    assert {("pfeiffer", 16), ("pfeiffer", 1), ("fusion3", 16), ("mixed8", 8)} <= infer
    assert any(j["model"] == "smollm2" for j in todo)
    # AdapterHub runs in its own venv (with its own full-FT memory reference), everything else in this one
    for j in todo:
        names = f"{j['cand']} {j['ref']}"
        ah_full = j["kind"] == "memory" and j["cand"] == "full" and j["venv"] == "adapters"
        assert (j["venv"] == "adapters") == ("ah_" in names or ah_full), j
        assert j["pairs"] == (30 if j["kind"] == "infer" else 10) and j["threads"] == 2


def test_adapterhub_jobs_are_skipped_with_a_reason_without_their_venv(tmp_path: Path) -> None:
    job = next(j for j in jobs(Options(out=tmp_path)) if j["cand"] == "ah_seq_bn")
    assert "--adapters-python" in _run_one(job, Options(out=tmp_path))["skipped"]


def test_targets_are_judged_from_the_measured_ratios() -> None:
    base = {"model": "minilm", "batch": 16, "length": 128, "venv": "main", "ratio_min": 0.0, "ratio_max": 1.0,
            "ref_s": 1.0, "cand_s": 0.5}  # fmt: skip
    rows = [{**base, "kind": "train", "cand": "pfeiffer", "ref": "full", "ratio": 0.5},
            {**base, "kind": "train", "cand": "fusion3", "ref": "full", "ratio": 0.7}]  # fmt: skip
    md = _markdown({"started": "now", "options": {"pairs": 10, "warmup": 2, "threads": 2}, "jobs": rows})
    assert "| pfeiffer training step vs full FT | 0.500 | ≤ 0.55 | met |" in md
    assert "| fusion of 3 training step vs full FT | 0.700 | ≤ 0.6 | missed by 0.100 |" in md
    assert md.count("| not run |") == len(TARGETS) - 2


@pytest.mark.slow
def test_quick_bench_writes_json_markdown_and_plot(tmp_path: Path) -> None:
    assert main(["bench", "--quick", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert [j["kind"] for j in results["jobs"]] == ["train", "infer", "memory"]
    for j in results["jobs"]:
        assert "skipped" not in j, j
    train, infer, memory = results["jobs"]
    assert train["ratio"] > 0 and infer["ratio"] > 0 and train["pairs"] == 2
    assert 0 < memory["trainable_params"] < memory["total_params"] and memory["saved_bytes"] > 0
    assert memory["peak_rss_mb"] >= memory["loaded_rss_mb"] > 0
    md = (tmp_path / "results.md").read_text()
    assert "## tiny" in md and "| fusion3+nodrop | adaptune | full |" in md
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_append_keeps_earlier_rows_and_replaces_remeasured_ones(tmp_path: Path) -> None:
    from adaptune.benchmark import run_suite

    timing = {"ratio": 0.7, "ratio_min": 0.6, "ratio_max": 0.8, "ref_s": 2.0, "cand_s": 1.4}
    earlier = {"kind": "train", "cand": "pfeiffer", "ref": "full", "model": "minilm", "batch": 16, "length": 128,
               "venv": "main", **timing}  # fmt: skip
    stale = {**earlier, "cand": "pfeiffer", "ref": "ah_seq_bn", "venv": "adapters", "ratio": 9.9}
    options = {"pairs": 10, "warmup": 2, "threads": 2}
    (tmp_path / "results.json").write_text(
        json.dumps({"started": "then", "options": options, "jobs": [earlier, stale]})
    )
    # Without --adapters-python the AdapterHub pairs are recorded as skipped at once (no process started).
    results = run_suite(Options(out=tmp_path, sections=("direct",), append=True), log=lambda _: None)
    assert results["jobs"][0] == earlier and len(results["jobs"]) == 4
    assert "skipped" in results["jobs"][1] and results["jobs"][1]["ref"] == "ah_seq_bn"  # replaced in place
    md = (tmp_path / "results.md").read_text()
    assert "Rows added or re-measured later with --append" in md and "| pfeiffer | adaptune | full |" in md


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--adapters-python", "/nowhere/python"], "--adapters-python /nowhere/python: no such interpreter"),
        (["--pairs", "0"], "--pairs and --threads must be >= 1"),
        (["--render"], "results.json: missing (run the benchmark first)"),
    ],
)
def test_bad_bench_arguments_get_one_error_line(
    extra: list[str], needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "--out", str(tmp_path / "b"), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("adaptune: error: ") and needle in err[0]
    assert not (tmp_path / "b").exists()  # nothing written
