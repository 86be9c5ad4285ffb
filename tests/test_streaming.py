"""Streaming training data (multimodal/train/streaming.py) and the shard writer (tasks/shard_writer.py).

Tiny shards in tmp_path; "ranks" are simulated by passing rank / world_size, workers are real
DataLoader worker processes.
"""

from __future__ import annotations

import io
import itertools
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds
from PIL import Image

from multimodal.train.streaming import BadSample, StreamingDataset, streaming_loader, worker_items
from tasks.asr import ASRConfig, ASRTask
from tasks.asr_data import read_speech_shards
from tasks.protein import BinderTask, ProteinConfig, ProteinTask
from tasks.protein_io import read_fasta, read_pairs
from tasks.shard_writer import main, write_audio_shards, write_image_shards, write_protein_shards
from tasks.vqa import VQAConfig, VQATask
from tasks.vqa_data import read_shards


def write_shards(folder: Path, sizes: list[int]) -> list[str]:
    """Shards s<i>-*.tar; sample n of shard i is key ``s<i>n<n>`` with JSON {"value": a running number}."""
    paths, value = [], 0
    for i, size in enumerate(sizes):
        path = folder / f"s{i:02d}.tar"
        with wds.TarWriter(str(path)) as sink:
            for n in range(size):
                sink.write({"__key__": f"s{i:02d}n{n:03d}", "json": json.dumps({"value": value}).encode()})
                value += 1
        paths.append(str(path))
    return paths


def key_of(sample):
    return [sample["__key__"]]


def awkward(sample):
    """Rejects every 7th value, expands every 5th into two items: the stream's items are not its samples."""
    value = json.loads(sample["json"])["value"]
    if value % 7 == 3:
        raise ValueError("rejected")
    return [sample["__key__"], sample["__key__"] + "+"] if value % 5 == 0 else [sample["__key__"]]


def batches(dataset, num_workers, limit=None):
    loader = streaming_loader(dataset, collate_fn=list, num_workers=num_workers)
    return list(itertools.islice(loader, limit))


def test_ranks_and_workers_read_every_sample_once_per_epoch(tmp_path):
    shards = write_shards(tmp_path, [5] * 8)  # 40 samples; each (rank, worker) reads 2 shards = 10 per epoch
    epochs = [[], []]
    for rank in range(2):
        ds = StreamingDataset(shards, key_of, batch_size=5, seed=3, shuffle_buffer=4, rank=rank, world_size=2,
                              sample_budget=80)  # fmt: skip
        got = batches(ds, num_workers=2)
        assert [len(b) for b in got] == [5] * 8  # 40 per rank, in batches of 5
        epochs[0] += [k for b in got[:4] for k in b]  # each worker's first 2 batches are its first epoch
        epochs[1] += [k for b in got[4:] for k in b]
    every = {f"s{i:02d}n{n:03d}" for i in range(8) for n in range(5)}
    for keys in epochs:
        assert len(keys) == 40 and set(keys) == every
    assert epochs[0] != epochs[1]  # reshuffled per epoch


def test_the_seed_determines_the_stream(tmp_path):
    shards = write_shards(tmp_path, [6] * 5)

    def stream(seed):
        ds = StreamingDataset(shards, key_of, batch_size=4, seed=seed, shuffle_buffer=8, sample_budget=30)
        return [k for b in batches(ds, num_workers=0) for k in b]

    first, again, other = stream(0), stream(0), stream(1)
    assert first == again
    assert first != other and sorted(first) == sorted(other) and len(set(first)) == 30


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_continues_exactly_where_the_run_stopped(tmp_path, num_workers):
    shards = write_shards(tmp_path, [9, 4, 11, 6, 8, 5])  # uneven shards, some samples rejected or expanded

    def dataset(start_batch=0):
        return StreamingDataset(shards, awkward, batch_size=4, seed=7, shuffle_buffer=5, rank=1, world_size=2,
                                sample_budget=122, start_batch=start_batch)  # fmt: skip

    full = batches(dataset(), num_workers)  # 61 items on this rank: 15 batches of 4, then 1
    assert [len(b) for b in full] == [4] * 15 + [1]
    for k in (5, 8):  # odd and even: the restarted loader's workers take over the right logical roles
        interrupted = batches(dataset(), num_workers, limit=k)
        resumed = batches(dataset(start_batch=k), num_workers)
        assert interrupted + resumed == full


