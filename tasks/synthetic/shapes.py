"""Shapes VQA: the embedded vision-language data set, generated offline and deterministically.

Each scene holds 1-4 coloured shapes (circle, square, triangle, diamond, star in six saturated
colours, two sizes) on a plain background with grey clutter (specks, thin lines, optional pixel noise)
that is never an object. Every scene gets questions of five types with exact answers, asked only
where the answer is unique: ``colour``, ``shape``, ``count``, ``exist`` and ``position``.

The data are built so that answers come from the image alone: colours, shapes and positions are
drawn uniformly, yes/no answers are balanced, question types are balanced across each split, and
count answers are spread over 0..4. A text-only model therefore stays near the per-type answer
prior, which `answer_prior_baseline` measures (0.28 overall with the defaults); knowing the exact
wording helps it only a little (about 0.30 by memorising each question's commonest answer, mostly
on count questions, where "How many red objects" is usually 0 or 1). A vision-language model
(LLaDA-V recipe, PAPERS.md section 3) should clear it by a wide margin.

Samples are LLaVA-style multi-turn conversations (``<image>`` once, in the first human turn) in
WebDataset tar shards (``<key>.png`` + ``<key>.json``), written with fixed metadata in a fixed
order so that one seed always gives byte-identical shards. Splits never share a scene: a canonical
signature of the objects guards against duplicates. Positions and radii are stored as fractions of
the image side, so a scene renders at any resolution.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import random
import tarfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from tasks.records import write_shard_index

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "1"
SPLITS = ("train", "validation", "test")
SHAPES = ("circle", "square", "triangle", "diamond", "star")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 80, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 190),
    "orange": (245, 130, 20),
}
SIZES = {"small": 0.08, "large": 0.14}  # half-extent of the bounding box, as a fraction of the image side
QUESTION_TYPES = ("colour", "shape", "count", "exist", "position")
BACKGROUND = (235, 235, 235)
IMAGE_TOKEN = "<image>"
_GAP = 0.03  # free space between object boxes
_BORDER = 0.02  # free space between an object box and the canvas edge
_SUPERSAMPLE = 4


@dataclass
class ShapesConfig:
    """Settings of the shapes VQA data set.

    Attributes:
        seed: seed of everything generated.
        image_size: side of the square RGB images, in pixels.
        train_scenes, validation_scenes, test_scenes: scenes (= samples) per split.
        questions_per_scene: questions asked about each scene (turns of its conversation).
        min_objects, max_objects: range of the number of objects in a scene (1 <= min <= max <= 6).
        shard_size: most samples per tar shard.
        antialias: draw at 4x resolution and downsample.
        noise_std: standard deviation of the Gaussian pixel noise; 0 (the default) turns it off, since
            noise makes the PNGs 7x larger and slower to write.
        position_margin: least centre distance along an axis, as a fraction of the image side, for a
            left/right/above/below relation to be asked.
    """

    seed: int = 0
    image_size: int = 64
    train_scenes: int = 10000
    validation_scenes: int = 500
    test_scenes: int = 1000
    questions_per_scene: int = 4
    min_objects: int = 1
    max_objects: int = 4
    shard_size: int = 1000
    antialias: bool = True
    noise_std: float = 0.0
    position_margin: float = 0.1

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= 6:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 6, got {self.min_objects}, {self.max_objects}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {self.image_size}")
        if self.questions_per_scene < 1:
            raise ValueError(f"questions_per_scene must be positive, got {self.questions_per_scene}")
        if self.shard_size < 1:
            raise ValueError(f"shard_size must be positive, got {self.shard_size}")
        if min(sizes := [getattr(self, f"{s}_scenes") for s in SPLITS]) < 0:
            raise ValueError(f"scenes per split must be non-negative, got {dict(zip(SPLITS, sizes, strict=True))}")
        if not 0.0 < self.position_margin < 0.5:
            raise ValueError(f"position_margin must lie in (0, 0.5), got {self.position_margin}")

    def scenes(self, split: str) -> int:
        if split not in SPLITS:
            raise KeyError(f"unknown split '{split}' (splits: {', '.join(SPLITS)})")
        return getattr(self, f"{split}_scenes")


# ----------------------------------------------------------------------------------------------- scenes


def make_scene(rng: random.Random, cfg: ShapesConfig) -> dict[str, Any]:
    """Draw one scene: non-overlapping objects inside the canvas, plus clutter and a noise seed.

    Args:
        rng: source of all randomness.
        cfg: object count range; other fields are ignored.

    Returns:
        ``{"objects": [{"shape", "colour", "size", "x", "y", "r"}], "clutter": {"specks", "lines"},
        "noise_seed"}``; x, y (centre) and r (half-extent of the bounding box) are fractions of the
        image side, y growing downwards.
    """
    for _ in range(100):
        objects = []
        for _ in range(rng.randint(cfg.min_objects, cfg.max_objects)):
            size = rng.choice(tuple(SIZES))
            r = SIZES[size]
            for _ in range(200):
                x, y = (round(rng.uniform(r + _BORDER, 1 - r - _BORDER), 4) for _ in range(2))
                if all(_apart(x, y, r, o) for o in objects):
                    break
            else:
                break  # crowded: start the scene again
            objects.append({"shape": rng.choice(SHAPES), "colour": rng.choice(tuple(COLOURS)), "size": size})
            objects[-1].update(x=x, y=y, r=r)
        else:
            specks = [[round(rng.random(), 4), round(rng.random(), 4)] for _ in range(rng.randint(2, 6))]
            lines = [[round(rng.random(), 4) for _ in range(4)] for _ in range(rng.randint(0, 2))]
            return {
                "objects": objects,
                "clutter": {"specks": specks, "lines": lines},
                "noise_seed": rng.getrandbits(32),
            }
    raise RuntimeError(f"could not place {cfg.max_objects} objects without overlap; lower max_objects")


def _apart(x: float, y: float, r: float, other: dict[str, Any]) -> bool:
    """Bounding boxes separated by at least the gap along one axis."""
    reach = r + other["r"] + _GAP
    return abs(x - other["x"]) >= reach or abs(y - other["y"]) >= reach


def scene_signature(scene: dict[str, Any]) -> str:
    """Canonical text of a scene's objects (order-free, positions to 1/1000): equal scenes, equal text."""
    keys = sorted(f"{o['shape']}:{o['colour']}:{o['size']}:{o['x']:.3f}:{o['y']:.3f}" for o in scene["objects"])
    return "|".join(keys)


