"""Writing training data as WebDataset shards, one function per modality, with a progress bar.

The sources are read and validated by the tasks' own readers, so a shard never holds a record the
task would reject later (bad records are skipped and counted, or raise, under `policy`):

* images: a LLaVA-format JSON file + image folder (tasks/vqa_data.py `read_llava_json`) -> samples
  ``<key>.json`` (id, conversations, other fields, ``image``: the member names) + the image bytes as
  stored (``<key>.jpg|png|...``; ``<key>.<i>.<ext>`` for several images). Read back by `read_shards`.
* audio: a LibriSpeech-style folder, a folder of audio files with a ``.txt`` transcript beside each,
  a JSON-lines manifest (tasks/asr_data.py) or a TSV manifest with a header naming the audio column
  (``path``/``audio``/``audio_filepath``/``file``) and the transcript column (``text``/``sentence``/
  ``transcript``) -> ``<key>.flac|wav|...`` (bytes as stored) + ``<key>.json`` (id, text, metadata).
  Read back by `read_speech_shards`.
* proteins: FASTA (tasks/protein_io.py `read_fasta`) -> ``<key>.json`` (id, description, sequence)
  or ``<key>.txt`` (the residues); a pair file (TSV/CSV, `read_pairs`) -> ``<key>.json`` (seq_a,
  seq_b, label, id_a, id_b). Read by the protein tasks' `layouts_from_sample`.

Shards are ``<out_dir>/<prefix>-%06d.tar`` cut by `webdataset.ShardWriter` at `maxcount` samples or
`maxsize` bytes, with fixed tar metadata (the same input gives the same bytes). Keys are the sample
number (no dots: WebDataset splits a member name at its first dot); original ids stay in the JSON.
Default prefixes match what the tasks look for: ``<split>`` for images and audio (``data: <out_dir>``),
``proteins-<split>`` / ``pairs-<split>`` for proteins (``data: <folder>`` with the shards in
``<folder>/shards``, or ``files: {train: <out_dir>/proteins-train-*.tar}``).

Command line (``python -m tasks.shard_writer`` or ``mmdiff shards``)::

    images   ANNOTATION.json OUT_DIR [--image-root DIR]
    audio    FOLDER|MANIFEST.jsonl|MANIFEST.tsv OUT_DIR
    proteins FILE.fasta|PAIRS.tsv OUT_DIR [--member json|txt] [--invalid error|skip|map_to_x]
    common:  [--split train] [--prefix P] [--maxcount 10000] [--maxsize 1e9] [--policy skip|fail]
             [--overwrite] [--no-progress]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from tasks.records import Policy, ReadStats, keep, write_shard_index

log = logging.getLogger(__name__)


@dataclass
class WrittenShards:
    """What a writer did: the shard files, the samples written and the source records skipped by reason."""

    shards: list[str]
    samples: int
    skipped: dict[str, int]


def _write(
    samples: Iterable[dict[str, Any]],
    total: int,
    out_dir: str | Path,
    prefix: str,
    maxcount: int,
    maxsize: float,
    overwrite: bool,
    progress: bool,
) -> tuple[list[str], int]:
    import webdataset as wds
    from tqdm.auto import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = sorted(out.glob(f"{prefix}-*.tar"))
    if old and not overwrite:
        raise FileExistsError(f"{out} already holds {len(old)} shards {prefix}-*.tar (overwrite=True replaces them)")
    for path in old:
        path.unlink()
    if total == 0:
        raise ValueError(f"no usable records to write as {out}/{prefix}-*.tar")
    shards: list[str] = []
    counts: dict[str, int] = {}
    n = 0

    def done(name: str) -> None:  # called as each shard is closed, before its count is reset
        shards.append(name)
        counts[Path(name).name] = sink.count

    with wds.ShardWriter(
        str(out / f"{prefix}-%06d.tar"), maxcount=maxcount, maxsize=maxsize, post=done, verbose=0, mtime=0.0
    ) as sink:
        for sample in tqdm(samples, total=total, desc=f"writing {prefix}", unit="sample", disable=not progress):
            sink.write(sample)
            n += 1
    write_shard_index(out, counts)
    log.info("wrote %d samples in %d shards to %s", n, len(shards), out)
    return shards, n


def _json(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, default=str).encode()


def write_image_shards(
    annotation: str | Path,
    out_dir: str | Path,
    *,
    image_root: str | Path | None = None,
    prefix: str = "train",
    maxcount: int = 10_000,
    maxsize: float = 1e9,
    policy: Policy = "skip",
    overwrite: bool = False,
    progress: bool = True,
) -> WrittenShards:
    """LLaVA JSON + images -> shards that `tasks.vqa_data.read_shards` reads back (module docstring)."""
    from tasks.vqa_data import read_llava_json

    records, stats = read_llava_json(annotation, image_root, policy)

    def samples() -> Iterable[dict[str, Any]]:
        for i, rec in enumerate(records):
            key = f"{i:09d}"
            images: list[Path] = rec["images"]
            members = [
                (f"{j}." if len(images) > 1 else "") + (p.suffix.lstrip(".").lower() or "png")
                for j, p in enumerate(images)
            ]
            meta = {k: v for k, v in rec.items() if k != "images"}
            meta["image"] = [f"{key}.{m}" for m in members]
            yield {
                "__key__": key,
                "json": _json(meta),
                **{m: p.read_bytes() for m, p in zip(members, images, strict=True)},
            }

    shards, n = _write(samples(), len(records), out_dir, prefix, maxcount, maxsize, overwrite, progress)
    return WrittenShards(shards, n, dict(stats.skipped))


def _audio_records(source: Path, policy: Policy) -> tuple[list[dict[str, Any]], dict[str, int]]:
    from tasks.asr_data import AUDIO_EXTENSIONS, read_librispeech, read_manifest, validate

    if source.suffix == ".jsonl":
        records, stats = read_manifest(source, policy)
        return records, dict(stats.skipped)
    if source.is_dir() and any(source.glob("*/*/*.trans.txt")):
        records, stats = read_librispeech(source, policy)
        return records, dict(stats.skipped)
    if source.is_dir():  # audio files with a .txt transcript beside each
        audio = [p for p in sorted(source.rglob("*")) if p.suffix.lstrip(".").lower() in AUDIO_EXTENSIONS]
        rows = [{"id": p.stem, "audio": p, "text": _transcript(p.with_suffix(".txt"))} for p in audio]
    elif source.suffix in (".tsv", ".csv"):
        rows = _table_rows(source)
    else:
        raise ValueError(f"{source}: expected a folder, a .jsonl manifest or a .tsv/.csv manifest")
    stats, out = ReadStats(), []
    for row in rows:
        keep(row, validate, policy, stats, out)
    return out, dict(stats.skipped)


def _transcript(path: Path) -> str | None:
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


def _table_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a TSV/CSV manifest with a header (module docstring); audio paths relative to its folder."""
    lines = path.read_text(encoding="utf-8").splitlines()
    reader = csv.DictReader(lines, delimiter="\t" if path.suffix == ".tsv" else ",")
    header = {h.strip().lower(): h for h in reader.fieldnames or []}
    audio_col = next((header[c] for c in ("path", "audio", "audio_filepath", "file") if c in header), None)
    text_col = next((header[c] for c in ("text", "sentence", "transcript") if c in header), None)
    if audio_col is None or text_col is None:
        raise ValueError(f"{path}: the header {reader.fieldnames} needs an audio column and a transcript column")
    rows = []
    for n, row in enumerate(reader, start=1):
        audio = (row.get(audio_col) or "").strip()
        rows.append({
            **{k: v for k, v in row.items() if k not in (audio_col, text_col) and k},
            "id": str(row.get("id") or Path(audio).stem or f"{path.stem}-{n}"),
            "audio": path.parent / audio if audio else None,
            "text": row.get(text_col),
        })  # fmt: skip
    return rows


