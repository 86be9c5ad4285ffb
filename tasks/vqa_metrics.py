"""VQA metrics: VQAv2 accuracy as the official script, exact match, closed (yes/no) accuracy.

Answer processing and the accuracy against several human answers are the official evaluation's,
rule for rule (tasks/vqa_normalise.py: the unanimous-answer rule, its punctuation set and
delete-or-space rule, its contraction table, leave-one-out averaging for any number of answers), in
the current script's version (``2021``) by default or the earlier one (``2016``) by name.
A single reference string (our own data sets have one exact answer per question) scores as exact
match after processing both sides as the script processes a prediction; the official script has no
such case (one answer leaves no one out to agree with). Closed accuracy counts every yes/no
question in its denominator: an answer that is neither "yes" nor "no" is wrong, never dropped
(PAPERS.md section 3).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from tasks.vqa_normalise import normalize_answer, official_accuracy

__all__ = ["closed_accuracy", "exact_match", "is_closed", "normalize_answer", "vqa_report", "vqa_soft_accuracy"]

Reference = str | Sequence[str]  # one answer, or the answers of several human annotators


def vqa_soft_accuracy(prediction: str, human_answers: Reference, version: str = "2021") -> float:
    """VQA accuracy of one prediction against human answers (module docstring).

    Args:
        prediction: the model's answer.
        human_answers: the annotators' answers (10 in VQAv2), or a single reference string, which
            scores like exact match after processing both.
        version: the official script's version for human answers, ``2021`` or ``2016``.

    Returns:
        The official accuracy: the mean over annotators of min(1, #other annotators agreeing / 3).
    """
    if isinstance(human_answers, str):
        return float(normalize_answer(prediction) == normalize_answer(human_answers))
    return official_accuracy(prediction, human_answers, version)


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
    predictions: Sequence[str],
    references: Sequence[Reference],
    question_types: Sequence[str] | None = None,
    version: str = "2021",
) -> dict:
    """Scores of a VQA evaluation.

    Args:
        predictions: model answers, one per question.
        references: per question a reference string or a list of human answers.
        question_types: per question a type name (e.g. ``colour``, ``count``), or None.
        version: the official script's version (``2021`` or ``2016``), named in the report.

    Returns:
        ``{"accuracy", "exact_match", "closed_accuracy", "n", "n_closed", "per_type": {type:
        {"accuracy", "n"}}}``; accuracy is the mean `vqa_soft_accuracy`; closed_accuracy is None
        when no question is yes/no.
    """
    _check(predictions, references)
    if question_types is not None and len(question_types) != len(references):
        raise ValueError(f"{len(question_types)} question types for {len(references)} references")
    scores = [vqa_soft_accuracy(p, r, version) for p, r in zip(predictions, references, strict=True)]
    n_closed = sum(is_closed(r) for r in references)
    report = {
        "accuracy": sum(scores) / len(scores),
        "exact_match": exact_match(predictions, references),
        "closed_accuracy": closed_accuracy(predictions, references) if n_closed else None,
        "n": len(scores),
        "n_closed": n_closed,
        "vqa_eval": version,
        "per_type": {},
    }
    if question_types is not None:
        by_type: dict[str, list[float]] = {}
        for t, s in zip(question_types, scores, strict=True):
            by_type.setdefault(t, []).append(s)
        report["per_type"] = {t: {"accuracy": sum(v) / len(v), "n": len(v)} for t, v in sorted(by_type.items())}
    return report