def render(scene: dict[str, Any], image_size: int, antialias: bool = True, noise_std: float = 0.0) -> Image.Image:
    """Draw a scene.

    Args:
        scene: as returned by `make_scene`.
        image_size: side of the output image in pixels.
        antialias: draw at 4x resolution and box-downsample.
        noise_std: Gaussian pixel noise (seeded by the scene), 0 for none.

    Returns:
        RGB image of size (image_size, image_size).
    """
    f = _SUPERSAMPLE if antialias else 1
    side = image_size * f
    img = Image.new("RGB", (side, side), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for x0, y0, x1, y1 in scene["clutter"]["lines"]:
        draw.line([(x0 * side, y0 * side), (x1 * side, y1 * side)], fill=(190, 190, 190), width=f)
    for x, y in scene["clutter"]["specks"]:
        rad = 0.6 * f
        draw.ellipse([x * side - rad, y * side - rad, x * side + rad, y * side + rad], fill=(140, 140, 140))
    for o in scene["objects"]:
        _draw_shape(draw, o["shape"], o["x"] * side, o["y"] * side, o["r"] * side, COLOURS[o["colour"]])
    if f > 1:
        img = img.reduce(f)
    if noise_std > 0:
        noise = np.random.default_rng(scene["noise_seed"]).normal(0.0, noise_std, (image_size, image_size, 3))
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).round().astype(np.uint8))
    return img


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, x: float, y: float, r: float, fill: tuple) -> None:
    """Every shape fits the box [x-r, x+r] x [y-r, y+r] and covers its centre (x, y)."""
    if shape == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape == "square":
        h = 0.85 * r  # a full-box square would look much heavier than the other shapes
        draw.rectangle([x - h, y - h, x + h, y + h], fill=fill)
    elif shape == "triangle":
        draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
    elif shape == "star":
        angles = [-np.pi / 2 + k * np.pi / 5 for k in range(10)]
        radii = [r if k % 2 == 0 else 0.45 * r for k in range(10)]
        draw.polygon([(x + q * np.cos(a), y + q * np.sin(a)) for a, q in zip(angles, radii, strict=True)], fill=fill)
    else:
        raise ValueError(f"unknown shape '{shape}' (shapes: {', '.join(SHAPES)})")


