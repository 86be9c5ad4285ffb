"""The shapes VQA generator: determinism, disjoint splits, correct and unambiguous answers, shards."""

from __future__ import annotations

import io
import json
import random
import re
import tarfile
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from tasks.synthetic import shapes
from tasks.synthetic.shapes import (
    COLOURS,
    QUESTION_TYPES,
    ShapesConfig,
    answer_prior_baseline,
    generate_split,
    make_scene,
    qa_pairs,
    read_records,
    render,
    scene_signature,
    to_record,
    write_shapes_dataset,
)

SMALL = dict(train_scenes=120, validation_scenes=40, test_scenes=40, shard_size=50)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes")
    manifest = write_shapes_dataset(out, ShapesConfig(seed=3, **SMALL))
    return out, manifest


@pytest.fixture(scope="module")
def records(data_dir):
    out, _ = data_dir
    return {split: read_records(out, split, images=True) for split in shapes.SPLITS}


def _files(path):
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def test_same_seed_same_bytes_other_seed_other_bytes(data_dir, tmp_path):
    out, _ = data_dir
    write_shapes_dataset(tmp_path / "again", ShapesConfig(seed=3, **SMALL))
    write_shapes_dataset(tmp_path / "other", ShapesConfig(seed=4, **SMALL))
    assert _files(tmp_path / "again") == _files(out)
    assert _files(tmp_path / "other")["train-00000.tar"] != _files(out)["train-00000.tar"]


def test_splits_hold_disjoint_scenes(records):
    signatures = {s: [scene_signature(r["scene"]) for r in recs] for s, recs in records.items()}
    for split, sigs in signatures.items():
        assert len(set(sigs)) == len(sigs), f"duplicate scene within {split}"
    assert not set(signatures["train"]) & set(signatures["validation"])
    assert not set(signatures["train"]) & set(signatures["test"])
    assert not set(signatures["validation"]) & set(signatures["test"])


def test_duplicate_scenes_are_drawn_again():
    cfg = ShapesConfig(seed=0, validation_scenes=30)
    taken = {scene_signature(r["scene"]) for r in generate_split(cfg, "validation")}
    fresh = list(generate_split(cfg, "validation", seen=set(taken)))
    assert len(fresh) == 30 and not taken & {scene_signature(r["scene"]) for r in fresh}


def _unique(objs, **attrs):
    hits = [o for o in objs if all(o[k] == v for k, v in attrs.items())]
    assert len(hits) == 1, f"ambiguous reference {attrs}: {len(hits)} objects"
    return hits[0]


def _derive(scene, question, margin):
    """Answer a question from the object list alone, asserting that it is unambiguous."""
    objs = scene["objects"]
    if m := re.fullmatch(r"What colour is the (\w+)\?", question):
        return _unique(objs, shape=m[1])["colour"]
    if m := re.fullmatch(r"What shape is the (\w+) object\?", question):
        return _unique(objs, colour=m[1])["shape"]
    if question == "How many objects are there?":
        return str(len(objs))
    if m := re.fullmatch(r"How many (\w+) objects are there\?", question):
        return str(sum(o["colour"] == m[1] for o in objs))
    if m := re.fullmatch(r"How many (\w+)s are there\?", question):
        return str(sum(o["shape"] == m[1] for o in objs))
    if m := re.fullmatch(r"Is there an? (\w+) (\w+)\?", question):
        return "yes" if any(o["colour"] == m[1] and o["shape"] == m[2] for o in objs) else "no"
    if m := re.fullmatch(r"Is the (\w+) (\w+) (left of|right of|above|below) the (\w+) (\w+)\?", question):
        a, b = _unique(objs, colour=m[1], shape=m[2]), _unique(objs, colour=m[4], shape=m[5])
        axis = "x" if m[3] in ("left of", "right of") else "y"
        d = a[axis] - b[axis]
        assert abs(d) >= margin, f"too close to call: {question}"
        return "yes" if (d < 0) == (m[3] in ("left of", "above")) else "no"
    if m := re.fullmatch(r"Where is the (\w+) (\w+) relative to the (\w+) (\w+)\?", question):
        a, b = _unique(objs, colour=m[1], shape=m[2]), _unique(objs, colour=m[3], shape=m[4])
        dx, dy = a["x"] - b["x"], a["y"] - b["y"]
        main, other = (dx, dy) if abs(dx) > abs(dy) else (dy, dx)
        assert abs(main) >= margin and abs(other) <= abs(main) / 2, f"ambiguous direction: {question}"
        if main is dx:
            return "left" if dx < 0 else "right"
        return "above" if dy < 0 else "below"
    raise AssertionError(f"unknown question form: {question}")