def test_worker_positions_partition_the_rank_stream():
    for batch_size, per_rank, workers, start in ((4, 61, 2, 5), (3, 30, 3, 4), (5, None, 2, 3), (2, 7, 4, 9)):
        ranges = [worker_items(start, batch_size, per_rank, w, workers) for w in range(workers)]
        consumed = start * batch_size if per_rank is None else min(start * batch_size, per_rank)
        assert sum(skip for skip, _ in ranges) == consumed
        if per_rank is not None:
            assert sum(stop for _, stop in ranges) == per_rank


def test_budget_gives_every_rank_the_same_batches_and_no_budget_streams_on(tmp_path):
    shards = write_shards(tmp_path, [3, 7, 2, 5, 9])  # rank shares are uneven
    sizes = [[len(b) for b in batches(StreamingDataset(shards, key_of, batch_size=4, rank=r, world_size=2,
                                                       sample_budget=23), 0)] for r in range(2)]  # fmt: skip
    assert sizes == [[4, 4, 3], [4, 4, 3]]  # 23 // 2 = 11 items per rank
    endless = StreamingDataset(shards, key_of, batch_size=4, rank=1, world_size=2, shuffle_buffer=0)
    keys = [k for b in batches(endless, num_workers=0, limit=50) for k in b]
    assert len(keys) == 200  # 26 samples in all: many epochs, no end
    assert max(Counter(keys).values()) >= 200 // 26


def test_fewer_shards_than_ranks_times_workers_split_samples_instead(tmp_path):
    shards = write_shards(tmp_path, [5, 6])  # 11 samples, 2 shards for 2 ranks x 2 workers
    keys = []
    for rank in range(2):
        ds = StreamingDataset(shards, key_of, batch_size=1, rank=rank, world_size=2, seed=2, shuffle_buffer=3)
        got = batches(ds, num_workers=2, limit=4)
        keys += [b[0] for b in got[:4]]  # 11 samples over 4 slots: each slot holds at least 2 per epoch
    assert len(keys) == len(set(keys)) == 8  # no sample in two slots
    with pytest.raises(FileNotFoundError, match="missing.tar"):
        StreamingDataset([str(tmp_path / "missing.tar")], key_of, batch_size=2)


def test_rank_comes_from_the_environment(tmp_path, monkeypatch):
    shards = write_shards(tmp_path, [2, 2])
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert StreamingDataset(shards, key_of, batch_size=2).rank_world() == (1, 2)


def png(colour: str, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format=fmt)
    return buf.getvalue()


