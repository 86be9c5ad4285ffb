"""Protein sequence readers and writers: FASTA (plain or gzip) and pair files (TSV / CSV), with validation.

Every reader returns ``(records, ReadStats)``: malformed input is skipped and counted per reason, never
half-read. Only an unreadable file (corrupt gzip, not FASTA, a pair file without the required columns)
raises, with one error naming the file; the ``error`` policy also raises on the first bad residue, naming
the record id, the 1-based position and the character.

Alphabet: the 20 standard amino acids plus the rare letters that ESM-2's tokenizer has its own tokens for:
B (D or N), Z (E or Q), U (selenocysteine), O (pyrrolysine) and X (unknown). Gap symbols (``-``, ``.``)
are not residues and count as invalid. Sequences are upper-cased and a trailing ``*`` (stop) is stripped;
an internal ``*`` is invalid.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from tasks.records import ReadStats as RecordStats

logger = logging.getLogger(__name__)

STANDARD_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
RARE_AMINO_ACIDS = "BZUOX"
ALPHABET = frozenset(STANDARD_AMINO_ACIDS + RARE_AMINO_ACIDS)

InvalidPolicy = Literal["error", "skip", "map_to_x"]
CropPolicy = Literal["reject", "random_crop", "left_crop"]
_GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class ProteinRecord:
    """One protein: ``id`` is the first word of the FASTA header, ``description`` the rest."""

    id: str
    description: str
    sequence: str


@dataclass(frozen=True)
class ProteinPair:
    """Two proteins and a label (int when the file holds an integer, else float)."""

    seq_a: str
    seq_b: str
    label: int | float
    id_a: str
    id_b: str


@dataclass(frozen=True)
class SequencePolicy:
    """How sequences are validated and fitted to a length range.

    Attributes:
        invalid: a character outside `ALPHABET` raises (``error``), drops the record (``skip``) or
            becomes X (``map_to_x``).
        min_length: shorter sequences (after cleaning) are skipped as ``too_short``.
        max_length: longer sequences are handled by `crop`; None means no limit.
        crop: ``reject`` skips them as ``too_long``; ``left_crop`` keeps the first `max_length`
            residues (the N-terminus, as ESM-style truncation does); ``random_crop`` keeps a window
            whose start is uniform, drawn from the rng passed to the reader.
    """

    invalid: InvalidPolicy = "error"
    min_length: int = 1
    max_length: int | None = None
    crop: CropPolicy = "reject"

    def __post_init__(self) -> None:
        if self.invalid not in ("error", "skip", "map_to_x"):
            raise ValueError(f"invalid must be 'error', 'skip' or 'map_to_x', got {self.invalid!r}")
        if self.crop not in ("reject", "random_crop", "left_crop"):
            raise ValueError(f"crop must be 'reject', 'random_crop' or 'left_crop', got {self.crop!r}")
        if self.min_length < 1:
            raise ValueError(f"min_length must be >= 1, got {self.min_length}")
        if self.max_length is not None and self.max_length < self.min_length:
            raise ValueError(f"max_length {self.max_length} is below min_length {self.min_length}")


@dataclass
class ReadStats(RecordStats):
    """What a reader did: records seen and kept, skips per reason (RecordStats), and the edits it made."""

    source: str = ""
    seen: int = 0
    mapped_to_x: int = 0
    cropped: int = 0
    stop_stripped: int = 0
    lowercase: int = 0

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "seen": self.seen,
            "kept": self.kept,
            "skipped": dict(sorted(self.skipped.items())),
            "mapped_to_x": self.mapped_to_x,
            "cropped": self.cropped,
            "stop_stripped": self.stop_stripped,
            "lowercase": self.lowercase,
        }


class SequenceError(ValueError):
    """A record holds a character outside the alphabet (policy ``error``)."""


def clean_sequence(
    record_id: str,
    raw: str,
    policy: SequencePolicy,
    stats: ReadStats,
    rng: np.random.Generator | None = None,
) -> str | None:
    """Normalise one sequence under `policy`; returns None (and counts the reason) when it is dropped.

    Order: remove whitespace, upper-case, strip trailing ``*``, skip if empty, check the alphabet,
    apply the length filters and the crop.
    """
    seq = "".join(raw.split())
    if seq != seq.upper():
        stats.lowercase += 1
        seq = seq.upper()
    if seq.endswith("*"):
        stats.stop_stripped += 1
        seq = seq.rstrip("*")
    if not seq:
        stats.skipped["empty"] += 1
        return None
    bad = [(i, c) for i, c in enumerate(seq) if c not in ALPHABET]
    if bad:
        if policy.invalid == "error":
            i, c = bad[0]
            raise SequenceError(
                f"{stats.source}: record {record_id!r} has invalid character {c!r} at position {i + 1} "
                f"(allowed: {STANDARD_AMINO_ACIDS} + {RARE_AMINO_ACIDS})"
            )
        if policy.invalid == "skip":
            stats.skipped["invalid_character"] += 1
            return None
        stats.mapped_to_x += 1
        seq = "".join(c if c in ALPHABET else "X" for c in seq)
    if len(seq) < policy.min_length:
        stats.skipped["too_short"] += 1
        return None
    if policy.max_length is not None and len(seq) > policy.max_length:
        if policy.crop == "reject":
            stats.skipped["too_long"] += 1
            return None
        if policy.crop == "left_crop":
            start = 0
        else:
            if rng is None:
                raise ValueError("crop='random_crop' needs an explicit numpy Generator (rng=...)")
            start = int(rng.integers(0, len(seq) - policy.max_length + 1))
        seq = seq[start : start + policy.max_length]
        stats.cropped += 1
    return seq


def _open_text(path: Path) -> io.TextIOBase:
    """Open plain or gzip text, deciding by the magic bytes rather than the file name."""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == _GZIP_MAGIC:
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _read_lines(path: Path) -> list[str]:
    """All lines of a (possibly gzipped) text file; a corrupt or binary file raises one ValueError naming it."""
    try:
        with _open_text(path) as f:
            return f.read().splitlines()
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise ValueError(f"{path}: corrupt or truncated gzip file ({e})") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text file (undecodable byte at offset {e.start})") from e


def iter_fasta(path: str | Path) -> Iterator[tuple[str, str, str]]:
    """Raw FASTA records as ``(id, description, sequence)``, sequence lines joined, nothing validated.

    The whole file is decoded before the first record is yielded, so a corrupt file fails before any
    record is used. A file whose first non-blank line does not start with ``>`` is not FASTA.
    """
    path = Path(path)
    lines = _read_lines(path)
    first = next((ln for ln in lines if ln.strip()), None)
    if first is not None and not first.startswith(">"):
        raise ValueError(f"{path}: not a FASTA file (first line starts with {first[:20]!r}, expected '>')")
    header, chunks = None, []
    for line in lines:
        if line.startswith(">"):
            if header is not None:
                yield (*_split_header(header), "".join(chunks))
            header, chunks = line[1:].strip(), []
        elif line.strip():
            chunks.append(line.strip())
    if header is not None:
        yield (*_split_header(header), "".join(chunks))


def _split_header(header: str) -> tuple[str, str]:
    parts = header.split(maxsplit=1)
    if not parts:
        return "", ""
    return parts[0], parts[1] if len(parts) > 1 else ""


def read_fasta(
    path: str | Path, policy: SequencePolicy | None = None, rng: np.random.Generator | None = None
) -> tuple[list[ProteinRecord], ReadStats]:
    """Read and validate a FASTA file (plain or gzip).

    Args:
        path: the file.
        policy: validation and length policy (default: strict alphabet, no length limit).
        rng: numpy Generator for ``random_crop``.

    Returns:
        The kept records in file order and the reader's statistics. A record without an id is kept
        with the id ``record<N>`` (1-based record number).
    """
    policy = policy or SequencePolicy()
    stats = ReadStats(source=str(path))
    out = []
    for n, (rid, desc, raw) in enumerate(iter_fasta(path), start=1):
        stats.seen += 1
        rid = rid or f"record{n}"
        seq = clean_sequence(rid, raw, policy, stats, rng)
        if seq is not None:
            out.append(ProteinRecord(rid, desc, seq))
    stats.kept = len(out)
    _log_stats(stats)
    return out, stats


def format_fasta(records: Iterable[ProteinRecord | tuple[str, str]], width: int = 60) -> str:
    """Records as FASTA text, sequence lines wrapped at `width`.

    Args:
        records: `ProteinRecord` (header = id + description) or ``(header, sequence)`` tuples.
    """
    buf = []
    for rec in records:
        if isinstance(rec, ProteinRecord):
            header = f"{rec.id} {rec.description}".strip()
            seq = rec.sequence
        else:
            header, seq = rec
        if not header or any(c in header for c in "\n\r"):
            raise ValueError(f"bad FASTA header {header!r} (empty or multi-line)")
        buf.append(f">{header}\n")
        buf.extend(seq[i : i + width] + "\n" for i in range(0, len(seq), width))
    return "".join(buf)


def write_fasta(path: str | Path, records: Iterable[ProteinRecord | tuple[str, str]], width: int = 60) -> int:
    """Write records as FASTA (`format_fasta`); a ``.gz`` path is gzipped. Returns the number written."""
    path = Path(path)
    records = list(records)
    data = format_fasta(records, width).encode()
    if path.suffix == ".gz":
        # mtime=0 keeps the bytes deterministic
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return len(records)


_PAIR_COLUMNS = {
    "seq_a": ("seqa", "sequencea", "seq1", "sequence1"),
    "seq_b": ("seqb", "sequenceb", "seq2", "sequence2"),
    "label": ("label", "labels", "y"),
    "id_a": ("ida", "id1", "namea", "proteina"),
    "id_b": ("idb", "id2", "nameb", "proteinb"),
}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _delimiter(path: Path, first_line: str) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    ext = suffixes[-1].lower() if suffixes else ""
    if ext in (".tsv", ".tab"):
        return "\t"
    if ext == ".csv":
        return ","
    try:
        return csv.Sniffer().sniff(first_line, delimiters="\t,").delimiter
    except csv.Error as e:
        raise ValueError(f"{path}: cannot tell whether the pair file is TSV or CSV from its header") from e


def _parse_label(text: str) -> int | float | None:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def read_pairs(
    path: str | Path, policy: SequencePolicy | None = None, rng: np.random.Generator | None = None
) -> tuple[list[ProteinPair], ReadStats]:
    """Read a pair file: a header row, then sequence A, sequence B, label and optional ids per row.

    The delimiter comes from the extension (``.tsv``/``.tab``, ``.csv``, also under ``.gz``) or is
    sniffed from the header. Column names are matched ignoring case and punctuation: ``seq_a`` /
    ``SeqA`` / ``sequence_a``, ``seq_b``, ``label``, optional ``id_a`` / ``id_b``. Rows with the wrong
    number of fields (``malformed_row``), a non-numeric label (``bad_label``) or a dropped sequence
    are skipped and counted; stats count rows, not sequences.
    """
    path = Path(path)
    policy = policy or SequencePolicy()
    lines = _read_lines(path)
    stats = ReadStats(source=str(path))
    if not lines:
        return [], stats
    reader = csv.reader(lines, delimiter=_delimiter(path, lines[0]))
    header = [_norm(h) for h in next(reader)]
    cols = {}
    for key, names in _PAIR_COLUMNS.items():
        hit = [i for i, h in enumerate(header) if h in names]
        if hit:
            cols[key] = hit[0]
        elif key in ("seq_a", "seq_b", "label"):
            raise ValueError(f"{path}: no {key} column (header has {lines[0]!r}; accepted names: {names})")
    out = []
    for row_no, row in enumerate(reader, start=1):
        if not row or all(not c.strip() for c in row):
            continue
        stats.seen += 1
        if len(row) != len(header):
            stats.skipped["malformed_row"] += 1
            continue
        label = _parse_label(row[cols["label"]])
        if label is None:
            stats.skipped["bad_label"] += 1
            continue
        id_a = row[cols["id_a"]].strip() if "id_a" in cols else f"row{row_no}_a"
        id_b = row[cols["id_b"]].strip() if "id_b" in cols else f"row{row_no}_b"
        a = clean_sequence(id_a, row[cols["seq_a"]], policy, stats, rng)
        b = clean_sequence(id_b, row[cols["seq_b"]], policy, stats, rng) if a is not None else None
        if a is not None and b is not None:
            out.append(ProteinPair(a, b, label, id_a, id_b))
    stats.kept = len(out)
    _log_stats(stats)
    return out, stats


def write_pairs(path: str | Path, pairs: Iterable[ProteinPair]) -> int:
    """Write pairs as TSV with the columns seq_a, seq_b, label, id_a, id_b; returns the row count."""
    rows = ["seq_a\tseq_b\tlabel\tid_a\tid_b\n"]
    for p in pairs:
        fields = (p.seq_a, p.seq_b, str(p.label), p.id_a, p.id_b)
        if any(("\t" in f or "\n" in f) for f in fields):
            raise ValueError(f"pair {p.id_a!r}/{p.id_b!r} holds a tab or newline and cannot be written as TSV")
        rows.append("\t".join(fields) + "\n")
    Path(path).write_text("".join(rows))
    return len(rows) - 1


def _log_stats(stats: ReadStats) -> None:
    if stats.skipped or stats.mapped_to_x or stats.cropped:
        logger.info("%s: kept %d of %d (%s)", stats.source, stats.kept, stats.seen, stats.as_dict())
