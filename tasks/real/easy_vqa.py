"""easy-VQA, the published set (PyPI ``easy-vqa==1.0``, MIT): 64 x 64 images of one shape each, questions on
its shape, its colour and yes/no, 13 answers.

Read from the pinned wheel (multimodal/assets.py), never installed: ``easy_vqa/data/{train,test}/`` hold
``questions.json`` (a list of [question, answer, image id]) and ``images/<id>.png``; ``answers.txt`` the 13
answers. The official split is kept: train 4,000 images / 38,575 questions, test 1,000 / 9,673. The set
has no validation split: the train images whose id hashes into `validation` (5 % by default, seeded)
become one, so no image is on two sides. Each image is one LLaVA-format record (its questions as turns,
``<image>`` in the first) with ``question_types`` per turn from the answer: ``yes/no``, ``shape``
(circle, rectangle, triangle) or ``colour``; the VQA task scores them per type with the answer prior.
Written once under ``<data_dir>/<hash>`` as ``<split>.json`` + ``images/`` (tasks/real/built.py).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multimodal.assets import Asset, read_folder, read_member, register_asset, require
from tasks.real.splits import hash_split

log = logging.getLogger(__name__)

EASY_VQA = register_asset(
    Asset(
        name="easy_vqa",
        source="pypi",
        package="easy-vqa",
        version="1.0",
        filename="easy_vqa-1.0-py3-none-any.whl",
        sha256="fcb51b309b78c7b00f97b64cdbcbcf5c105f94da1b39c0796cee5a787c4f650f",
        members=("easy_vqa/data/answers.txt", "easy_vqa/data/train/", "easy_vqa/data/test/"),
        licence="MIT",
        what="easy-VQA: 5,000 64x64 shape images, 48,248 questions, 13 answers (official train/test)",
    )
)

SHAPES = ("circle", "rectangle", "triangle")


@dataclass(frozen=True)
class EasyVQABuild:
    """How the records are cut: the share of train images held out as validation, and its seed."""

    validation: float = 0.05
    seed: int = 0


def question_type(answer: str) -> str:
    """``yes/no``, ``shape`` or ``colour``, from the answer (the set's three kinds of question)."""
    return "yes/no" if answer in ("yes", "no") else "shape" if answer in SHAPES else "colour"


def easy_vqa_records(official: str, files: dict[str, bytes]) -> tuple[list[dict[str, Any]], dict[str, bytes]]:
    """One record per image of the official split `official` and the image bytes by relative path."""
    prefix = f"easy_vqa/data/{official}/"
    try:
        questions = json.loads(files[f"{prefix}questions.json"])
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"easy-VQA {official}: questions.json is missing or not JSON ({err})") from None
    by_image: dict[int, list[tuple[str, str]]] = {}
    for row in questions:
        if not (isinstance(row, list) and len(row) == 3):
            raise ValueError(f"easy-VQA {official}: a question row is not [question, answer, image id]: {row!r}")
        by_image.setdefault(int(row[2]), []).append((str(row[0]), str(row[1])))
    records, images = [], {}
    for image_id in sorted(by_image):
        member = f"{prefix}images/{image_id}.png"
        if member not in files:
            raise ValueError(f"easy-VQA {official}: image {image_id} is asked about but {member} is missing")
        name = f"images/{official}/{image_id}.png"
        images[name] = files[member]
        turns = []
        for i, (question, answer) in enumerate(by_image[image_id]):
            turns.append({"from": "human", "value": f"<image>\n{question}" if i == 0 else question})
            turns.append({"from": "gpt", "value": answer})
        types = [question_type(a) for _, a in by_image[image_id]]
        records.append({"id": f"{official}-{image_id}", "image": name, "conversations": turns, "question_types": types})
    return records, images


def write_easy_vqa_dataset(folder: Path, build: EasyVQABuild) -> dict[str, Any]:
    """``<split>.json`` for train / validation / test and the images under `folder`; returns the manifest."""
    require(EASY_VQA)
    answers = read_member(EASY_VQA, "easy_vqa/data/answers.txt").decode().split()
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "validation": [], "test": []}
    for official in ("train", "test"):
        records, images = easy_vqa_records(official, read_folder(EASY_VQA, f"easy_vqa/data/{official}/"))
        for name, data in images.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes(data)
        for record in records:
            unknown = {t["value"] for t in record["conversations"][1::2]} - set(answers)
            if unknown:
                raise ValueError(f"easy-VQA {record['id']}: answers {sorted(unknown)} are not in answers.txt")
            held = (
                official == "train"
                and hash_split(record["id"], (1 - build.validation, build.validation, 0), build.seed) == "validation"
            )
            splits["validation" if held else official].append(record)
    for split, records in splits.items():
        (folder / f"{split}.json").write_text(json.dumps(records))
    manifest = {
        "asset": f"{EASY_VQA.package}=={EASY_VQA.version} sha256:{EASY_VQA.sha256}",
        "answers": answers,
        "images": {s: len(r) for s, r in splits.items()},
        "questions": {s: sum(len(x["conversations"]) // 2 for x in r) for s, r in splits.items()},
        "build": {"validation": build.validation, "seed": build.seed},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    log.info("easy-VQA: %s images, %s questions", manifest["images"], manifest["questions"])
    return manifest