def test_every_answer_follows_from_the_objects(records, data_dir):
    margin = data_dir[1]["config"]["position_margin"]
    seen_types = Counter()
    for recs in records.values():
        for rec in recs:
            qas = qa_pairs(rec)
            assert len({q for _, q, _ in qas}) == len(qas), "a question repeats within a scene"
            for qtype, q, answer in qas:
                assert _derive(rec["scene"], q, margin) == answer, (rec["id"], q)
                seen_types[qtype] += 1
    assert set(seen_types) == set(QUESTION_TYPES)


def _nearest_colour(pixel):
    names = list(COLOURS) + ["background"]
    refs = np.array(list(COLOURS.values()) + [shapes.BACKGROUND], dtype=float)
    return names[int(np.argmin(((refs - np.asarray(pixel, dtype=float)) ** 2).sum(-1)))]


def test_pixels_at_object_centres_have_the_answered_colour(records):
    for rec in records["validation"]:
        img = Image.open(io.BytesIO(rec["png"]))
        assert img.size == (64, 64) and img.mode == "RGB"
        for o in rec["scene"]["objects"]:
            assert _nearest_colour(img.getpixel((int(o["x"] * 64), int(o["y"] * 64)))) == o["colour"]
        for qtype, q, answer in qa_pairs(rec):
            if qtype == "colour":
                shape = re.fullmatch(r"What colour is the (\w+)\?", q)[1]
                o = _unique(rec["scene"]["objects"], shape=shape)
                assert _nearest_colour(img.getpixel((int(o["x"] * 64), int(o["y"] * 64)))) == answer


def test_render_is_reproducible_from_the_record_and_clutter_is_grey(records):
    rec = records["test"][0]
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(rec["png"]))), np.asarray(render(rec["scene"], 64)))
    empty = {**rec["scene"], "objects": []}
    pixels = np.asarray(render(empty, 64)).astype(int)
    assert (pixels.max(-1) - pixels.min(-1)).max() <= 1, "clutter must stay colourless"
    assert pixels.min() < 220, "clutter should be visible"
    assert render(rec["scene"], 32, antialias=False, noise_std=3.0).size == (32, 32)


def test_objects_stay_inside_and_never_overlap():
    cfg = ShapesConfig(min_objects=4, max_objects=4)
    rng = random.Random(0)
    for _ in range(200):
        objs = make_scene(rng, cfg)["objects"]
        assert len(objs) == 4
        for i, a in enumerate(objs):
            assert a["r"] <= a["x"] <= 1 - a["r"] and a["r"] <= a["y"] <= 1 - a["r"]
            for b in objs[i + 1 :]:
                reach = a["r"] + b["r"]
                assert abs(a["x"] - b["x"]) >= reach or abs(a["y"] - b["y"]) >= reach


def test_llava_conversation_layout(records):
    rec = records["train"][0]
    turns = rec["conversations"]
    assert [t["from"] for t in turns] == ["human", "gpt"] * 4
    assert turns[0]["value"].startswith("<image>\n")
    assert sum(t["value"].count("<image>") for t in turns) == 1
    assert len(rec["question_types"]) == 4 and rec["image"] == rec["id"] + ".png"


