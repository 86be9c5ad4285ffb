"""Counterfactual yes/no questions for easy-VQA training images, from the training annotations alone.

Why: a model trained on the published questions names an image's colour and shape almost perfectly yet
answers "is there a red shape?" near its wording's prior (88 % "no"), and repeating the minority answers
(`balance_yes_no`) removes the prior without teaching the comparison (benchmarks/RESULTS.md). What the
comparison needs is contrast within one image: the same picture asked about red (no) and about blue
(yes). Every training image's attributes are known from its own questions, so such pairs can be asked:

1. Attributes: an open question's answer gives the shape or the colour; a yes/no answer says whether the
   image has the asked attribute ("no" to a negated wording means it has it); a shape left alone after
   the other two are ruled out is known too. An image whose questions contradict each other raises an
   error naming it; one whose attribute stays unknown is left out for that attribute.
2. Wordings: the training split's own yes/no questions with the attribute word abstracted (16 wordings
   in the published set, e.g. "is no <shape> present?", "does the image contain a <colour> shape?");
   a wording is negated when it has "not" or "no".
3. Questions: per image and known attribute, `per_attribute` questions, each a seeded draw of a wording
   and a value, the image's own value with probability 1/2 (so "yes" and "no" are equally likely for
   each wording), the answer from the attribute and the negation.

Only training images and training wordings are used; validation and test questions are untouched.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

NEGATIONS = ("not", "no")
ATTRIBUTE = {"shape": "<shape>", "colour": "<colour>"}


@dataclass(frozen=True)
class Wording:
    """A yes/no question with its attribute word abstracted: `kind` (shape / colour) and negation."""

    text: str
    kind: str
    negated: bool

    def ask(self, value: str) -> str:
        return self.text.replace(ATTRIBUTE[self.kind], value).replace(" ?", "?")


def _words(question: str) -> list[str]:
    return question.replace("<image>", " ").replace("?", " ?").split()


def _attribute_word(question: str, values: dict[str, set[str]]) -> tuple[str, str, list[str]]:
    """(kind, value, words) of the one attribute word a yes/no question asks about."""
    words = _words(question)
    found = [(kind, w) for w in words for kind, vals in values.items() if w in vals]
    if len(found) != 1:
        raise ValueError(f"easy-VQA yes/no question {question!r} names {len(found)} attribute words, not one")
    return found[0][0], found[0][1], words


def attributes(
    record_id: str, pairs: Sequence[tuple[str, str]], types: Sequence[str], values: dict[str, set[str]]
) -> dict[str, str]:
    """The image's known attributes (kind -> value) from its (question, answer) pairs and their types."""
    has: dict[str, set[str]] = {k: set() for k in values}
    lacks: dict[str, set[str]] = {k: set() for k in values}
    for (question, answer), qtype in zip(pairs, types, strict=True):
        if qtype != "yes/no":
            has[qtype].add(answer)
            continue
        kind, value, words = _attribute_word(question, values)
        negated = any(w in NEGATIONS for w in words)
        (has if (answer == "yes") != negated else lacks)[kind].add(value)
    known = {}
    for kind, vals in values.items():
        if not has[kind] and len(vals - lacks[kind]) == 1:
            has[kind] = vals - lacks[kind]
        if len(has[kind]) > 1 or has[kind] & lacks[kind]:
            raise ValueError(f"easy-VQA {record_id}: its questions contradict each other on the {kind}")
        if has[kind]:
            known[kind] = next(iter(has[kind]))
    return known


def wordings(questions: Iterable[str], values: dict[str, set[str]]) -> list[Wording]:
    """The distinct yes/no wordings among `questions`, in first-seen order."""
    seen: dict[str, Wording] = {}
    for question in questions:
        kind, value, words = _attribute_word(question, values)
        text = " ".join(ATTRIBUTE[kind] if w == value else w for w in words)
        seen.setdefault(text, Wording(text, kind, any(w in NEGATIONS for w in words)))
    return list(seen.values())


def counterfactuals(
    record_id: str,
    known: dict[str, str],
    pool: Sequence[Wording],
    values: dict[str, set[str]],
    per_attribute: int,
    seed: int,
) -> list[tuple[str, str]]:
    """`per_attribute` seeded (question, answer) pairs for each known attribute of one image."""
    rng = random.Random(f"{seed}:{record_id}")
    out = []
    for kind in sorted(known):
        own, others = known[kind], sorted(values[kind] - {known[kind]})
        choices = [w for w in pool if w.kind == kind]
        for _ in range(per_attribute if choices else 0):
            wording = rng.choice(choices)
            value = own if rng.random() < 0.5 else rng.choice(others)
            out.append((wording.ask(value), "yes" if (value == own) != wording.negated else "no"))
    return out
