"""The embedded protein data set: one bacterial proteome, split by sequence identity, with gene-neighbour pairs.

Source: ``938293.PRJEB85.HG003687.faa`` shipped with pyhmmer's tests (read in place, never downloaded):
2,100 Prodigal gene calls on 8 contigs (HG003684-HG003691) of one bacterial genome assembly. Each header
is Prodigal's ``>contig_N # start # end # strand # ID=..;partial=..;start_type=..;rbs_motif=..;gc_cont=..``,
so every protein has its contig, 1-based nucleotide coordinates and strand; ``N`` numbers the genes along
the contig. Sequences end with ``*``. 14 proteins are mostly X (62-94 %, assembly gaps translated) and
are dropped (`ProteomeConfig.max_x_fraction`).

Split. Identity is `tasks.protein_metrics.identity` (identical positions / shorter length, semi-global
BLOSUM62 alignment). Proteins are linked when identity >= 0.4 and whole connected components go to one
split, so no test protein reaches 0.4 identity to any training protein. Why 0.4: it is CD-HIT's lowest
recommended protein threshold, and on this proteome the exhaustive all-vs-all identities of unrelated
proteins reach 0.33 at the 99.9th percentile, so 0.30 and 0.35 chain unrelated proteins into one
component of 2,018 and 718 proteins, while 0.40 leaves a largest component of 35. Candidate pairs come
from a k-mer prefilter (>= 5 shared 3-mers on one band of 4 diagonals), which found all pairs >= 0.4
between proteins of >= 100 residues in an exhaustive check; proteins shorter than 100 residues are
aligned to every protein, because a short protein reaches 0.4 by chance against a long one without any
shared k-mer. Components joined by a neighbour pair (below) form one unit, so pairs are not lost to the
split; units are shuffled with the seed and fill test, then validation, never above their share and never
with a unit over a quarter of it; the rest is train, so large families and long operons land in train.

Pairs. Positives: consecutive genes on one contig, same strand, intergenic gap <= 50 bp (overlaps
included). A short same-strand gap is the classic operon signal (Salgado et al., PNAS 2000;
Moreno-Hagelsieb & Collado-Vides, Bioinformatics 2002); the median gap here is 11 bp. Negatives: pairs of
proteins on different contigs or >= 20 kb apart, drawn with the seed, as many as positives in each split.
These pairs mark *functional association* (likely co-transcribed genes); they are NOT known physical
binding partners, and a model trained on them learns genomic context, not binding. Pairs keep only
proteins of one split, so they inherit the split.

Defaults give 1668 / 209 / 209 proteins, 910 / 116 / 123 positive pairs (each matched by a negative) and
a measured max identity of 0.398 (test) and 0.395 (validation) to any training protein, in about 70 s
on one CPU core, two thirds of it that exhaustive check (``python -m tasks.synthetic.proteome``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import logging
import tarfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from tasks.protein_io import ProteinPair, ProteinRecord, SequencePolicy, read_fasta, write_fasta, write_pairs
from tasks.protein_metrics import identity, max_identity_to
from tasks.records import write_shard_index

logger = logging.getLogger(__name__)

PROTEOME_FILE = "938293.PRJEB85.HG003687.faa"
SPLITS = ("train", "validation", "test")
_AA_CODE = np.full(256, 255, dtype=np.uint8)
_AA_CODE[np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY", dtype=np.uint8)] = np.arange(20, dtype=np.uint8)


@dataclass
class ProteomeConfig:
    """Settings of the embedded proteome data set (defaults are the shipped ones; see the module docstring)."""

    seed: int = 0
    source: str | None = None  # a Prodigal .faa; None = the file in pyhmmer's tests
    max_x_fraction: float = 0.1
    identity_threshold: float = 0.4
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train, validation, test (of proteins)
    short_length: int = 100
    kmer: int = 3
    band: int = 4
    min_band_hits: int = 5
    max_gap_bp: int = 50
    negative_min_distance_bp: int = 20_000
    keep_neighbours_together: bool = True  # neighbour pairs share a split, so held-out splits get pairs
    max_unit_share: float = 0.25
    shard_size: int = 1000
    verify: bool = True  # exhaustive validation/test-vs-train max identity in the manifest

    def __post_init__(self) -> None:
        self.fractions = tuple(float(f) for f in self.fractions)
        if len(self.fractions) != 3 or min(self.fractions) < 0 or abs(sum(self.fractions) - 1) > 1e-6:
            raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {self.fractions}")
        if not 0 < self.identity_threshold <= 1:
            raise ValueError(f"identity_threshold must be in (0, 1], got {self.identity_threshold}")


@dataclass(frozen=True)
class Gene:
    """A protein with its genomic position (1-based, inclusive nucleotide coordinates; strand +1 / -1)."""

    id: str
    contig: str
    index: int
    start: int
    end: int
    strand: int
    partial: str
    sequence: str


@dataclass
class SplitResult:
    """Outcome of `identity_split`: split per id, the clusters (connected components) and search counts."""

    split: dict[str, str]
    clusters: list[list[str]]
    candidate_pairs: int
    edges: int
    seconds: float
    cluster_of: dict[str, int] = field(default_factory=dict)
    units: int = 0


def proteome_path() -> Path:
    """Path of the proteome inside the installed pyhmmer package."""
    try:
        path = resources.files("pyhmmer").joinpath("tests", "data", "seqs", PROTEOME_FILE)
    except ModuleNotFoundError as e:
        raise FileNotFoundError("the embedded proteome ships with pyhmmer (pip install pyhmmer==0.12.3)") from e
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: this pyhmmer build lacks its test data")
    return Path(str(path))


def parse_prodigal_header(record: ProteinRecord) -> dict:
    """contig, index, start, end, strand and partial flag from a Prodigal header."""
    fields = [f.strip() for f in record.description.split("#")]
    contig, _, index = record.id.rpartition("_")
    try:
        if len(fields) < 5 or fields[0] or not contig:
            raise ValueError
        start, end, strand = int(fields[1]), int(fields[2]), int(fields[3])
        attrs = dict(kv.split("=", 1) for kv in fields[4].split(";") if "=" in kv)
        if strand not in (1, -1) or start > end:
            raise ValueError
        return dict(
            contig=contig, index=int(index), start=start, end=end, strand=strand, partial=attrs.get("partial", "")
        )
    except ValueError as e:
        raise ValueError(f"record {record.id!r}: not a Prodigal header ({record.description[:60]!r})") from e


def load_proteome(path: str | Path | None = None, max_x_fraction: float = 0.1) -> list[Gene]:
    """The proteome's proteins with coordinates, in file order, minus those with > `max_x_fraction` X."""
    path = Path(path) if path is not None else proteome_path()
    records, _ = read_fasta(path, SequencePolicy(invalid="error"))
    genes = [Gene(id=r.id, sequence=r.sequence, **parse_prodigal_header(r)) for r in records]
    for contig in {g.contig for g in genes}:  # adjacency below relies on Prodigal numbering genes by position
        starts = [g.start for g in sorted((g for g in genes if g.contig == contig), key=lambda g: g.index)]
        if starts != sorted(starts):
            raise ValueError(f"{path}: genes of {contig} are not numbered in coordinate order")
    kept = [g for g in genes if g.sequence.count("X") <= max_x_fraction * len(g.sequence)]
    logger.info(
        "%s: %d proteins, %d dropped as > %.0f%% X", path.name, len(genes), len(genes) - len(kept), 100 * max_x_fraction
    )
    return kept