# -------------------------------------------------------------------------------------------- questions


def _candidates(scene: dict[str, Any], cfg: ShapesConfig) -> dict[str, list[tuple[str, str]]]:
    """All unambiguous (question, answer) pairs of each type for a scene."""
    objs = scene["objects"]
    shapes, colours = Counter(o["shape"] for o in objs), Counter(o["colour"] for o in objs)
    pairs = Counter((o["colour"], o["shape"]) for o in objs)
    out: dict[str, list[tuple[str, str]]] = {t: [] for t in QUESTION_TYPES}
    for o in objs:
        if shapes[o["shape"]] == 1:
            out["colour"].append((f"What colour is the {o['shape']}?", o["colour"]))
        if colours[o["colour"]] == 1:
            out["shape"].append((f"What shape is the {o['colour']} object?", o["shape"]))
    out["count"].append(("How many objects are there?", str(len(objs))))
    out["count"] += [(f"How many {s}s are there?", str(shapes[s])) for s in SHAPES]
    out["count"] += [(f"How many {c} objects are there?", str(colours[c])) for c in COLOURS]
    for c in COLOURS:
        for s in SHAPES:
            # "no" questions are near misses (colour or shape present), so only binding the two answers them
            if pairs[c, s] or c in colours or s in shapes:
                art = "an" if c[0] in "aeiou" else "a"
                out["exist"].append((f"Is there {art} {c} {s}?", "yes" if pairs[c, s] else "no"))
    named = [o for o in objs if pairs[o["colour"], o["shape"]] == 1]
    for a in named:
        for b in named:
            if a is b:
                continue
            dx, dy = a["x"] - b["x"], a["y"] - b["y"]
            sa, sb = f"{a['colour']} {a['shape']}", f"{b['colour']} {b['shape']}"
            for rel, d in (("left of", -dx), ("right of", dx), ("above", -dy), ("below", dy)):
                if abs(d) >= cfg.position_margin:  # d > 0 means the relation holds
                    out["position"].append((f"Is the {sa} {rel} the {sb}?", "yes" if d > 0 else "no"))
            # an open "where" question only when one axis clearly dominates the other
            for word_neg, word_pos, main, other in (("left", "right", dx, dy), ("above", "below", dy, dx)):
                if abs(main) >= cfg.position_margin and abs(other) <= abs(main) / 2:
                    answer = word_pos if main > 0 else word_neg
                    out["position"].append((f"Where is the {sa} relative to the {sb}?", answer))
    return out


def _pick(rng: random.Random, qtype: str, cands: list[tuple[str, str]]) -> tuple[str, str]:
    """Choose a question of one type, balancing its answers: draw the answer first, then a question."""
    by_answer: dict[str, list[tuple[str, str]]] = {}
    for q, a in cands:
        by_answer.setdefault(a, []).append(q)
    answers = sorted(by_answer)
    if qtype == "count":
        # large counts only exist in crowded scenes; weighting them up spreads count answers over 0..4
        answer = rng.choices(answers, weights=[max(1.0, float(a)) for a in answers])[0]
    elif qtype == "position":
        # yes/no and open forms equally often; within a form each available answer equally often
        forms = sorted({"yesno" if a in ("yes", "no") else "open" for a in answers})
        form = rng.choice(forms)
        answer = rng.choice([a for a in answers if (a in ("yes", "no")) == (form == "yesno")])
    elif qtype == "exist":
        answer = rng.choice(answers)
    else:  # colour and shape: every object is equally likely to be asked about
        return rng.choice(cands)
    return rng.choice(by_answer[answer]), answer