def qa(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def test_corrupt_samples_are_counted_or_raise_naming_shard_and_key(tmp_path):
    shard = tmp_path / "train-000000.tar"
    with wds.TarWriter(str(shard)) as sink:
        bad = {"id": "bad", "conversations": qa("<image>\nColour?", "red")}
        sink.write({"__key__": "k0", "json": json.dumps(bad).encode(), "png": b"\x89PNG not really"})
        sink.write({"__key__": "k1", "png": png("red")})  # no JSON
        for i, colour in enumerate(["red", "blue", "green"], start=2):
            meta = {"id": f"q{i}", "conversations": qa("<image>\nColour?", colour)}
            sink.write({"__key__": f"k{i}", "json": json.dumps(meta).encode(), "png": png(colour)})
    task = VQATask(VQAConfig(data=str(tmp_path)))
    assert task.train_shards() == [str(shard)]
    ds = StreamingDataset([shard], task.layouts_from_sample, batch_size=2, sample_budget=3, shuffle_buffer=0)
    layouts = [lay for b in batches(ds, num_workers=0) for lay in b]
    assert sorted(lay.answer for lay in layouts) == ["blue", "green", "red"]
    assert ds.stats["corrupt image"] == 1 and ds.stats["no JSON metadata"] == 1 and ds.stats["kept"] == 3
    strict = StreamingDataset([shard], task.layouts_from_sample, batch_size=2, shuffle_buffer=0, errors="fail")
    with pytest.raises(BadSample, match=r"train-000000\.tar, sample k0: .*corrupt image"):
        batches(strict, num_workers=0, limit=3)


def test_a_truncated_shard_is_counted_or_raises_naming_it(tmp_path):
    shards = write_shards(tmp_path, [2, 3])
    data = Path(shards[1]).read_bytes()
    Path(shards[1]).write_bytes(data[: 1024 + 512 + 100])  # cut inside the first member's data
    ds = StreamingDataset(shards, key_of, batch_size=2, shuffle_shards=False, shuffle_buffer=0, sample_budget=2)
    assert [k for b in batches(ds, 0) for k in b] == ["s00n000", "s00n001"] and ds.stats["unreadable"] == 0
    ds = StreamingDataset(shards, key_of, batch_size=1, shuffle_shards=False, shuffle_buffer=0, sample_budget=4)
    keys = [k for b in batches(ds, 0) for k in b]  # the rest of s01 is lost; the stream goes on to epoch 1
    assert keys[:2] == ["s00n000", "s00n001"] and keys[-1] == "s00n000" and ds.stats["unreadable"] >= 1
    strict = StreamingDataset(shards, key_of, batch_size=2, shuffle_shards=False, errors="fail")
    with pytest.raises(BadSample, match=r"s01\.tar, sample \?: unreadable"):
        batches(strict, 0, limit=2)


def test_image_shards_round_trip_through_the_vqa_readers(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.png").write_bytes(png("red"))
    (src / "b.jpg").write_bytes(png("blue", "JPEG"))
    samples = [
        {"id": "one", "image": "a.png", "conversations": qa("<image>\nColour?", "red") + qa("Shape?", "square")},
        {"id": "two", "image": ["a.png", "b.jpg"], "conversations": qa("<image> <image>\nSame colour?", "no")},
        {"id": "gone", "image": "missing.png", "conversations": qa("<image>\nColour?", "red")},
    ]
    (src / "llava.json").write_text(json.dumps(samples))
    out = tmp_path / "shards"
    written = write_image_shards(src / "llava.json", out, maxcount=1, progress=False)
    assert len(written.shards) == 2 and written.samples == 2 and written.skipped == {"missing image": 1}
    records, _ = read_shards(sorted(out.glob("train-*.tar")), policy="fail")
    assert [r["id"] for r in records] == ["one", "two"]
    assert records[0]["images"] == [(src / "a.png").read_bytes()]
    assert records[1]["images"] == [(src / "a.png").read_bytes(), (src / "b.jpg").read_bytes()]
    assert records[1]["conversations"] == samples[1]["conversations"]
    task = VQATask(VQAConfig(data=str(out)))  # the streamed layouts are the materialised ones
    ds = StreamingDataset(task.train_shards(), task.layouts_from_sample, batch_size=3, sample_budget=3, seed=1)
    streamed = [lay for b in batches(ds, num_workers=0) for lay in b]
    as_tuple = lambda lay: (lay.prompt, lay.answer, lay.meta["id"], tuple(lay.media["image"]))  # noqa: E731
    assert sorted(map(as_tuple, streamed)) == sorted(map(as_tuple, task.train_layouts()))


def tone(path: Path, seconds: float = 0.05, rate: int = 16000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), rate)


def test_audio_shards_round_trip_from_a_tsv_a_jsonl_and_a_folder(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("u1.flac", "u2.wav", "u3.flac"):
        tone(src / name)
    (src / "u1.txt").write_text("hello world\n")
    (src / "u2.txt").write_text("good morning\n")  # u3 has no transcript: skipped
    files = {"hello world": src / "u1.flac", "good morning": src / "u2.wav"}
    (src / "m.tsv").write_text("path\tsentence\tspeaker\nu1.flac\thello world\ts1\nu2.wav\tgood morning\ts2\n")
    (src / "m.jsonl").write_text('{"audio": "u1.flac", "text": "hello world"}\n{"audio": "gone.flac", "text": "x"}\n')
    for source, expected, skipped in (
        ("m.tsv", ["hello world", "good morning"], {}),
        ("m.jsonl", ["hello world"], {"missing audio": 1}),
        (".", ["hello world", "good morning"], {"empty transcript": 1}),
    ):
        out = tmp_path / f"out-{source}"
        written = write_audio_shards(src / source, out, progress=False)
        assert written.skipped == skipped
        records, _ = read_speech_shards(written.shards, policy="fail")
        assert sorted(r["text"] for r in records) == sorted(expected)
        assert all(r["audio"] == files[r["text"]].read_bytes() for r in records)  # the bytes as stored
    task = ASRTask(ASRConfig(data=str(tmp_path / "out-m.tsv")))
    assert [r["speaker"] for r in task.examples("train")] == ["s1", "s2"]
    streamed = [lay for s in wds.WebDataset(task.train_shards(), shardshuffle=False) for lay in
                task.layouts_from_sample(s)]  # fmt: skip
    assert [(x.answer, x.media["audio"]) for x in streamed] == [
        (x.answer, x.media["audio"]) for x in task.train_layouts()
    ]


def test_protein_shards_round_trip_for_sequences_and_pairs(tmp_path, protein_folder):
    fasta = protein_folder / "train.fasta"
    expected, _ = read_fasta(fasta)
    for member in ("json", "txt"):
        out = tmp_path / member
        written = write_protein_shards(fasta, out, member=member, maxcount=5, progress=False)
        assert len(written.shards) == 3 and written.samples == len(expected)
        task = ProteinTask(ProteinConfig(files={"train": str(out / "proteins-train-*.tar")}, min_length=1))
        assert task.train_shards() == written.shards
        samples = list(wds.WebDataset(written.shards, shardshuffle=False))
        layouts = [lay for s in samples for lay in task.layouts_from_sample(s)]
        assert [lay.answer for lay in layouts] == [r.sequence for r in expected]
        if member == "json":
            assert [lay.meta["id"] for lay in layouts] == [r.id for r in expected]
    pairs, _ = read_pairs(protein_folder / "train_pairs.tsv")
    written = write_protein_shards(protein_folder / "train_pairs.tsv", tmp_path / "pairs", progress=False)
    binder = BinderTask(ProteinConfig(name="binder", files={"train": str(tmp_path / "pairs" / "pairs-train-*.tar")}))
    samples = list(wds.WebDataset(written.shards, shardshuffle=False))
    layouts = [lay for s in samples for lay in binder.layouts_from_sample(s)]
    assert [(x.prompt, x.answer) for x in layouts] == [(p.seq_a, p.seq_b) for p in pairs]


def test_protein_random_crop_is_drawn_per_sample_and_epoch(tmp_path):
    (tmp_path / "long.fasta").write_text(">p1\n" + "ACDEFGHIKLMNPQRSTVWY" * 5 + "\n")
    written = write_protein_shards(tmp_path / "long.fasta", tmp_path / "out", progress=False)
    task = ProteinTask(
        ProteinConfig(min_length=1, max_length=30, crop="random_crop", files={"train": written.shards[0]})
    )
    sample = next(iter(wds.WebDataset(written.shards, shardshuffle=False)))
    crops = [task.layouts_from_sample({**sample, "__epoch__": e})[0].answer for e in (0, 0, 1, 2, 3)]
    assert crops[0] == crops[1] and len(set(crops[1:])) > 1 and all(len(c) == 30 for c in crops)


def test_writer_command_line_and_overwrite(tmp_path, capsys, protein_folder):
    out = tmp_path / "out"
    assert main(["proteins", str(protein_folder / "train.fasta"), str(out), "--maxcount", "4", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report == {"shards": 3, "samples": 12, "skipped": {}}
    assert len(list(out.glob("proteins-train-*.tar"))) == 3
    with pytest.raises(FileExistsError, match="proteins-train"):
        write_protein_shards(protein_folder / "train.fasta", out, progress=False)
    assert write_protein_shards(protein_folder / "train.fasta", out, overwrite=True, progress=False).samples == 12
    assert len(list(out.glob("proteins-train-*.tar"))) == 1

    from multimodal.cli import main as mmdiff

    bad = tmp_path / "bad.fasta"
    bad.write_text("not a fasta\n")
    capsys.readouterr()
    assert mmdiff(["shards", "proteins", str(bad), str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mmdiff shards: error: {bad}: not a FASTA file")
    assert mmdiff(["shards", "proteins", str(protein_folder / "train.fasta"), str(out), "--no-progress"]) == 2
    assert "proteins-train" in capsys.readouterr().err  # shards of that name exist: one line, nothing replaced
