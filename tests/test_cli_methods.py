"""The CLI's ``--method``: plan / train with LoRA and (IA)³ (options built from the method registry), the
per-method parameter summary of ``plan``, and the runs compare / sweep start for other methods."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adaptune.cli import main
from adaptune.training import experiments

from .cli_fixtures import make_model_dir, make_sentiment_csv


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli_methods")
    return {"bert": make_model_dir(root, "bert"), "csv": make_sentiment_csv(root / "sentiment.csv")}


def test_plan_lora_and_the_methods_summary(assets: dict[str, Path], capsys: Any) -> None:
    argv = ["plan", "--model", str(assets["bert"]), "--method", "lora", "--lora-rank", "4", "--lora-targets", "all"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "encoder.layer.1.attention.self.query" in out and "encoder.layer.1.output.dense" in out
    # 2 blocks x (q, k, v, o: 4·(32+32) + FFN in: 4·(32+64) + FFN out: 4·(64+32)) = 2 * 1792
    assert "12 places, 3,584 adapter parameters" in out
    summary = out.split("parameters by method")[1]
    assert "lora" in summary and "3,584" in summary
    assert "ia3" in summary and "256" in summary  # defaults: k, v (32 each) + FFN intermediate (64), 2 blocks
    assert "bottleneck" in summary


def test_plan_ia3_targets(assets: dict[str, Path], capsys: Any) -> None:
    assert main(["plan", "--model", str(assets["bert"]), "--method", "ia3", "--ia3-targets", "ffn"]) == 0
    out = capsys.readouterr().out
    assert "2 places, 128 adapter parameters" in out and "input" in out


def test_bottleneck_options_with_another_method_fail(assets: dict[str, Path], capsys: Any) -> None:
    assert main(["plan", "--model", str(assets["bert"]), "--method", "lora", "--placement", "ffn"]) == 2
    assert "--placement: bottleneck options; --method lora takes the --lora-* options" in capsys.readouterr().err


@pytest.mark.parametrize(("method", "options"), [("lora", ["--lora-rank", "2"]), ("ia3", [])])
def test_train_and_eval_other_methods(
    method: str, options: list[str], assets: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / method
    argv = ["train", "--model", str(assets["bert"]), "--data", str(assets["csv"]), "--out", str(out)]
    argv += ["--batch-size", "8", "--max-length", "16", "--max-steps", "2", "--method", method, *options]
    assert main(argv) == 0
    meta = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert meta["method"] == method
    if method == "lora":
        assert meta["config"]["rank"] == 2
    assert main(["eval", "--adapter", str(out / "adapter"), "--data", str(assets["csv"]), "--split", "test"]) == 0


def test_compare_and_sweep_run_other_methods(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[list[str]] = []

    def fake_run(name: str, cmd: list[str], out: Path) -> dict[str, Any]:
        seen.append(cmd)
        return {"name": name, "error": "not run"}

    monkeypatch.setattr(experiments, "_run", fake_run)
    common = ["--data", "x.csv", "--out", str(tmp_path), "--max-steps", "2"]
    main(["compare", *common, "--no-full", "--methods", "bottleneck", "lora", "--lora-rank", "16"])
    assert seen[0][seen[0].index("--preset") + 1] == "pfeiffer"
    assert seen[1][seen[1].index("--method") + 1] == "lora" and seen[1][seen[1].index("--lora-rank") + 1] == "16"
    seen.clear()
    main(["sweep", *common, "--method", "ia3", "--ia3-targets", "kv", "--layer-sets", "all", "last:1"])
    assert len(seen) == 2 and all("--ia3-targets" in cmd and "--preset" not in cmd for cmd in seen)
    assert [cmd[cmd.index("--layers") + 1] for cmd in seen] == ["all", "last:1"]