def test_shards_read_with_tarfile_and_webdataset(data_dir, records):
    out, manifest = data_dir
    shards = [out / s for s in manifest["splits"]["train"]["shards"]]
    assert [s.name for s in shards] == ["train-00000.tar", "train-00001.tar", "train-00002.tar"]
    with tarfile.open(shards[0]) as tar:
        names = tar.getnames()
    assert len(names) == 100 and names[:2] == ["train-000000.json", "train-000000.png"]
    wds = pytest.importorskip("webdataset")
    samples = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False).decode("pil"))
    assert len(samples) == 120
    assert samples[5]["__key__"] == "train-000005" and samples[5]["json"] == {
        k: v for k, v in records["train"][5].items() if k != "png"
    }
    assert samples[5]["png"].size == (64, 64)


def test_manifest_counts_match_the_shards(data_dir, records):
    out, manifest = data_dir
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["image_size"] == 64 and manifest["seed"] == 3 and manifest["version"] == shapes.GENERATOR_VERSION
    for split, recs in records.items():
        info = manifest["splits"][split]
        types = Counter(t for r in recs for t in r["question_types"])
        assert info["scenes"] == len(recs) and info["questions"] == 4 * len(recs)
        assert info["question_types"] == dict(types)
        assert sum(info["answers"].values()) == info["questions"]


def test_types_and_answers_are_balanced():
    cfg = ShapesConfig(seed=1, train_scenes=2500)
    recs = list(generate_split(cfg, "train"))
    qas = [qa for r in recs for qa in qa_pairs(r)]
    types = Counter(t for t, _, _ in qas)
    assert max(types.values()) - min(types.values()) <= 0.05 * len(qas) / 5
    yes = sum(a == "yes" for _, _, a in qas) / sum(a in ("yes", "no") for _, _, a in qas)
    assert 0.45 <= yes <= 0.55
    counts = Counter(a for t, _, a in qas if t == "count")
    assert set(counts) == {"0", "1", "2", "3", "4"} and max(counts.values()) / sum(counts.values()) < 0.35
    # a model blind to the image stays near chance on every type
    prior = answer_prior_baseline(recs, list(generate_split(ShapesConfig(seed=1, test_scenes=500), "test")))
    assert prior["colour"] < 0.25 and prior["shape"] < 0.28 and prior["exist"] < 0.57 and prior["count"] < 0.36


def test_answer_prior_baseline_by_hand():
    def rec(*qas):
        return to_record("x", {}, [{"type": t, "question": "q", "answer": a} for t, a in qas])

    train = [rec(("colour", "red"), ("exist", "no")), rec(("colour", "red"), ("exist", "yes")), rec(("colour", "blue"))]
    train.append(rec(("exist", "no")))
    evaluation = [rec(("colour", "red"), ("exist", "yes"), ("count", "1")), rec(("colour", "blue"), ("exist", "no"))]
    got = answer_prior_baseline(train, evaluation)
    assert got == {"colour": 0.5, "count": 0.0, "exist": 0.5, "overall": 2 / 5}


def test_bad_settings_name_the_value():
    with pytest.raises(ValueError, match="got 5, 2"):
        ShapesConfig(min_objects=5, max_objects=2)
    with pytest.raises(ValueError, match="image_size .* got 8"):
        ShapesConfig(image_size=8)
    with pytest.raises(KeyError, match="unknown split 'dev'"):
        ShapesConfig().scenes("dev")


def test_command_line_writes_and_prints(tmp_path, capsys):
    manifest = shapes.main(
        [str(tmp_path), "--seed", "7", "--train-scenes", "6", "--validation-scenes", "2", "--test-scenes", "2"]
    )
    manifest_text = capsys.readouterr().out
    assert '"seed": 7' in manifest_text and "wrote" in manifest_text
    assert manifest["splits"]["train"]["scenes"] == 6 and (tmp_path / "test-00000.tar").exists()