def questions(
    scene: dict[str, Any], rng: random.Random, cfg: ShapesConfig, type_counts: Counter | None = None
) -> list[dict[str, str]]:
    """Ask `cfg.questions_per_scene` distinct questions with unique answers about a scene.

    Types are chosen so that a scene's questions differ in type where possible and, given a running
    `type_counts` shared over a split, so that each type is asked about equally often.

    Args:
        scene: as returned by `make_scene`.
        rng: source of randomness.
        cfg: questions per scene and position margin.
        type_counts: running count of questions per type; updated in place. None balances within
            the scene only.

    Returns:
        ``[{"type", "question", "answer"}]`` with answers lower-case words or digit strings.
    """
    type_counts = Counter() if type_counts is None else type_counts
    cands = _candidates(scene, cfg)
    used, asked, out = Counter(), set(), []
    for _ in range(cfg.questions_per_scene):
        open_types = [t for t in QUESTION_TYPES if any(q not in asked for q, _ in cands[t])]
        if not open_types:
            break
        # prefer types not yet asked in this scene, unless a type lags far behind over the split (position
        # questions need two objects, so multi-object scenes make up for the single-object ones)
        qtype = min(open_types, key=lambda t: (type_counts[t] + 3 * used[t], rng.random()))
        q, a = _pick(rng, qtype, [(q, a) for q, a in cands[qtype] if q not in asked])
        used[qtype] += 1
        type_counts[qtype] += 1
        asked.add(q)
        out.append({"type": qtype, "question": q, "answer": a})
    return out


def to_record(key: str, scene: dict[str, Any], qas: Sequence[dict[str, str]]) -> dict[str, Any]:
    """LLaVA-style sample: alternating human/gpt turns, the image placeholder once in the first turn."""
    conversations = []
    for i, qa in enumerate(qas):
        prefix = f"{IMAGE_TOKEN}\n" if i == 0 else ""
        conversations += [{"from": "human", "value": prefix + qa["question"]}, {"from": "gpt", "value": qa["answer"]}]
    return {
        "id": key,
        "image": f"{key}.png",
        "scene": scene,
        "conversations": conversations,
        "question_types": [qa["type"] for qa in qas],
    }


def qa_pairs(record: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, question, answer) triples of a record, placeholder removed."""
    turns = record["conversations"]
    qs = [t["value"].replace(f"{IMAGE_TOKEN}\n", "") for t in turns[0::2]]
    return list(zip(record["question_types"], qs, [t["value"] for t in turns[1::2]], strict=True))


# ----------------------------------------------------------------------------------------------- splits


def generate_split(cfg: ShapesConfig, split: str, seen: set[str] | None = None) -> Iterator[dict[str, Any]]:
    """Records of one split, in order; the images are rendered from ``record["scene"]``.

    Args:
        cfg: the data set settings.
        split: ``train``, ``validation`` or ``test``.
        seen: signatures of scenes already used (other splits); updated in place. A scene whose
            signature is in it is drawn again, which keeps splits disjoint.
    """
    n = cfg.scenes(split)
    seen = set() if seen is None else seen
    rng = random.Random(f"shapes/{cfg.seed}/{split}")  # str seeds are hashed with SHA-512: stable across runs
    type_counts: Counter = Counter()
    for i in range(n):
        for _ in range(1000):
            scene = make_scene(rng, cfg)
            sig = scene_signature(scene)
            if sig not in seen:
                break
        else:
            raise RuntimeError(f"no new scene in 1000 draws for {split} scene {i}; the scene space is exhausted")
        seen.add(sig)
        qrng = random.Random(rng.getrandbits(64))  # questions never shift later scenes
        yield to_record(f"{split}-{i:06d}", scene, questions(scene, qrng, cfg, type_counts))


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)  # fixed metadata: the same content always gives the same bytes
    info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(data), 0, 0o644, 0, 0, "", ""
    tar.addfile(info, io.BytesIO(data))


def write_shapes_dataset(out_dir: str | Path, cfg: ShapesConfig) -> dict[str, Any]:
    """Write every split as WebDataset shards plus ``manifest.json``.

    Shards are ``<out_dir>/<split>-<index:05d>.tar``, at most `cfg.shard_size` samples each; a sample
    is ``<key>.json`` (the record) followed by ``<key>.png``.

    Returns:
        The manifest: generator version, config, vocabulary, and per split the scene, question and
        shard lists and the counts per question type and per (type, answer).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    seen: set[str] = set()
    manifest: dict[str, Any] = dict(generator="tasks.synthetic.shapes", version=GENERATOR_VERSION, seed=cfg.seed)
    manifest.update(image_size=cfg.image_size, config=asdict(cfg), shapes=list(SHAPES), colours=list(COLOURS))
    manifest.update(question_types=list(QUESTION_TYPES), splits={})
    for split in SPLITS:
        shards, types, answers, n_questions = [], Counter(), Counter(), 0
        tar = None
        for i, rec in enumerate(generate_split(cfg, split, seen)):
            if i % cfg.shard_size == 0:
                if tar is not None:
                    tar.close()
                shards.append(f"{split}-{len(shards):05d}.tar")
                tar = tarfile.open(out / shards[-1], "w", format=tarfile.USTAR_FORMAT)
            _add(tar, f"{rec['id']}.json", json.dumps(rec, sort_keys=True, separators=(",", ":")).encode())
            _add(tar, f"{rec['id']}.png", _png(render(rec["scene"], cfg.image_size, cfg.antialias, cfg.noise_std)))
            for qtype, _, answer in qa_pairs(rec):
                types[qtype] += 1
                answers[f"{qtype}:{answer}"] += 1
                n_questions += 1
        if tar is not None:
            tar.close()
        scenes = cfg.scenes(split)
        write_shard_index(
            out, {name: min(cfg.shard_size, scenes - i * cfg.shard_size) for i, name in enumerate(shards)}
        )
        manifest["splits"][split] = {
            "scenes": cfg.scenes(split),
            "questions": n_questions,
            "shards": shards,
            "question_types": dict(sorted(types.items())),
            "answers": dict(sorted(answers.items())),
        }
        logger.info("shapes %s: %d scenes, %d questions, %d shards", split, cfg.scenes(split), n_questions, len(shards))
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def read_records(out_dir: str | Path, split: str, images: bool = False) -> list[dict[str, Any]]:
    """Records of a written split, in order; with `images`, each gets ``"png"`` (the encoded bytes)."""
    manifest = json.loads((Path(out_dir) / "manifest.json").read_text())
    if split not in manifest["splits"]:
        raise KeyError(f"unknown split '{split}' in {out_dir} (splits: {', '.join(manifest['splits'])})")
    records: dict[str, dict[str, Any]] = {}
    for shard in manifest["splits"][split]["shards"]:
        with tarfile.open(Path(out_dir) / shard) as tar:
            for member in tar:
                key, ext = member.name.rsplit(".", 1)
                data = tar.extractfile(member).read()
                if ext == "json":
                    records[key] = {**json.loads(data), **records.get(key, {})}
                elif images:
                    records.setdefault(key, {})["png"] = data
    return list(records.values())