# ---------------------------------------------------------------- identity split


def _find(parent: list[int], x: int) -> int:
    """Root of x in a union-find forest, halving the path on the way."""
    while parent[x] != x:
        parent[x] = parent[parent[x]]
        x = parent[x]
    return x


def _union(parent: list[int], a: int, b: int) -> None:
    ra, rb = _find(parent, a), _find(parent, b)
    parent[max(ra, rb)] = min(ra, rb)  # the smaller index is the root: deterministic


def _kmer_candidates(seqs: Sequence[str], eligible: np.ndarray, k: int, band: int, min_hits: int) -> set:
    """Pairs (i < j) of eligible sequences with >= min_hits shared k-mers on one band of `band` diagonals."""
    per_seq = []
    for i, s in enumerate(seqs):
        codes = _AA_CODE[np.frombuffer(s.encode(), dtype=np.uint8)].astype(np.int64)
        if not eligible[i] or len(codes) < k:
            per_seq.append((np.zeros(0, np.int64), np.zeros(0, np.int64)))
            continue
        win = np.lib.stride_tricks.sliding_window_view(codes, k)  # (len - k + 1, k)
        ok = (win < 20).all(axis=1)  # k-mers of standard residues only
        code = win @ (20 ** np.arange(k - 1, -1, -1))
        per_seq.append((code[ok], np.nonzero(ok)[0]))
    all_code = np.concatenate([c for c, _ in per_seq])
    all_seq = np.concatenate([np.full(len(c), i) for i, (c, _) in enumerate(per_seq)])
    all_pos = np.concatenate([p for _, p in per_seq])
    order = np.argsort(all_code, kind="stable")
    all_code, all_seq, all_pos = all_code[order], all_seq[order], all_pos[order]
    first = np.searchsorted(all_code, np.arange(20**k))
    size = np.bincount(all_code, minlength=20**k)
    offset = max(len(s) for s in seqs)
    n_bands = (2 * offset) // band + 2
    out = set()
    for i, (code, pos) in enumerate(per_seq):
        cnt = size[code]
        # every occurrence of each of i's k-mers: ranges [first, first + cnt) flattened to indices
        idx = np.repeat(first[code] - np.cumsum(cnt) + cnt, cnt) + np.arange(cnt.sum())
        j, pj, pi = all_seq[idx], all_pos[idx], np.repeat(pos, cnt)
        keep = j > i
        j, diag = j[keep], pj[keep] - pi[keep] + offset
        for shift in (0, band // 2):  # two band grids, so a run of hits never straddles a band edge in both
            keys, counts = np.unique(j * n_bands + (diag + shift) // band, return_counts=True)
            out.update((i, int(t)) for t in np.unique(keys[counts >= min_hits] // n_bands))
    return out


def identity_components(
    seqs: Sequence[str],
    threshold: float = 0.4,
    short_length: int = 100,
    kmer: int = 3,
    band: int = 4,
    min_band_hits: int = 5,
    progress: bool = False,
) -> tuple[list[list[int]], int, int]:
    """Connected components of the graph ``identity >= threshold``; returns (components, candidates, edges).
    With `progress`, a bar over the candidate alignments (the slow part: about a minute for the proteome)."""
    from tqdm.auto import tqdm

    n = len(seqs)
    lengths = np.array([len(s) for s in seqs])
    short = lengths < short_length
    candidates = _kmer_candidates(seqs, ~short, kmer, band, min_band_hits)
    for i in np.nonzero(short)[0]:
        candidates.update((min(i, j), max(i, j)) for j in range(n) if j != i)
    parent, edges = list(range(n)), 0
    for i, j in tqdm(sorted(candidates), desc="identity clustering", unit="pair", disable=not progress, leave=False):
        if identity(seqs[i], seqs[j]) >= threshold:
            edges += 1
            _union(parent, i, j)
    groups = defaultdict(list)
    for i in range(n):
        groups[_find(parent, i)].append(i)
    return sorted(groups.values()), len(candidates), edges


def identity_split(
    records: Sequence[Gene | ProteinRecord],
    threshold: float = 0.4,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    links: Sequence[tuple[str, str]] = (),
    max_unit_share: float = 0.25,
    **search,
) -> SplitResult:
    """Assign whole identity clusters to train / validation / test, deterministically for a seed.

    Clusters joined by `links` (pairs of ids that must share a split, e.g. gene neighbours) move as one
    unit. Units are shuffled with the seed; each goes to test, else validation, if it fits in that
    split's remaining quota, else to train. Units larger than `max_unit_share` of a held-out quota
    always go to train, so one big family cannot dominate a held-out split.

    Args:
        records: objects with ``id`` and ``sequence``.
        threshold: proteins at or above this identity share a cluster.
        fractions: target shares of proteins; validation and test never exceed theirs.
        seed: seeds the shuffle of the units.
        links: extra id pairs kept in one split.
        **search: short_length, kmer, band, min_band_hits of `identity_components`.
    """
    t0 = time.perf_counter()
    ids = [r.id for r in records]
    index = {x: i for i, x in enumerate(ids)}
    if len(index) != len(ids):
        raise ValueError("record ids must be unique")
    comps, n_cand, n_edges = identity_components([r.sequence for r in records], threshold, **search)
    comp_of = {m: c for c, comp in enumerate(comps) for m in comp}
    unit = list(range(len(comps)))  # union-find over clusters
    for a, b in links:
        if a in index and b in index:
            _union(unit, comp_of[index[a]], comp_of[index[b]])
    units = defaultdict(list)
    for c, comp in enumerate(comps):
        units[_find(unit, c)].extend(comp)
    units = sorted(sorted(u) for u in units.values())
    rng = np.random.default_rng(seed)
    quota = {"test": round(fractions[2] * len(ids)), "validation": round(fractions[1] * len(ids))}
    filled = {"train": 0, "test": 0, "validation": 0}
    split = {}
    for u in rng.permutation(len(units)):
        members = units[u]
        name = next(
            (
                s
                for s in ("test", "validation")
                if filled[s] + len(members) <= quota[s] and len(members) <= max_unit_share * quota[s]
            ),
            "train",
        )
        filled[name] += len(members)
        for m in members:
            split[ids[m]] = name
    clusters = [[ids[m] for m in comp] for comp in comps]
    cluster_of = {ids[m]: c for m, c in comp_of.items()}
    seconds = time.perf_counter() - t0
    msg = "identity split: %d clusters in %d units, %d candidate pairs, %d edges, %.1f s"
    logger.info(msg, len(comps), len(units), n_cand, n_edges, seconds)
    return SplitResult(split, clusters, n_cand, n_edges, seconds, cluster_of, len(units))


# ---------------------------------------------------------------- neighbour pairs


def intergenic_gap(a: Gene, b: Gene) -> int:
    """Nucleotides between two genes on one contig (negative when they overlap)."""
    first, second = (a, b) if a.start <= b.start else (b, a)
    return second.start - first.end - 1


def are_neighbours(a: Gene, b: Gene, max_gap_bp: int) -> bool:
    """Consecutive genes on one contig and strand, at most `max_gap_bp` apart."""
    return (
        a.contig == b.contig
        and abs(a.index - b.index) == 1
        and a.strand == b.strand
        and intergenic_gap(a, b) <= max_gap_bp
    )


def neighbour_links(genes: Sequence[Gene], max_gap_bp: int = 50) -> list[tuple[Gene, Gene]]:
    """All neighbour pairs (see `are_neighbours`) in contig and gene order, upstream-numbered gene first."""
    by_contig = defaultdict(list)
    for g in genes:
        by_contig[g.contig].append(g)
    out = []
    for contig in sorted(by_contig):
        gs = sorted(by_contig[contig], key=lambda g: g.index)
        out.extend((a, b) for a, b in zip(gs, gs[1:], strict=False) if are_neighbours(a, b, max_gap_bp))
    return out


def _far_apart(a: Gene, b: Gene, min_distance_bp: int) -> bool:
    return a.contig != b.contig or abs((a.start + a.end) - (b.start + b.end)) / 2 >= min_distance_bp


def neighbour_pairs(
    genes: Sequence[Gene],
    split: dict[str, str],
    max_gap_bp: int = 50,
    negative_min_distance_bp: int = 20_000,
    seed: int = 0,
) -> dict[str, list[ProteinPair]]:
    """Balanced positive (neighbour, label 1) and negative (far apart, label 0) pairs per split.

    Pair order is randomised and the list shuffled, so neither carries the label. Genes missing from
    `split` are ignored; positives across splits are dropped.
    """
    rng = np.random.default_rng([seed, 1])
    positives = defaultdict(list)
    for a, b in neighbour_links([g for g in genes if g.id in split], max_gap_bp):
        if split[a.id] == split[b.id]:
            positives[split[a.id]].append((a, b))
    out = {}
    for name in SPLITS:
        pool = [g for g in genes if split.get(g.id) == name]
        pos = positives.get(name, [])
        neg, seen, tries = [], set(), 0
        while len(neg) < len(pos) and tries < 1000 * max(1, len(pos)):
            tries += 1
            i, j = rng.choice(len(pool), size=2, replace=False)
            a, b = pool[min(i, j)], pool[max(i, j)]
            if (a.id, b.id) not in seen and _far_apart(a, b, negative_min_distance_bp):
                seen.add((a.id, b.id))
                neg.append((a, b))
        if len(neg) < len(pos):
            logger.warning("%s: only %d negatives for %d positives", name, len(neg), len(pos))
        pairs = []
        for label, group in ((1, pos), (0, neg)):
            for a, b in group:
                if rng.random() < 0.5:
                    a, b = b, a
                pairs.append(ProteinPair(a.sequence, b.sequence, label, a.id, b.id))
        out[name] = [pairs[k] for k in rng.permutation(len(pairs))]
    return out


# ---------------------------------------------------------------- writers


def write_shards(out_dir: Path, prefix: str, samples: Sequence[dict], shard_size: int) -> list[str]:
    """WebDataset shards ``<prefix>-000000.tar``...: one ``<key>.json`` member per sample, fixed tar metadata."""
    names = []
    for s, start in enumerate(range(0, max(len(samples), 1), shard_size)):
        name = f"{prefix}-{s:06d}.tar"
        with tarfile.open(out_dir / name, "w", format=tarfile.USTAR_FORMAT) as tar:
            for k, sample in enumerate(samples[start : start + shard_size], start=start):
                data = json.dumps(sample, sort_keys=True).encode()
                info = tarfile.TarInfo(f"{prefix}-{k:07d}.json")  # the key holds no dot: WebDataset splits there
                info.size, info.mtime, info.mode = len(data), 0, 0o644
                tar.addfile(info, io.BytesIO(data))
        names.append(name)
    write_shard_index(out_dir, {n: len(samples[i * shard_size : (i + 1) * shard_size]) for i, n in enumerate(names)})
    return names


def _protein_sample(g: Gene, cluster: int) -> dict:
    return {"id": g.id, "sequence": g.sequence, "contig": g.contig, "start": g.start, "end": g.end,
            "strand": g.strand, "cluster": cluster}  # fmt: skip


def write_proteome_dataset(out_dir: str | Path, cfg: ProteomeConfig | None = None) -> dict:
    """Build the data set into `out_dir` and return the manifest (also written as manifest.json).

    Files: ``<split>.fasta``, ``<split>_pairs.tsv`` (seq_a, seq_b, label, id_a, id_b),
    ``shards/proteins-<split>-*.tar`` and ``shards/pairs-<split>-*.tar``, ``manifest.json``. All but
    the manifest's timings are identical for a given config.
    """
    cfg = cfg or ProteomeConfig()
    out = Path(out_dir)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    source = Path(cfg.source) if cfg.source else proteome_path()
    genes = load_proteome(source, cfg.max_x_fraction)
    neighbours = neighbour_links(genes, cfg.max_gap_bp)
    links = [(a.id, b.id) for a, b in neighbours] if cfg.keep_neighbours_together else []
    search = {k: getattr(cfg, k) for k in ("short_length", "kmer", "band", "min_band_hits")}
    search["progress"] = True
    res = identity_split(genes, cfg.identity_threshold, cfg.fractions, cfg.seed, links, cfg.max_unit_share, **search)
    t_split = time.perf_counter()
    by_split = {s: [g for g in genes if res.split[g.id] == s] for s in SPLITS}
    ident = {"threshold": cfg.identity_threshold, "candidate_pairs": res.candidate_pairs, "edges": res.edges}
    if cfg.verify:
        train = [g.sequence for g in by_split["train"]]
        for s in ("validation", "test"):
            best = max_identity_to([g.sequence for g in by_split[s]], train, progress=f"checking {s} against train")
            ident[f"max_{s}_vs_train"] = round(float(best.max(initial=0.0)), 4)
            ident[f"mean_max_{s}_vs_train"] = round(float(best.mean()) if len(best) else 0.0, 4)
    t_verify = time.perf_counter()
    pairs = neighbour_pairs(genes, res.split, cfg.max_gap_bp, cfg.negative_min_distance_bp, cfg.seed)
    for s in SPLITS:
        proteins = [_protein_sample(g, res.cluster_of[g.id]) for g in by_split[s]]
        headers = [
            " ".join([p["id"]] + [f"{k}={v}" for k, v in p.items() if k not in ("id", "sequence")]) for p in proteins
        ]
        write_fasta(out / f"{s}.fasta", zip(headers, [p["sequence"] for p in proteins], strict=True))
        write_pairs(out / f"{s}_pairs.tsv", pairs[s])
        write_shards(out / "shards", f"proteins-{s}", proteins, cfg.shard_size)
        write_shards(out / "shards", f"pairs-{s}", [dataclasses.asdict(p) for p in pairs[s]], cfg.shard_size)
    sizes = sorted((len(c) for c in res.clusters), reverse=True)
    manifest = {
        "source": {"file": source.name, "sha256": hashlib.sha256(source.read_bytes()).hexdigest()},
        "config": dataclasses.asdict(cfg),
        "proteins": {s: len(by_split[s]) for s in SPLITS},
        "clusters": {
            "count": len(sizes),
            "units": res.units,
            "largest": sizes[:5],
            "singletons": sizes.count(1),
            **{s: len({res.cluster_of[g.id] for g in by_split[s]}) for s in SPLITS},
        },
        "identity": {"definition": "identical positions / shorter length, semi-global BLOSUM62 gaps 11/1", **ident},
        "pairs": {
            "neighbours": len(neighbours),
            **{
                s: {"positive": sum(p.label == 1 for p in pairs[s]), "negative": sum(p.label == 0 for p in pairs[s])}
                for s in SPLITS
            },
        },
        "seconds": {
            "split": round(t_split - t0, 2),
            "verify": round(t_verify - t_split, 2),
            "total": round(time.perf_counter() - t0, 2),
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info("wrote %s in %.1f s", out, manifest["seconds"]["total"])
    return manifest


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Build the embedded proteome data set.")
    parser.add_argument("--out", default="data/proteome", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-verify", action="store_true", help="skip the exhaustive cross-split identity check")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = write_proteome_dataset(args.out, ProteomeConfig(seed=args.seed, verify=not args.no_verify))
    print(json.dumps({k: manifest[k] for k in ("proteins", "clusters", "identity", "pairs", "seconds")}, indent=2))
    return manifest


if __name__ == "__main__":
    main()
