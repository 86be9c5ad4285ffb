"""Counterfactual yes/no questions for easy-VQA: attributes read from an image's own questions, the
training wordings abstracted, and seeded questions whose answers follow from the attribute and negation."""

from __future__ import annotations

from collections import Counter

import pytest

from tasks.easy_vqa_counterfactual import Wording, attributes, counterfactuals, wordings

VALUES = {"shape": {"circle", "rectangle", "triangle"}, "colour": {"red", "blue", "green"}}


def test_attributes_come_from_open_answers_yes_no_answers_and_elimination():
    pairs = [("what shape is this?", "circle"), ("is there not a red shape?", "no")]
    assert attributes("a", pairs, ["shape", "yes/no"], VALUES) == {"shape": "circle", "colour": "red"}
    # no open question: two shapes ruled out leave the third; one colour ruled out leaves two: unknown
    pairs = [("is no circle present?", "yes"), ("does the image contain a triangle?", "no"),
             ("is there a blue shape?", "no")]  # fmt: skip
    assert attributes("b", pairs, ["yes/no"] * 3, VALUES) == {"shape": "rectangle"}


def test_contradicting_questions_name_the_image():
    pairs = [("what color is the shape?", "red"), ("is there a red shape?", "no")]
    with pytest.raises(ValueError, match="easy-VQA train-9: its questions contradict each other on the colour"):
        attributes("train-9", pairs, ["colour", "yes/no"], VALUES)
    with pytest.raises(ValueError, match="names 2 attribute words"):
        attributes("c", [("is there a red circle?", "yes")], ["yes/no"], VALUES)


def test_wordings_abstract_the_attribute_and_mark_negation():
    pool = wordings(["is there a red shape?", "is there a blue shape?", "is no circle present?"], VALUES)
    assert pool == [
        Wording("is there a <colour> shape ?", "colour", False),
        Wording("is no <shape> present ?", "shape", True),
    ]
    assert pool[1].ask("triangle") == "is no triangle present?"


def test_counterfactual_answers_follow_the_attribute_and_are_balanced_and_seeded():
    pool = wordings(["is there a red shape?", "is there not a red shape?", "is a circle present?"], VALUES)
    known = {"shape": "circle", "colour": "blue"}
    asked = counterfactuals("img", known, pool, VALUES, 400, seed=0)
    assert len(asked) == 800 and asked == counterfactuals("img", known, pool, VALUES, 400, seed=0)
    assert asked != counterfactuals("img", known, pool, VALUES, 400, seed=1)
    for question, answer in asked:
        value = next(w for w in question.rstrip("?").split() if w in VALUES["shape"] | VALUES["colour"])
        truth = value in known.values()
        assert answer == ("yes" if truth != (" not " in question) else "no"), question
    assert 0.4 < Counter(a for _, a in asked)["yes"] / len(asked) < 0.6
    assert counterfactuals("img", {"colour": "red"}, pool, VALUES, 3, seed=0)[0][0].endswith("shape?")
    assert len(counterfactuals("img", {"colour": "red"}, pool, VALUES, 3, seed=0)) == 3  # unknown shape: none


def test_the_published_training_set_is_consistent_and_only_training_images_are_asked(tmp_path):
    from tasks.easy_vqa import EasyVQAConfig, EasyVQATask

    task = EasyVQATask(EasyVQAConfig(data_dir=str(tmp_path), counterfactual_yes_no=2))
    extra = task.counterfactual_layouts(2)  # raises if any training image's questions contradict
    train_images = {str(p) for r in task.examples("train") for p in r["images"]}
    assert {str(lay.media["image"][0]) for lay in extra} <= train_images
    assert {lay.meta["question_type"] for lay in extra} == {"yes/no"}
    assert all(lay.meta["id"].startswith("train-") for lay in extra)
    # 3,801 training images, most with both attributes known: about 2 x 2 questions each
    assert 12_000 < len(extra) < 4 * 3801
    assert len(task.train_layouts()) == 36643 + len(extra)
    with pytest.raises(ValueError, match="counterfactual_yes_no must be >= 0"):
        EasyVQAConfig(counterfactual_yes_no=-1)
