"""TCR-epitope pairs: the MIRA SARS-CoV-2 CDR3-beta sets that ship in the tcrdist3 wheel.

Source (a pinned asset read from the wheel): ``tcrdist3`` 0.3, ``tcrdist/data/covid19/
mira_epitope_*.tcrdist3.csv``, one file per MIRA epitope pool: each row a T-cell receptor beta chain
(CDR3 amino acids, V / J genes, donor) that bound the pool. A MIRA pool holds one to thirteen
candidate peptides (``"LSPRWYFYY,SPRWYFYYL"``): which one the receptor saw is not resolved, so the
target is the pool, written as its candidates merged where they overlap (greedy suffix-prefix merge:
``LSPRWYFYY`` + ``SPRWYFYYL`` -> ``LSPRWYFYYL``); candidates that share nothing are joined by ``X``,
ESM's unknown residue, the nearest thing to a chain break in its alphabet.

Split by CDR3 cluster, not by donor: a public CDR3 recurs across donors, so a donor split would leak
it. CDR3s of equal length one substitution apart are joined (single linkage, the near-identical
clustering TCR repertoire work uses), and a cluster's split is a hash of the seed and its smallest
member. The same (CDR3, pool) from several rows or donors is one pair (duplicates counted); a CDR3 in
several pools keeps one pair per pool. Rows without a CDR3, with non-standard residues or without a
pool are counted, never silently dropped.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from multimodal.assets import Asset, read_member, register_asset, require
from tasks.protein_io import STANDARD_AMINO_ACIDS, ProteinPair, write_pairs
from tasks.real.splits import SPLITS, check_fractions, hash_split

log = logging.getLogger(__name__)

_POOL_FILES = (
    "1_8260_HTTDPSFLGRY",
    "9_2477_FLQSINFVR_FLQSINFVRI_FLYLYALVYF_GLEAPFLYLY_INFVRIIMR_LQSINFVRI_LQSINFVRII_QSINFVRII_SINFVRIIMR_"
    "VYFLQSINF_VYFLQSINFV_YFLQSINFVR_YLYALVYFL",
    "10_2274_LSPRWYFYY_SPRWYFYYL",
    "16_1683_QYIKWPWYI_YEQYIKWPW_YEQYIKWPWY",
    "18_1578_FPNITNLCPF_QPTESIVRF_RFPNITNLCPF_TESIVRFPNI_VQPTESIVRF_VRFPNITNL",
    "29_1097_TVLSFCAFA_VLSFCAFAV",
    "30_1064_KAYNVTQAF",
    "37_818_FGEVFNATRF_FNATRFASVY_GEVFNATRF_NATRFASVY",
    "44_697_FPPTSFGPL",
    "45_689_SYFTSDYYQL_VLHSYFTSDY_YFTSDYYQLY",
    "48_610_YLQPRTFL_YLQPRTFLL_YYVGYLQPRTF",
    "51_546_AYKTFPPTEPK_KTFPPTEPK",
    "53_532_NYLYRLFRK_NYNYLYRLF",
    "55_524_ALRKVPTDNYITTY_KVPTDNYITTY",
    "67_382_APHGVVFL_APHGVVFLHV_GVVFLHVTY_VVFLHVTYV",
    "70_345_DTDFVNEFYAY_NRDVDTDFVNEFY",
    "90_216_GYQPYRVVVL_PYRVVVLSF_QPYRVVVL_QPYRVVVLSF",
    "99_191_QECVRGTTVL",
    "110_148_ELIRQGTDY_QELIRQGTDY_QELIRQGTDYKHW",
    "111_146_AEIPKEEVKPF_ASKIITLKK_SASKIITLK",
    "118_136_ALNTPKDHI_ATEGALNTPK",
    "133_102_NQKLIANQF",
    "140_92_NSSPDDQIGY_NTNSSPDDQIGYY_SSPDDQIGY_SSPDDQIGYY",
    "147_73_DLFMRIFTI_MDLFMRIFTI",
    "155_59_RARSVSPKL_SVSPKLFIR",
    "176_44_SSTFNVPMEKLK",
    "183_39_RIRGGDGKM_RIRGGDGKMK",
    "185_39_ASQRVAGDSGFAAY_DSGFAAYSR_VAGDSGFAAY",
    "192_31_FQPTNGVGY",
)
TCRDIST3 = register_asset(
    Asset(
        name="tcrdist3",
        source="pypi",
        package="tcrdist3",
        version="0.3",
        filename="tcrdist3-0.3-py3-none-any.whl",
        sha256="834a94c7e33851e515568b8d2a2a0990528907f57e891ca15157b47be776094c",
        members=tuple(f"tcrdist/data/covid19/mira_epitope_{p}.tcrdist3.csv" for p in _POOL_FILES),
        licence="MIT",
        what="MIRA SARS-CoV-2 TCR-beta CDR3s with their epitope pools (29 pools)",
    )
)
_STANDARD = frozenset(STANDARD_AMINO_ACIDS)
_PEPTIDE = re.compile(f"[{STANDARD_AMINO_ACIDS}]+")


@dataclass(frozen=True)
class TCREpitopeConfig:
    """What the builder keeps: the split shares and seed, and the smallest overlap two candidates merge at."""

    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    min_overlap: int = 3

    def __post_init__(self):
        check_fractions(self.fractions)


def merge_candidates(candidates: list[str], min_overlap: int = 3) -> str:
    """One target sequence for a MIRA pool: candidates merged greedily by their longest suffix-prefix
    overlap (at least `min_overlap`) or containment; what shares nothing is joined by X (in sorted order)."""
    parts = sorted(set(candidates))
    parts = [p for p in parts if not any(p != q and p in q for q in parts)]  # drop contained candidates
    while len(parts) > 1:
        best = (0, -1, -1)
        for i, a in enumerate(parts):
            for j, b in enumerate(parts):
                if i == j:
                    continue
                for k in range(min(len(a), len(b)) - 1, min_overlap - 1, -1):
                    if a.endswith(b[:k]):
                        best = max(best, (k, i, j))
                        break
        k, i, j = best
        if k == 0:
            break
        merged = parts[i] + parts[j][k:]
        parts = [p for n, p in enumerate(parts) if n not in (i, j)] + [merged]
        parts = sorted(set(parts))
    return "X".join(parts)


def cdr3_clusters(cdr3s: list[str]) -> dict[str, str]:
    """CDR3 -> its cluster's smallest member; equal-length CDR3s one substitution apart are linked."""
    parent = {c: c for c in cdr3s}

    def find(c: str) -> str:
        while parent[c] != c:
            parent[c] = parent[parent[c]]
            c = parent[c]
        return c

    by_key: dict[str, str] = {}
    for c in sorted(parent):
        for i in range(len(c)):
            key = f"{c[:i]}*{c[i + 1 :]}"
            other = by_key.setdefault(key, c)
            a, b = find(c), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {c: find(c) for c in parent}


