"""``adaptune eval/predict --model OUT/model`` on what ``adaptune train --full-finetune`` writes, a plain Hugging
Face classifier folder, and the clear errors when a folder does not say its task."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from adaptune.cli import main

from .cli_fixtures import make_model_dir, split_csv


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny full fine-tuning run on a CSV whose split column fixes the test rows."""
    root = tmp_path_factory.mktemp("fullft")
    bert, data, out = make_model_dir(root, "bert", dropout=False), split_csv(root / "split.csv"), root / "run"
    args = ["train", "--model", str(bert), "--data", str(data), "--out", str(out), "--full-finetune", "--lr", "1e-3",
            "--batch-size", "8", "--max-length", "16", "--max-steps", "6", "--precision", "fp32"]  # fmt: skip
    assert main(args) == 0
    return {"bert": bert, "data": data, "out": out, "model": out / "model"}


def _eval_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, float]:
    capsys.readouterr()
    assert main(["eval", *args, "--precision", "fp32", "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _test_rows_file(data: Path, out: Path) -> Path:
    """The test split of ``data`` as a held-out file of its own (no split column)."""
    with data.open(encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows([r["text"], r["label"]] for r in rows)
    return out


def test_train_writes_a_self_contained_model_folder(run: dict[str, Path]) -> None:
    files = {p.name for p in run["model"].iterdir()}
    assert {"config.json", "model.safetensors", "task.json", "tokenizer_config.json"} <= files
    task = json.loads((run["model"] / "task.json").read_text())
    assert task == {"task": "classification", "labels": ["neg", "pos"], "model": str(run["bert"]), "max_length": 16}


def test_eval_model_folder_matches_the_runs_test_metrics(
    run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = json.loads((run["out"] / "metrics.json").read_text())
    same_split = _eval_json(capsys, "--model", str(run["model"]), "--data", str(run["data"]), "--split", "test")
    held = _test_rows_file(run["data"], tmp_path / "held.csv")
    held_out = _eval_json(capsys, "--model", str(run["model"]), "--data", str(held))
    for ev in (same_split, held_out):
        assert ev["accuracy"] == pytest.approx(metrics["test_accuracy"])
        assert ev["macro_f1"] == pytest.approx(metrics["test_macro_f1"])
        assert ev["loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)


def test_predict_model_folder_prints_labels(run: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["predict", "--model", str(run["model"]), "--jsonl", "good film", "the plot was boring"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["text"] for x in lines] == ["good film", "the plot was boring"]
    assert all(x["label"] in ("neg", "pos") and 0.5 <= x["prob"] <= 1 for x in lines)


def test_old_run_without_tokenizer_uses_the_base_models(
    run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old = tmp_path / "old"
    old.mkdir()
    for name in ("config.json", "model.safetensors", "task.json"):  # what runs wrote before the tokenizer
        shutil.copy(run["model"] / name, old / name)
    args = ("--data", str(run["data"]), "--split", "test")
    assert _eval_json(capsys, "--model", str(old), *args) == _eval_json(capsys, "--model", str(run["model"]), *args)


def test_plain_hf_classifier_takes_labels_from_id2label(
    run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = tmp_path / "plain"  # what a Hugging Face classifier folder holds: no task.json
    shutil.copytree(run["model"], plain)
    (plain / "task.json").unlink()
    ev = _eval_json(capsys, "--model", str(plain), "--data", str(run["data"]), "--split", "test")
    metrics = json.loads((run["out"] / "metrics.json").read_text())
    assert ev["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert main(["predict", "--model", str(plain), "--jsonl", "good film"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["label"] in ("neg", "pos")


def _error(capsys: pytest.CaptureFixture[str], args: list[str]) -> str:
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_folders_that_do_not_say_their_task_are_clear_errors(
    run: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = str(run["bert"])  # a plain BertModel: no task.json, no classification head
    err = _error(capsys, ["predict", "--model", base, "good film"])
    assert base in err and "task.json" in err and "--task" in err
    err = _error(capsys, ["eval", "--model", base, "--data", str(run["data"])])
    assert base in err and "task.json" in err
    err = _error(capsys, ["predict", "--model", str(run["model"]), "--task", "qa", "good film"])
    assert "--task qa" in err and "task.json" in err and "classification" in err
    err = _error(capsys, ["predict", "good film", "--adapter", str(run["model"])])
    assert str(run["model"]) in err and "--model" in err
    assert "--adapter" in _error(capsys, ["predict", "good film"])
    # an id2label that does not number its labels 0..n-1
    broken = tmp_path / "broken"
    shutil.copytree(run["model"], broken)
    (broken / "task.json").unlink()
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "id2label": {"1": "pos", "2": "neg"}}))
    err = _error(capsys, ["predict", "--model", str(broken), "good film"])
    assert str(broken / "config.json") in err and "id2label" in err


def test_full_finetune_of_a_decoder_classifier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The reloaded decoder classifier pools its last real token again (the hooks come with load_model, not the files).
    llama, data, out = make_model_dir(tmp_path, "llama"), split_csv(tmp_path / "split.csv"), tmp_path / "run"
    args = ["train", "--model", str(llama), "--data", str(data), "--out", str(out), "--full-finetune", "--lr", "1e-3",
            "--batch-size", "8", "--max-length", "16", "--max-steps", "3", "--precision", "fp32"]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    ev = _eval_json(capsys, "--model", str(out / "model"), "--data", str(data), "--split", "test")
    assert ev["accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert ev["loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)