def write_audio_shards(
    source: str | Path,
    out_dir: str | Path,
    *,
    prefix: str = "train",
    maxcount: int = 10_000,
    maxsize: float = 1e9,
    policy: Policy = "skip",
    overwrite: bool = False,
    progress: bool = True,
) -> WrittenShards:
    """Speech (folder or manifest) -> shards that `tasks.asr_data.read_speech_shards` reads back."""
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"audio source not found: {source}")
    records, skipped = _audio_records(source, policy)

    def samples() -> Iterable[dict[str, Any]]:
        for i, rec in enumerate(records):
            audio: Path = rec["audio"]
            meta = {k: v for k, v in rec.items() if k != "audio"}
            yield {"__key__": f"{i:09d}", audio.suffix.lstrip(".").lower(): audio.read_bytes(), "json": _json(meta)}

    shards, n = _write(samples(), len(records), out_dir, prefix, maxcount, maxsize, overwrite, progress)
    return WrittenShards(shards, n, skipped)


def write_protein_shards(
    source: str | Path,
    out_dir: str | Path,
    *,
    prefix: str | None = None,
    split: str = "train",
    member: Literal["json", "txt"] = "json",
    invalid: Literal["error", "skip", "map_to_x"] = "error",
    maxcount: int = 10_000,
    maxsize: float = 1e9,
    overwrite: bool = False,
    progress: bool = True,
) -> WrittenShards:
    """FASTA (or a pair TSV/CSV) -> shards the protein tasks stream (module docstring).

    Sequences are checked with the task alphabet under `invalid` (tasks/protein_io.py); no length
    filter is applied here, the training task applies its own. `member` ``txt`` keeps only the residues.
    """
    from tasks.protein_io import SequencePolicy, read_fasta, read_pairs

    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"protein file not found: {source}")
    pairs = any(s in (".tsv", ".csv", ".tab") for s in source.suffixes)
    if pairs and member == "txt":
        raise ValueError("pair files are written as JSON samples (member='json')")
    policy = SequencePolicy(invalid=invalid)
    if pairs:
        records, stats = read_pairs(source, policy)
        rows = [asdict(p) for p in records]
    else:
        records, stats = read_fasta(source, policy)
        rows = [asdict(r) for r in records]
    prefix = prefix or f"{'pairs' if pairs else 'proteins'}-{split}"

    def samples() -> Iterable[dict[str, Any]]:
        for i, row in enumerate(rows):
            body = row["sequence"].encode() if member == "txt" else _json(row)
            yield {"__key__": f"{i:09d}", member: body}

    shards, n = _write(samples(), len(rows), out_dir, prefix, maxcount, maxsize, overwrite, progress)
    return WrittenShards(shards, n, dict(stats.skipped))


