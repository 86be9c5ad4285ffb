"""VQA metrics: VQAv2 answer normalisation, soft accuracy, exact match, closed (yes/no) accuracy.

Normalisation follows the processing documented for the official VQA evaluation (Antol et al.
2015; Goyal et al. 2017): lower-case; periods removed except in decimals; punctuation other than
apostrophes and colons replaced by a space (commas between digits removed, "100,978" -> "100978");
number words "zero".."ten" (and "none") turned into digits; articles a/an/the removed; common
contractions given their missing apostrophe ("dont" -> "don't"); whitespace collapsed. Both the
prediction and the human answers are normalised.

Soft accuracy is min(#humans agreeing / 3, 1); with 10 human answers it is averaged over the 10
leave-one-out sets of 9, as the official evaluation does. Closed accuracy counts every yes/no
question in its denominator: an answer that is neither "yes" nor "no" is wrong, never dropped
(PAPERS.md section 3).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

Reference = str | Sequence[str]  # one answer, or the answers of several human annotators

NUMBER_WORDS = {
    "none": "0",  # the official evaluation maps "none" to 0 as well
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})
# Words that lost their apostrophe; only forms that are not English words themselves ("its", "well",
# "were", "hell", "id" stay as they are).
CONTRACTIONS = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldnt": "couldn't",
    "couldve": "could've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hes": "he's",
    "im": "i'm",
    "isnt": "isn't",
    "ive": "i've",
    "lets": "let's",
    "mightnt": "mightn't",
    "mustnt": "mustn't",
    "shes": "she's",
    "shouldnt": "shouldn't",
    "shouldve": "should've",
    "thats": "that's",
    "theres": "there's",
    "theyre": "they're",
    "theyve": "they've",
    "wasnt": "wasn't",
    "werent": "weren't",
    "whats": "what's",
    "wheres": "where's",
    "whos": "who's",
    "wont": "won't",
    "wouldnt": "wouldn't",
    "wouldve": "would've",
    "youd": "you'd",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}
_PUNCTUATION = "".join(c for c in string.punctuation if c not in "'.:")
_DIGIT_COMMA = re.compile(r"(?<=\d),(?=\d)")
_NON_DECIMAL_PERIOD = re.compile(r"\.(?!\d)")  # a period followed by a digit is a decimal point: "3.5", ".5"
_OTHER_PUNCTUATION = re.compile(f"[{re.escape(_PUNCTUATION)}]")


def normalize_answer(answer: str) -> str:
    """VQAv2 normal form of an answer ("Two dogs!" -> "2 dogs", "a dog." -> "dog", "3.5" -> "3.5")."""
    text = answer.lower().replace("\n", " ").replace("\t", " ")
    text = _DIGIT_COMMA.sub("", text)
    text = _NON_DECIMAL_PERIOD.sub("", text)
    text = _OTHER_PUNCTUATION.sub(" ", text)
    words = [CONTRACTIONS.get(w, NUMBER_WORDS.get(w, w)) for w in text.split() if w not in ARTICLES]
    return " ".join(words)


def vqa_soft_accuracy(prediction: str, human_answers: Reference) -> float:
    """VQA accuracy of one prediction against human answers, after normalising both.

    Args:
        prediction: the model's answer.
        human_answers: the annotators' answers (10 in VQAv2), or a single reference string, which
            scores like exact match after normalisation.

    Returns:
        min(#agreeing / 3, 1), averaged over the leave-one-out sets of 9 when 10 answers are given.
    """
    if isinstance(human_answers, str):
        return float(normalize_answer(prediction) == normalize_answer(human_answers))
    if len(human_answers) == 0:
        raise ValueError("no human answers to score against")
    pred = normalize_answer(prediction)
    agree = [normalize_answer(h) == pred for h in human_answers]
    if len(agree) != 10:
        return min(sum(agree) / 3, 1.0)
    total = sum(agree)
    # leaving out annotator i leaves total - agree[i] agreeing annotators among the other 9
    return sum(min((total - a) / 3, 1.0) for a in agree) / 10


def _majority(reference: Reference) -> str:
    """The reference itself, or the most common human answer (first seen wins ties)."""
    if isinstance(reference, str):
        return reference
    if len(reference) == 0:
        raise ValueError("no human answers to score against")
    counts = Counter(reference)
    return max(reference, key=lambda a: counts[a])


def _check(predictions: Sequence[str], references: Sequence[Reference]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no references to score")


def exact_match(predictions: Sequence[str], references: Sequence[Reference]) -> float:
    """Fraction of predictions equal to the reference (most common human answer) verbatim, outer
    whitespace aside: it measures whether the model emits exactly the expected string."""
    _check(predictions, references)
    hits = sum(p.strip() == _majority(r).strip() for p, r in zip(predictions, references, strict=True))
    return hits / len(references)


def is_closed(reference: Reference) -> bool:
    """Whether a question is closed, i.e. its (most common) reference answer is yes or no."""
    return normalize_answer(_majority(reference)) in ("yes", "no")


def closed_accuracy(predictions: Sequence[str], references: Sequence[Reference]) -> float:
    """Accuracy on yes/no questions, every one of them in the denominator.

    Args:
        predictions: model answers for all questions.
        references: reference answers; questions whose (most common) reference is not yes/no are
            skipped.

    Returns:
        Correct normalised yes/no answers over the number of yes/no questions. A prediction that is
        neither "yes" nor "no" after normalisation ("maybe", "yes it is") counts as wrong.
    """
    _check(predictions, references)
    closed = [(p, r) for p, r in zip(predictions, references, strict=True) if is_closed(r)]
    if not closed:
        raise ValueError("no yes/no questions among the references")
    hits = sum(normalize_answer(p) == normalize_answer(_majority(r)) for p, r in closed)
    return hits / len(closed)


def vqa_report(
    predictions: Sequence[str], references: Sequence[Reference], question_types: Sequence[str] | None = None
) -> dict:
    """Scores of a VQA evaluation.

    Args:
        predictions: model answers, one per question.
        references: per question a reference string or a list of human answers.
        question_types: per question a type name (e.g. ``colour``, ``count``), or None.

    Returns:
        ``{"accuracy", "exact_match", "closed_accuracy", "n", "n_closed", "per_type": {type:
        {"accuracy", "n"}}}``; accuracy is the mean `vqa_soft_accuracy`; closed_accuracy is None
        when no question is yes/no.
    """
    _check(predictions, references)
    if question_types is not None and len(question_types) != len(references):
        raise ValueError(f"{len(question_types)} question types for {len(references)} references")
    scores = [vqa_soft_accuracy(p, r) for p, r in zip(predictions, references, strict=True)]
    n_closed = sum(is_closed(r) for r in references)
    report = {
        "accuracy": sum(scores) / len(scores),
        "exact_match": exact_match(predictions, references),
        "closed_accuracy": closed_accuracy(predictions, references) if n_closed else None,
        "n": len(scores),
        "n_closed": n_closed,
        "per_type": {},
    }
    if question_types is not None:
        by_type: dict[str, list[float]] = {}
        for t, s in zip(question_types, scores, strict=True):
            by_type.setdefault(t, []).append(s)
        report["per_type"] = {t: {"accuracy": sum(v) / len(v), "n": len(v)} for t, v in sorted(by_type.items())}
    return report
