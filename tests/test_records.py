"""The bad-record policy shared by every reader, and records lost to a truncated shard counted."""

from __future__ import annotations

import json

import pytest

from tasks.records import BadRecord, ReadStats, keep, write_shard_index


def check(record):
    if not record.get("text"):
        raise BadRecord(record.get("id", "?"), "empty transcript")
    return record


def test_keep_counts_skips_by_reason_or_fails_naming_the_record():
    stats, out = ReadStats(), []
    for record in ({"id": "a", "text": "hi"}, {"id": "b"}, {"id": "c", "text": ""}):
        keep(record, check, "skip", stats, out)
    assert [r["id"] for r in out] == ["a"] and stats.kept == 1 and stats.skipped == {"empty transcript": 2}
    assert stats.summary() == "kept 1, skipped 2 (empty transcript: 2)"
    with pytest.raises(BadRecord, match="record b: empty transcript"):
        keep({"id": "b"}, check, "fail", ReadStats(), [])


def test_records_cut_off_by_a_truncated_shard_are_counted(tmp_path):
    import webdataset as wds

    from tasks.vqa_data import read_shards
    from tests.test_vqa import png

    turns = [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}]
    shard = tmp_path / "train-000000.tar"
    with wds.TarWriter(str(shard)) as sink:
        for i in range(10):
            sink.write({"__key__": f"s{i}", "png": png(), "json": json.dumps({"conversations": turns}).encode()})
    write_shard_index(tmp_path, {shard.name: 10})
    whole, stats = read_shards([shard])
    assert len(whole) == 10 and not stats.skipped
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2 + 100])  # cut mid-sample
    kept, stats = read_shards([shard])
    assert stats.kept == len(kept) < 10
    assert sum(stats.skipped.values()) == 10 - len(kept)  # every lost record accounted for
    assert stats.skipped["cut off by a truncated shard"] > 0 and stats.skipped["unreadable sample"] == 1
