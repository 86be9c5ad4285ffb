"""easy-VQA from the pinned wheel: the published counts, the official split kept, and the VQA task's measures."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from multimodal.assets import read_folder
from tasks.easy_vqa import EasyVQAConfig, EasyVQATask
from tasks.real.easy_vqa import EASY_VQA, easy_vqa_records, question_type


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    return EasyVQATask(EasyVQAConfig(data_dir=str(tmp_path_factory.mktemp("easy_vqa"))))


def test_the_wheel_gives_the_published_counts_and_split(task):
    # the set's own README: 4,000 train images / 38,575 questions, 1,000 test / 9,673; yes/no 28,407 and 7,136
    train = [*task.examples("train"), *task.examples("validation")]
    test = task.examples("test")
    assert (len(train), len(test)) == (4000, 1000)
    questions = {s: [t for r in rs for t in r["question_types"]] for s, rs in (("train", train), ("test", test))}
    assert (len(questions["train"]), len(questions["test"])) == (38575, 9673)
    assert (Counter(questions["train"])["yes/no"], Counter(questions["test"])["yes/no"]) == (28407, 7136)
    ids = {s: {r["id"] for r in task.examples(s)} for s in ("train", "validation", "test")}
    assert not ids["train"] & ids["validation"] and all(i.startswith("test-") for i in ids["test"])
    assert 150 < len(ids["validation"]) < 250  # 5 % of the train images, by a seeded hash of the image id


def test_the_task_scores_per_type_with_the_prior_and_the_control(task):
    layouts = task.eval_layouts("test")
    assert len(layouts) == 9673 and {lay.meta["question_type"] for lay in layouts} == {"yes/no", "shape", "colour"}
    assert all(len(lay.media["image"]) == 1 and lay.prompt.startswith("<image>") for lay in layouts[:50])
    metrics = task.metrics([lay.answer for lay in layouts], layouts)
    assert metrics["accuracy/shape"] == 1.0 and 0.3 < metrics["prior/shape"] < 0.5  # three shapes
    assert 0.4 < metrics["prior/yes/no"] < 0.7
    blind = EasyVQATask(EasyVQAConfig(data_dir=task.config.data_dir, text_only=True)).eval_layouts("test")[0]
    assert "<image>" not in blind.prompt and not blind.media["image"]


def test_records_name_the_broken_part():
    files = read_folder(EASY_VQA, "easy_vqa/data/test/")
    files.pop("easy_vqa/data/test/images/7.png")
    with pytest.raises(ValueError, match="image 7 is asked about but easy_vqa/data/test/images/7.png is missing"):
        easy_vqa_records("test", files)
    files["easy_vqa/data/test/questions.json"] = json.dumps([["what shape?", "circle"]]).encode()
    with pytest.raises(ValueError, match="not \\[question, answer, image id\\]"):
        easy_vqa_records("test", files)
    assert [question_type(a) for a in ("no", "triangle", "teal")] == ["yes/no", "shape", "colour"]


def test_balancing_equalises_yes_and_no_within_each_wording():
    from tasks.base import Layout
    from tasks.easy_vqa import balance_yes_no

    def lay(prompt, answer, qtype="yes/no"):
        return Layout(prompt=f"<image>\n{prompt}", answer=answer, meta={"question_type": qtype}, media={"image": []})

    layouts = [lay("what is the color of the shape?", c, "colour") for c in ("red", "blue", "green")]
    layouts += [lay("is there a red shape?", "no"), lay("is there a blue shape?", "no"),
                lay("is there a green shape?", "yes"), lay("is there not a circle?", "yes")]  # fmt: skip
    out = balance_yes_no(layouts)
    assert out[: len(layouts)] == layouts  # nothing dropped, the original order first
    colour = Counter(x.answer for x in out if "shape?" in x.prompt and x.meta["question_type"] == "yes/no")
    assert colour == Counter({"yes": 2, "no": 2})  # the 'green' question repeated once
    assert sum("not a circle" in x.prompt for x in out) == 1  # one answer only: left alone