def cluster_split(root: str, fractions: tuple[float, float, float], seed: int) -> str:
    """The split of a CDR3 cluster, named by its smallest member (tasks/real/splits.py)."""
    return hash_split(root, fractions, seed)


def read_pool_rows(text: str, source: str, stats: Counter) -> list[tuple[str, str, str]]:
    """(CDR3, pool candidates as written, donor) per usable row of one MIRA file; drops counted in `stats`."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if rows and not {"cdr3_b_aa", "epitope", "subject"} <= set(rows[0]):
        raise ValueError(f"{source}: no cdr3_b_aa / epitope / subject columns")
    out = []
    for row in rows:
        stats["rows"] += 1
        cdr3 = (row.get("cdr3_b_aa") or "").strip().upper()
        pool = (row.get("epitope") or "").strip().upper()
        if not cdr3:
            stats["skipped: no CDR3"] += 1
        elif set(cdr3) - _STANDARD:
            stats["skipped: CDR3 with non-standard residues"] += 1
        elif not pool or not all(_PEPTIDE.fullmatch(p.strip()) for p in pool.split(",")):
            stats["skipped: no readable epitope pool"] += 1
        else:
            out.append((cdr3, pool, (row.get("subject") or "").strip()))
    return out


def write_tcr_epitope_dataset(folder: str | Path, config: TCREpitopeConfig) -> dict:
    """Write ``<split>_pairs.tsv`` (pool sequence, CDR3, 1, pool name, CDR3) and ``manifest.json``."""
    require(TCRDIST3)
    stats: Counter = Counter()
    donors: dict[tuple[str, str], set[str]] = defaultdict(set)
    pools: dict[str, str] = {}
    for member in tqdm(TCRDIST3.members, desc="MIRA pools", unit="file", leave=False):
        text = read_member(TCRDIST3, member).decode()
        for cdr3, pool, donor in read_pool_rows(text, member, stats):
            name = pool.replace(",", "_")
            pools.setdefault(name, merge_candidates(pool.split(","), config.min_overlap))
            if (cdr3, name) in donors:
                stats["duplicate (CDR3, pool) rows merged"] += 1
            donors[(cdr3, name)].add(donor)
    clusters = cdr3_clusters(sorted({c for c, _ in donors}))
    by_split: dict[str, list[ProteinPair]] = {s: [] for s in SPLITS}
    for cdr3, name in sorted(donors):
        split = cluster_split(clusters[cdr3], config.fractions, config.seed)
        by_split[split].append(ProteinPair(pools[name], cdr3, 1, name, cdr3))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for split, pairs in by_split.items():
        write_pairs(folder / f"{split}_pairs.tsv", pairs)
    manifest = {
        "config": asdict(config),
        "source": f"{TCRDIST3.package} {TCRDIST3.version} ({TCRDIST3.sha256})",
        "pools": pools,
        "rows": stats["rows"],
        "counts": {k: v for k, v in sorted(stats.items()) if k != "rows"},
        "pairs": len(donors),
        "cdr3s": len(clusters),
        "clusters": len(set(clusters.values())),
        "pairs_per_split": {s: len(p) for s, p in by_split.items()},
        "pairs_per_pool": {s: dict(sorted(Counter(p.id_a for p in ps).items())) for s, ps in by_split.items()},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    log.info(
        "TCR-epitope: %d rows -> %d (CDR3, pool) pairs, %d CDR3 clusters; %s",
        stats["rows"],
        len(donors),
        manifest["clusters"],
        manifest["counts"],
    )
    return manifest
