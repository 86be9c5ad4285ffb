"""FASTA and pair-file readers: broken records, gzip, validation policies, cropping, writers."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from tasks.protein_io import (
    ALPHABET,
    ProteinPair,
    ProteinRecord,
    SequenceError,
    SequencePolicy,
    read_fasta,
    read_pairs,
    write_fasta,
    write_pairs,
)

FASTA = ">p1 first protein\nMKVL\nAGKE*\n>p2\nmkvlagke\n>empty\n>stop_only\n*\n>p3 third\nACDEFGHIKLMNPQRSTVWYBZUOX\n"


@pytest.fixture
def fasta(tmp_path):
    path = tmp_path / "a.fa"
    path.write_text(FASTA)
    return path


def test_alphabet_is_esm_letters():
    assert ALPHABET == set("ACDEFGHIKLMNPQRSTVWY") | set("BZUOX")


def test_read_fasta_normalises_and_counts(fasta):
    records, stats = read_fasta(fasta)
    assert [r.id for r in records] == ["p1", "p2", "p3"]
    assert records[0] == ProteinRecord("p1", "first protein", "MKVLAGKE")  # lines joined, '*' stripped
    assert records[1].sequence == "MKVLAGKE"  # upper-cased
    assert stats.seen == 5 and stats.kept == 3
    assert stats.skipped["empty"] == 2  # an empty record and one holding only '*'
    assert stats.stop_stripped == 2 and stats.lowercase == 1


def test_bad_character_error_names_record_position_and_character(tmp_path):
    path = tmp_path / "bad.fa"
    path.write_text(">ok\nMKV\n>bad_one\nMKV\nAJ-K\n")
    with pytest.raises(SequenceError) as e:
        read_fasta(path)
    msg = str(e.value)
    assert "bad_one" in msg and "position 5" in msg and "'J'" in msg and str(path) in msg


def test_skip_and_map_to_x_policies(tmp_path):
    path = tmp_path / "bad.fa"
    path.write_text(">ok\nMKV\n>bad\nMJ-K*\n")
    kept, stats = read_fasta(path, SequencePolicy(invalid="skip"))
    assert [r.id for r in kept] == ["ok"] and stats.skipped["invalid_character"] == 1
    mapped, stats = read_fasta(path, SequencePolicy(invalid="map_to_x"))
    assert mapped[1].sequence == "MXXK" and stats.mapped_to_x == 1 and not stats.skipped


def test_internal_stop_is_invalid(tmp_path):
    path = tmp_path / "stop.fa"
    path.write_text(">s\nMK*V\n")
    with pytest.raises(SequenceError, match="position 3"):
        read_fasta(path)


def test_gzip_detected_by_magic_bytes(tmp_path, fasta):
    path = tmp_path / "plain_name.fa"  # no .gz suffix: detection must not rely on the name
    path.write_bytes(gzip.compress(FASTA.encode()))
    assert read_fasta(path)[0] == read_fasta(fasta)[0]


def test_corrupt_gzip_and_non_fasta_raise_one_clear_error(tmp_path):
    broken = tmp_path / "broken.fa.gz"
    broken.write_bytes(gzip.compress(FASTA.encode() * 50)[:60])
    with pytest.raises(ValueError, match="broken.fa.gz.*gzip"):
        read_fasta(broken)
    garbage = tmp_path / "garbage.fa.gz"
    garbage.write_bytes(b"\x1f\x8b" + bytes(range(200)))
    with pytest.raises(ValueError, match="garbage.fa.gz"):
        read_fasta(garbage)
    text = tmp_path / "notes.txt"
    text.write_text("hello\n>p\nMKV\n")
    with pytest.raises(ValueError, match="notes.txt.*not a FASTA"):
        read_fasta(text)
    binary = tmp_path / "bin.fa"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ValueError, match="bin.fa"):
        read_fasta(binary)


def test_length_filters_and_cropping(tmp_path):
    path = tmp_path / "len.fa"
    path.write_text(">short\nMK\n>long\nACDEFGHIKLMNPQRSTVWY\n>fits\nMKVLA\n")
    kept, stats = read_fasta(path, SequencePolicy(min_length=3, max_length=8))
    assert [r.id for r in kept] == ["fits"]
    assert stats.skipped == {"too_short": 1, "too_long": 1}

    kept, stats = read_fasta(path, SequencePolicy(max_length=8, crop="left_crop"))
    assert kept[1].sequence == "ACDEFGHI" and stats.cropped == 1

    runs = [
        read_fasta(path, SequencePolicy(max_length=8, crop="random_crop"), np.random.default_rng(s))[0][1]
        for s in range(20)
    ]
    assert all(len(r.sequence) == 8 and r.sequence in "ACDEFGHIKLMNPQRSTVWY" for r in runs)
    assert len({r.sequence for r in runs}) > 1  # the window moves with the seed
    again = read_fasta(path, SequencePolicy(max_length=8, crop="random_crop"), np.random.default_rng(3))[0][1]
    assert again == runs[3]  # and is fixed by it
    with pytest.raises(ValueError, match="rng"):
        read_fasta(path, SequencePolicy(max_length=8, crop="random_crop"))


def test_policy_rejects_bad_values():
    with pytest.raises(ValueError, match="invalid"):
        SequencePolicy(invalid="drop")
    with pytest.raises(ValueError, match="crop"):
        SequencePolicy(crop="middle")
    with pytest.raises(ValueError, match="max_length"):
        SequencePolicy(min_length=10, max_length=5)


def test_write_fasta_wraps_and_round_trips(tmp_path):
    recs = [ProteinRecord("a", "desc here", "M" * 130), ProteinRecord("b", "", "KV")]
    path = tmp_path / "out.fa"
    assert write_fasta(path, recs) == 2
    lines = path.read_text().splitlines()
    assert lines[0] == ">a desc here" and [len(x) for x in lines[1:4]] == [60, 60, 10]
    assert read_fasta(path)[0] == recs
    gz = tmp_path / "out.fa.gz"
    write_fasta(gz, [("h1 x", "MKV")])
    assert gz.read_bytes()[:2] == b"\x1f\x8b" and read_fasta(gz)[0] == [ProteinRecord("h1", "x", "MKV")]
    with pytest.raises(ValueError, match="header"):
        write_fasta(path, [("two\nlines", "MKV")])


def test_pair_file_tsv_csv_and_sniffed(tmp_path):
    tsv = tmp_path / "p.tsv"
    tsv.write_text("seq_a\tseq_b\tlabel\tid_a\tid_b\nMKV\tacd*\t1\tx\ty\nMKV\tAC\tnot_a_number\tx\tz\nMK\n")
    pairs, stats = read_pairs(tsv)
    assert pairs == [ProteinPair("MKV", "ACD", 1, "x", "y")]
    assert stats.skipped == {"bad_label": 1, "malformed_row": 1}

    csv_path = tmp_path / "p.csv"
    csv_path.write_text("SeqA,SeqB,Label\nMKV,ACD,0.5\nMJV,ACD,1\n")
    pairs, stats = read_pairs(csv_path, SequencePolicy(invalid="skip"))
    assert pairs == [ProteinPair("MKV", "ACD", 0.5, "row1_a", "row1_b")]
    assert stats.skipped == {"invalid_character": 1}
    with pytest.raises(SequenceError, match="row2_a.*position 2"):
        read_pairs(csv_path)

    sniffed = tmp_path / "p.txt"
    sniffed.write_text("sequence_a,sequence_b,label\nMKV,ACD,1\n")
    assert read_pairs(sniffed)[0][0].seq_b == "ACD"


def test_pair_file_missing_column_names_the_file(tmp_path):
    path = tmp_path / "nolabel.tsv"
    path.write_text("seq_a\tseq_b\nMKV\tACD\n")
    with pytest.raises(ValueError, match="nolabel.tsv.*label"):
        read_pairs(path)


def test_write_pairs_round_trips(tmp_path):
    pairs = [ProteinPair("MKV", "ACD", 1, "a", "b"), ProteinPair("WWW", "YY", 0, "c", "d")]
    path = tmp_path / "pairs.tsv"
    assert write_pairs(path, pairs) == 2
    assert path.read_text().splitlines()[0] == "seq_a\tseq_b\tlabel\tid_a\tid_b"
    assert read_pairs(path)[0] == pairs
