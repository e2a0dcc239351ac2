"""qa_metrics: exact match and token F1 after SQuAD normalisation, values worked out by hand."""

from __future__ import annotations

import pytest

from adaptune.training.tasks import qa_metrics


@pytest.mark.parametrize(
    ("gold", "pred", "em", "f1"),
    [
        ("The cat sat.", "the cat sat", 1.0, 1.0),  # case, punctuation and the article are normalised away
        ("Paris", "London", 0.0, 0.0),
        # gold -> [big, red, dog], pred -> [big, dog]: 2 common, P = 2/2, R = 2/3, F1 = 2PR/(P+R) = 0.8
        ("a big red dog", "big dog!", 0.0, 0.8),
        # repeated tokens count with multiplicity: common = min(2,1) + min(1,2) = 2, P = R = 2/3
        ("go go stop", "go stop stop", 0.0, 2 / 3),
        # "an"/"the" are articles only as whole words: "another" stays; [another, one] vs [one]: P = 1, R = 1/2
        ("another one", "the one", 0.0, 2 / 3),
        # Chinese is compared per character: [北, 京, 大, 学] vs [北, 京]: P = 1, R = 1/2
        ("北京大学", "北京", 0.0, 2 / 3),
        ("北京大学", "大学北京", 0.0, 1.0),  # same characters, other order: bag-of-characters F1 is 1, EM is 0
        ("", "", 1.0, 1.0),  # both empty: a match
        ("The", "", 1.0, 1.0),  # normalises to nothing, like the empty prediction
        ("x", "", 0.0, 0.0),
    ],
)
def test_single_examples(gold: str, pred: str, em: float, f1: float) -> None:
    got = qa_metrics([gold], [pred])
    assert got["exact_match"] == pytest.approx(em, abs=1e-12)
    assert got["token_f1"] == pytest.approx(f1, abs=1e-12)


def test_means_over_examples() -> None:
    got = qa_metrics(["Paris", "a big red dog", "4"], ["paris", "big dog", "5"])
    assert got == pytest.approx({"exact_match": 1 / 3, "token_f1": (1.0 + 0.8 + 0.0) / 3})


def test_empty_and_mismatched_lists() -> None:
    assert qa_metrics([], []) == {"exact_match": 0.0, "token_f1": 0.0}
    with pytest.raises(ValueError):
        qa_metrics(["a"], ["a", "b"])
