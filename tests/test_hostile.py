"""Hostile input: every malformed data file, adapter folder, name or argument ends in one clear error line
naming the culprit (exit status 2, no traceback) and leaves existing outputs intact."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from adaptune.cli import main

from .cli_fixtures import make_model_dir, make_sentiment_csv


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hostile")
    bert = make_model_dir(root, "bert")
    llama = make_model_dir(root, "llama")
    csv_path = make_sentiment_csv(root / "good.csv")
    run = root / "run"
    args = [
        "train",
        "--model",
        str(bert),
        "--data",
        str(csv_path),
        "--out",
        str(run),
        "--max-steps",
        "1",
        "--batch-size",
        "8",
        "--max-length",
        "16",
    ]
    assert main(args) == 0
    return {"root": root, "bert": bert, "llama": llama, "csv": csv_path, "adapter": run / "adapter"}


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def train_on(env: dict[str, Path], data: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--model",
        str(env["bert"]),
        "--data",
        str(data),
        "--out",
        str(env["root"] / "out"),
        "--max-steps",
        "1",
        "--batch-size",
        "8",
        "--max-length",
        "16",
        *extra,
    ]


def bad_file(name: str, content: str | bytes) -> Callable[[dict[str, Path], Path], list[str]]:
    return lambda env, tmp: train_on(env, write(tmp / name, content))


def copied_adapter(env: dict[str, Path], tmp: Path) -> Path:
    folder = tmp / "adapter"
    shutil.copytree(env["adapter"], folder)
    return folder


def eval_with(mutate: Callable[[Path], None], *extra: str) -> Callable[[dict[str, Path], Path], list[str]]:
    def build(env: dict[str, Path], tmp: Path) -> list[str]:
        folder = copied_adapter(env, tmp)
        mutate(folder)
        return ["eval", "--adapter", str(folder), "--data", str(env["csv"]), *extra]

    return build


def edit_weights(fn: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
    def mutate(folder: Path) -> None:
        tensors = load_file(folder / "adapter.safetensors")
        fn(tensors)
        save_file(tensors, str(folder / "adapter.safetensors"))

    return mutate


def relabel(folder: Path, labels: list[str]) -> None:
    info = json.loads((folder / "task.json").read_text())
    (folder / "task.json").write_text(json.dumps(info | {"labels": labels}))


def empty_dir(path: Path) -> Path:
    path.mkdir()
    return path


def first_key(t: dict[str, torch.Tensor]) -> str:
    return sorted(t)[0]


HUGE = "text,label\n" + "x" * 1_100_000 + ",pos\nok,neg\n"
CASES: dict[str, tuple[Callable[[dict[str, Path], Path], list[str]], str]] = {
    # ---- data files
    "missing data file": (lambda env, tmp: train_on(env, tmp / "nope.csv"), "nope.csv"),
    "unsupported extension": (bad_file("d.xlsx", "x"), "d.xlsx"),
    "non-UTF-8 bytes": (bad_file("latin.csv", b"text,label\ncaf\xe9 good,pos\nbad,neg\n"), "latin.csv:2"),
    "ragged CSV row": (bad_file("ragged.csv", "text,label\ngood,pos,extra\nbad,neg\n"), "ragged.csv:2"),
    "unknown column": (lambda env, tmp: [*train_on(env, env["csv"]), "--text-column", "review_body"], "review_body"),
    "fp16 on CPU": (lambda env, tmp: [*train_on(env, env["csv"]), "--precision", "fp16"], "fp16 on CPU is refused"),
    "invalid JSON line": (bad_file("bad.jsonl", '{"text": "a", "label": "pos"}\n{"text": \n'), "bad.jsonl:2"),
    "JSON line not an object": (bad_file("arr.jsonl", '{"text": "a", "label": "pos"}\n[1, 2]\n'), "arr.jsonl:2"),
    "header only": (bad_file("empty.csv", "text,label\n"), "empty.csv"),
    "empty file": (bad_file("void.csv", ""), "void.csv"),
    "label is a list": (
        bad_file("lst.jsonl", '{"text": "a", "label": ["pos"]}\n{"text": "b", "label": "neg"}\n'),
        "lst.jsonl:1",
    ),
    "empty text field": (bad_file("blank.csv", "text,label\n,pos\nbad,neg\n"), "blank.csv:2"),
    "one label only": (bad_file("mono.csv", "text,label\ngood,pos\nfine,pos\n"), "mono.csv"),
    "huge field": (bad_file("huge.csv", HUGE), "huge.csv:2"),
    "folder without label/*.txt": (lambda env, tmp: train_on(env, empty_dir(tmp / "docs")), "docs"),
    # ---- adapter folders
    "missing adapter folder": (
        lambda env, tmp: ["eval", "--adapter", str(tmp / "gone"), "--data", str(env["csv"])],
        "gone",
    ),
    "adapter config not JSON": (eval_with(lambda f: write(f / "adapter_config.json", "{oops")), "adapter_config.json"),
    "adapter config not an adaptune config": (
        eval_with(lambda f: write(f / "adapter_config.json", "[]")),
        "adapter_config.json",
    ),
    "truncated weights": (eval_with(lambda f: write(f / "adapter.safetensors", b"\x08\x00")), "adapter.safetensors"),
    "weights missing": (eval_with(lambda f: (f / "adapter.safetensors").unlink()), "adapter.safetensors"),
    "pickle under the safetensors name": (
        eval_with(lambda f: torch.save({"a": 1}, f / "adapter.safetensors")),
        "adapter.safetensors",
    ),
    "wrong shape": (eval_with(edit_weights(lambda t: t.__setitem__(first_key(t), torch.zeros(3, 3)))), "has shape"),
    "wrong dtype": (
        eval_with(edit_weights(lambda t: t.__setitem__(first_key(t), t[first_key(t)].to(torch.int64)))),
        "dtype",
    ),
    "NaN weights": (eval_with(edit_weights(lambda t: t[first_key(t)].fill_(float("nan")))), "NaN"),
    "missing tensor": (eval_with(edit_weights(lambda t: t.pop(first_key(t)))), "missing"),
    "task.json missing": (eval_with(lambda f: (f / "task.json").unlink()), "task.json"),
    "label count differs from head": (eval_with(lambda f: relabel(f, ["a", "b", "c"])), "number of labels"),
    "adapter of another base": (
        lambda env, tmp: [
            "eval",
            "--adapter",
            str(env["adapter"]),
            "--model",
            str(env["llama"]),
            "--data",
            str(env["csv"]),
        ],
        "another base model",
    ),
    "unknown label at eval": (
        lambda env, tmp: [
            "eval",
            "--adapter",
            str(env["adapter"]),
            "--data",
            str(write(tmp / "new.csv", "text,label\ngood,pos\nmeh,neutral\n")),
        ],
        "neutral",
    ),
    # ---- names
    "name with path traversal": (lambda env, tmp: [*train_on(env, env["csv"]), "--name", "../evil"], "../evil"),
    "name with a dot": (lambda env, tmp: [*train_on(env, env["csv"]), "--name", "a.b"], "a.b"),
    "unicode name": (lambda env, tmp: [*train_on(env, env["csv"]), "--name", "é"], "identifier"),
    # ---- arguments
    "layer out of range": (lambda env, tmp: [*train_on(env, env["csv"]), "--layers", "9"], "out of range"),
    "bad layer spec": (lambda env, tmp: [*train_on(env, env["csv"]), "--layers", "every-other"], "layers"),
    "no module matches": (
        lambda env, tmp: [*train_on(env, env["csv"]), "--target-modules", "nothing_here"],
        "nothing_here",
    ),
    "unknown model": (lambda env, tmp: [*train_on(env, env["csv"]), "--model", str(tmp / "nomodel")], "nomodel"),
    "invalid composition": (
        lambda env, tmp: [
            "eval",
            "--adapter",
            str(env["adapter"]),
            "--setup",
            "Fuse(Stack(adapter, adapter))",
            "--data",
            str(env["csv"]),
        ],
        "Fuse",
    ),
    "unknown adapter in setup": (
        lambda env, tmp: [
            "eval",
            "--adapter",
            str(env["adapter"]),
            "--setup",
            "Stack(zzz)",
            "--data",
            str(env["csv"]),
        ],
        "zzz",
    ),
}
ARGPARSE = {
    "zero batch size": (["--batch-size", "0"], "--batch-size"),
    "negative learning rate": (["--lr", "-1"], "--lr"),
    "dropout of 1.5": (["--adapter-dropout", "1.5"], "--adapter-dropout"),
    "zero reduction factor": (["--reduction-factor", "0"], "--reduction-factor"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_input_gets_one_clear_line(case: str, env: dict[str, Path], tmp_path: Path, capsys) -> None:
    build, needle = CASES[case]
    out = env["root"] / "out"
    out.mkdir(exist_ok=True)
    (out / "keep.txt").write_text("previous result")
    args = build(env, tmp_path)
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "no error printed"
    assert err[-1].startswith("adaptune: error: ") and needle in err[-1], err[-1]
    assert "Traceback" not in "\n".join(err)
    assert (out / "keep.txt").read_text() == "previous result"


@pytest.mark.parametrize("case", sorted(ARGPARSE))
def test_bad_arguments_are_refused_by_the_parser(case: str, env: dict[str, Path], capsys) -> None:
    extra, needle = ARGPARSE[case]
    with pytest.raises(SystemExit) as exc:
        main([*train_on(env, env["csv"]), *extra])
    assert exc.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "error: argument" in last and needle in last
