"""Golden values for the VQA metrics."""

from __future__ import annotations

import pytest

from tasks.vqa_metrics import closed_accuracy, exact_match, normalize_answer, vqa_report, vqa_soft_accuracy


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Two", "2"),
        ("a dog.", "dog"),
        ("yes!", "yes"),
        ("3.5", "3.5"),
        ("  Yes \n", "yes"),
        ("The cat's toy", "cat's toy"),
        ("2:50 pm", "2:50 pm"),
        ("100,978", "100978"),
        ("red, blue", "red blue"),
        ("black-and-white", "black and white"),
        ("dont know", "don't know"),
        ("An apple", "apple"),
        ("ten", "10"),
        ("none", "0"),
        ("its", "its"),
        ("x-ray, yes", "x ray yes"),  # "," touches a space: deleted; "-" does not: a space
        ("e-mail !", "e mail"),
        ("well-known 1,5", "wellknown 15"),  # a digit-comma-digit: every mark deleted
        ("whats up", "what's up"),
        ("Im here", "im here"),  # the official table's "Im" key never matches a lower-cased word
        ("." * 40, "." * 8),  # the official script removes at most 32 periods
    ],
)
def test_normalisation(raw, normal):
    assert normalize_answer(raw) == normal


def test_soft_accuracy_with_ten_answers_by_hand():
    humans = ["2"] * 2 + ["3"] * 8
    # leaving out one of the two "2"s leaves 1 agreeing (1/3); leaving out a "3" leaves 2 (2/3)
    assert vqa_soft_accuracy("two", humans) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    humans = ["dog"] * 3 + ["cat"] * 7
    # leaving out a "dog" leaves 2 agreeing (2/3); leaving out a "cat" leaves all 3 (capped at 1)
    assert vqa_soft_accuracy("A dog.", humans) == pytest.approx((3 * (2 / 3) + 7 * 1.0) / 10)
    assert vqa_soft_accuracy("cat", humans) == 1.0
    assert vqa_soft_accuracy("bird", humans) == 0.0


def test_soft_accuracy_other_counts_and_single_reference():
    # leave-one-out for any number of answers: (1/3 + 2/3 + 1/3) / 3
    assert vqa_soft_accuracy("yes", ["yes", "no", "yes"]) == pytest.approx(4 / 9)
    assert vqa_soft_accuracy("yes", ["yes"]) == 0.0  # one answer leaves no other annotator to agree
    assert vqa_soft_accuracy("Yes.", "yes") == 1.0
    assert vqa_soft_accuracy("no", "yes") == 0.0
    with pytest.raises(ValueError, match="no human answers"):
        vqa_soft_accuracy("yes", [])


def test_official_rules_for_human_answers_2016():
    # unanimous answers are compared as they are; the prediction is still processed
    assert vqa_soft_accuracy("two", ["Two"] * 10, "2016") == 0.0
    assert vqa_soft_accuracy("2", ["2"] * 10, "2016") == 1.0
    assert vqa_soft_accuracy("Yes.", ["yes"] * 10, "2016") == 1.0
    # disagreeing answers get the punctuation rule only: "Two" stays a word, "yes!" keeps its space
    assert vqa_soft_accuracy("two", ["Two"] * 9 + ["2"], "2016") == pytest.approx(0.3)
    assert vqa_soft_accuracy("yes", ["yes!"] * 9 + ["no"], "2016") == 0.0
    assert vqa_soft_accuracy("black and white", ["black-and-white"] * 4 + ["grey"] * 6, "2016") == 1.0


def test_official_rules_for_human_answers_2021():
    # unanimous answers: nothing is processed on either side, only outer whitespace goes
    assert vqa_soft_accuracy("Yes.", ["yes"] * 10) == 0.0
    assert vqa_soft_accuracy(" yes\n", ["yes "] * 10) == 1.0
    assert vqa_soft_accuracy("two", ["Two"] * 10) == 0.0
    # disagreeing answers: both sides get punctuation and digits / articles
    assert vqa_soft_accuracy("two", ["Two"] * 9 + ["2"]) == 1.0  # every answer reads "2"
    assert vqa_soft_accuracy("yes", ["yes!"] * 9 + ["no"]) == 1.0  # "yes!" -> "yes": nine agree
    assert vqa_soft_accuracy("A dog", ["the dog"] * 2 + ["cat"] * 8) == pytest.approx((2 * (1 / 3) + 8 * (2 / 3)) / 10)
    with pytest.raises(ValueError, match="unknown VQA evaluation version '2019'"):
        vqa_soft_accuracy("yes", ["yes", "no"], "2019")
    report = vqa_report(["Yes."], [["yes"] * 10], None, "2016")
    assert report["accuracy"] == 1.0 and report["vqa_eval"] == "2016"
    assert vqa_report(["Yes."], [["yes"] * 10])["accuracy"] == 0.0


def test_closed_accuracy_counts_non_yes_no_answers_as_wrong():
    predictions = ["yes", "maybe", "No.", "yes it is", "red"]
    references = ["yes", "no", "no", "yes", "red"]
    # four yes/no questions; "maybe" and "yes it is" stay in the denominator as wrong
    assert closed_accuracy(predictions, references) == 0.5
    with pytest.raises(ValueError, match="no yes/no questions"):
        closed_accuracy(["red"], ["red"])


def test_exact_match_is_verbatim():
    assert exact_match(["Red", " red ", "2"], ["red", "red", ["two", "2", "2"]]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        exact_match(["a", "b"], ["a"])


def test_report_per_type():
    predictions = ["Red", "2", "no", "maybe", "square"]
    references = ["red", "3", "no", "yes", ["square"] * 10]
    types = ["colour", "count", "exist", "exist", "shape"]
    report = vqa_report(predictions, references, types)
    assert report["accuracy"] == pytest.approx(3 / 5)
    assert report["exact_match"] == pytest.approx(2 / 5)
    assert report["closed_accuracy"] == 0.5 and report["n_closed"] == 2 and report["n"] == 5
    assert report["per_type"] == {
        "colour": {"accuracy": 1.0, "n": 1},
        "count": {"accuracy": 0.0, "n": 1},
        "exist": {"accuracy": 0.5, "n": 2},
        "shape": {"accuracy": 1.0, "n": 1},
    }
    assert vqa_report(["red"], ["red"])["closed_accuracy"] is None
    with pytest.raises(ValueError, match="1 question types for 2 references"):
        vqa_report(["a", "b"], ["a", "b"], ["colour"])