def main(argv: Sequence[str] | None = None) -> int:
    """``mmdiff shards images|audio|proteins SOURCE OUT_DIR [options]``: write shards, print a summary."""
    parser = argparse.ArgumentParser(prog="mmdiff shards", description="Write training data as WebDataset shards.")
    sub = parser.add_subparsers(dest="modality", required=True)
    for name, help_text in (
        ("images", "LLaVA JSON + images"),
        ("audio", "speech folder or manifest"),
        ("proteins", "FASTA or pair file"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("source", type=Path)
        p.add_argument("out_dir", type=Path)
        p.add_argument("--split", default="train", help="names the shards <split>-*.tar (proteins: proteins-<split>)")
        p.add_argument("--prefix", default=None, help="shard name prefix (overrides --split)")
        p.add_argument("--maxcount", type=int, default=10_000, help="samples per shard at most")
        p.add_argument("--maxsize", type=float, default=1e9, help="bytes per shard at most")
        p.add_argument("--overwrite", action="store_true", help="replace shards of the same prefix")
        p.add_argument("--no-progress", action="store_true")
        if name == "images":
            p.add_argument("--image-root", type=Path, default=None, help="folder the JSON's image paths are under")
        if name != "proteins":
            p.add_argument("--policy", choices=("skip", "fail"), default="skip", help="bad records")
        else:
            p.add_argument("--member", choices=("json", "txt"), default="json")
            p.add_argument("--invalid", choices=("error", "skip", "map_to_x"), default="error")
    args = parser.parse_args(argv)
    common = dict(maxcount=args.maxcount, maxsize=args.maxsize, overwrite=args.overwrite, progress=not args.no_progress)
    if args.modality == "images":
        result = write_image_shards(
            args.source, args.out_dir, image_root=args.image_root, prefix=args.prefix or args.split,
            policy=args.policy, **common,
        )  # fmt: skip
    elif args.modality == "audio":
        result = write_audio_shards(
            args.source, args.out_dir, prefix=args.prefix or args.split, policy=args.policy, **common
        )
    else:
        result = write_protein_shards(
            args.source, args.out_dir, prefix=args.prefix, split=args.split, member=args.member,
            invalid=args.invalid, **common,
        )  # fmt: skip
    print(json.dumps({"shards": len(result.shards), "samples": result.samples, "skipped": result.skipped}))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