def answer_prior_baseline(
    train_records: Sequence[dict[str, Any]], eval_records: Sequence[dict[str, Any]]
) -> dict[str, float]:
    """Accuracy, per question type, of always giving the type's most frequent training answer.

    This is what a model that ignores the image and the question wording can reach. Ties between
    answers go to the alphabetically first one; a type absent from training scores 0.

    Returns:
        ``{type: accuracy}`` for each type in `eval_records`, plus ``"overall"`` over all questions.
    """
    train = {}
    for qtype, _, answer in (t for r in train_records for t in qa_pairs(r)):
        train.setdefault(qtype, Counter())[answer] += 1
    prior = {t: min(c.items(), key=lambda kv: (-kv[1], kv[0]))[0] for t, c in train.items()}
    hits, totals = Counter(), Counter()
    for qtype, _, answer in (t for r in eval_records for t in qa_pairs(r)):
        totals[qtype] += 1
        hits[qtype] += prior.get(qtype) == answer
    if not totals:
        raise ValueError("no evaluation questions to score")
    out = {t: hits[t] / totals[t] for t in sorted(totals)}
    out["overall"] = sum(hits.values()) / sum(totals.values())
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="Write the shapes VQA data set as WebDataset shards.")
    parser.add_argument("out_dir")
    defaults = ShapesConfig()
    for name, value in asdict(defaults).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=value)
        else:
            parser.add_argument(flag, type=type(value), default=value)
    args = vars(parser.parse_args(argv))
    out_dir = args.pop("out_dir")
    start = time.perf_counter()
    manifest = write_shapes_dataset(out_dir, ShapesConfig(**args))
    print(json.dumps(manifest, indent=2, sort_keys=True))
    print(f"wrote {out_dir} in {time.perf_counter() - start:.1f} s")
    return manifest


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
