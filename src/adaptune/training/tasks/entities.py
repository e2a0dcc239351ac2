"""Entities from tag sequences, and entity-level precision / recall / F1 (micro), as conlleval and seqeval's
default mode count them. Our own ~100 lines: seqeval on PyPI has had no release since 2020.

A tag is ``O`` (outside), ``PREFIX-TYPE`` with PREFIX one of B (begin), I (inside), E (end), S (single), BILOU's
L and U read as E and S, or a plain tag without a prefix (``PER``), read as ``I-PER``. An entity is a maximal
run of one type:

- it starts at B- or S-, at a type change, and at an I- / E- that follows O, E- or S- (so IOB1, which starts
  entities with I-, and IOB2 both parse, and a stray I- without its B- still counts);
- it ends before O, B-, S- or a type change, and after E- or S-.

So ``B-PER I-LOC`` is two entities (PER then LOC), ``I-PER I-PER`` one, ``I-PER B-PER`` two, and a run of plain
``PER PER`` one. Scores compare exact (type, start, end) triples; a prediction is right only if both boundaries
and the type are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Entity", "entities", "entity_scores", "split_tag"]

_PREFIXES = {"B": "B", "I": "I", "E": "E", "S": "S", "L": "E", "U": "S"}


@dataclass(frozen=True)
class Entity:
    """One entity: its type and word span ``[start, end)``."""

    type: str
    start: int
    end: int  # exclusive


def split_tag(tag: str) -> tuple[str, str]:
    """``(prefix, type)`` of a tag: ``O`` -> ("O", ""); ``B-PER`` -> ("B", "PER"); ``U-LOC`` -> ("S", "LOC");
    a plain ``PER`` -> ("I", "PER")."""
    if tag == "O":
        return "O", ""
    head, sep, rest = tag.partition("-")
    if sep and head.upper() in _PREFIXES and rest:
        return _PREFIXES[head.upper()], rest
    return "I", tag


def _ends(prev: tuple[str, str], cur: tuple[str, str]) -> bool:
    """Does an entity running at ``prev`` end before ``cur``?"""
    (p, p_type), (c, c_type) = prev, cur
    if p == "O":
        return False
    return p in ("E", "S") or c in ("O", "B", "S") or p_type != c_type


def _starts(prev: tuple[str, str], cur: tuple[str, str]) -> bool:
    """Does an entity start at ``cur``?"""
    (p, p_type), (c, c_type) = prev, cur
    if c == "O":
        return False
    return c in ("B", "S") or p in ("O", "E", "S") or p_type != c_type


def entities(tags: Sequence[str]) -> list[Entity]:
    """The entities of one tag sequence, in order.

    Example:
        >>> entities(["B-PER", "I-PER", "O", "I-LOC"])
        [Entity(type='PER', start=0, end=2), Entity(type='LOC', start=3, end=4)]
    """
    found: list[Entity] = []
    prev = ("O", "")
    start = 0
    for i, tag in enumerate(tags):
        cur = split_tag(tag)
        if _ends(prev, cur):
            found.append(Entity(prev[1], start, i))
        if _starts(prev, cur):
            start = i
        prev = cur
    if prev[0] != "O":  # an entity running to the end of the sentence
        found.append(Entity(prev[1], start, len(tags)))
    return found


def entity_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict[str, float]:
    """Micro entity precision / recall / F1 and token accuracy over sentences (gold and predicted tags per word).

    A ratio with nothing to divide by (no predicted entities for precision, no gold ones for recall) is 0, as
    scikit-learn's ``zero_division=0``.

    Raises:
        ValueError: the two sides differ in the number of sentences or a sentence's number of tags.
    """
    if len(gold) != len(pred):
        raise ValueError(f"{len(gold)} gold sentences but {len(pred)} predicted")
    true = predicted = correct = 0
    words = right_words = 0
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
        g_ents, p_ents = set(entities(g)), set(entities(p))
        true, predicted, correct = true + len(g_ents), predicted + len(p_ents), correct + len(g_ents & p_ents)
        words += len(g)
        right_words += sum(a == b for a, b in zip(g, p, strict=True))
    precision = correct / predicted if predicted else 0.0
    recall = correct / true if true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "entity_precision": precision,
        "entity_recall": recall,
        "entity_f1": f1,
        "token_accuracy": right_words / words if words else 0.0,
    }
