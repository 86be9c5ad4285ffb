"""Peptide-MHC class I binding data: IEDB measurements (mhcnuggets' curated set) joined to mouse H-2 heavy chains.

Sources (pinned assets, read from the wheels without installing them; mhcnuggets' own requirements pull
TensorFlow):

* ``mhcnuggets`` 2.4.1: ``data/production/mhcI/curated_training_data.csv``, 241,552 IEDB measurements
  (``mhc, peptide, IC50(nM), measurement_type, measurement_source, original_allele``); qualitative
  measurements carry the IC50 the curators assigned them.
* ``mhcseqs`` 2.6.13: ``mouse_h2_sequences.csv``, full heavy-chain precursors of the mouse H-2 alleles.
  Human HLA chains are not in the package (it fetches them at run time), so HLA rows are left out and
  counted as ``no chain in the package``, like every other non-mouse species.

Each measurement becomes (allele, chain, peptide, IC50); IC50 below `binder_ic50` (500 nM, the usual
cut-off) labels a binder. What stands for the chain (`chain`):

* ``groove`` (default): the peptide-binding groove, the alpha-1 and alpha-2 domains, mature residues
  1-182, the mature chain found at its conserved N-terminus (``G[PS]HS[LM]RYF``, after the 21-24-residue
  signal peptide); every H-2 class I groove here is 182 residues, so they align position by position;
* ``polymorphic``: only the groove positions where the alleles of the data set differ (66 of 182 for the
  seven measured alleles; the classical pocket residues 9, 45, 62-81, 95-116, 152-171 among them), in
  order. Conserved positions are the same for every allele and so carry no partner information in this
  data set; dropping them makes each row 2.5x shorter, which is what fits the CPU demo's budget;
* ``full``: the whole precursor as mhcseqs gives it.
 Rows of one (allele, peptide) measured
more than once are merged into one pair with the geometric mean of their IC50 and counted.

Split by peptide: a peptide's split is a hash of the seed and the peptide, so a held-out peptide never
appears in training with any allele. Everything dropped is counted by reason in the manifest (non-mouse
allele, H-2 allele without a chain, fragment chain, non-standard residue, malformed row, duplicate).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from multimodal.assets import Asset, read_member, register_asset, require
from tasks.protein_io import STANDARD_AMINO_ACIDS, ProteinPair, write_pairs
from tasks.real.splits import SPLITS, check_fractions, hash_split

log = logging.getLogger(__name__)

MHCNUGGETS = register_asset(
    Asset(
        name="mhcnuggets",
        source="pypi",
        package="mhcnuggets",
        version="2.4.1",
        filename="mhcnuggets-2.4.1-py2.py3-none-any.whl",
        sha256="ea1c54d020eef8bad3243dfa01af59fe30a789b0faa01ae66eb1f9ff9705cd36",
        members=("mhcnuggets/data/production/mhcI/curated_training_data.csv",),
        licence="Apache-2.0",
        what="IEDB peptide-MHC class I binding measurements (241,552 rows, 217 alleles)",
    )
)
MHCSEQS = register_asset(
    Asset(
        name="mhcseqs",
        source="pypi",
        package="mhcseqs",
        version="2.6.13",
        filename="mhcseqs-2.6.13-py3-none-any.whl",
        sha256="3a83dabae4deff96172f26f5a12733a8210f4d15296fd5421fb12f777f42844b",
        members=("mhcseqs/mouse_h2_sequences.csv",),
        licence="Apache-2.0",
        what="mouse H-2 MHC heavy-chain sequences (30 chains)",
    )
)
MEASUREMENTS = MHCNUGGETS.members[0]
MOUSE_CHAINS = MHCSEQS.members[0]
MATURE_START = re.compile(r"G[PS]HS[LM]RYF")
GROOVE_LENGTH = 182  # alpha-1 (1-90) and alpha-2 (91-182) of the mature chain
_H2_NAME = re.compile(r"H-2-([A-Z])([a-z0-9]+)")
_STANDARD = frozenset(STANDARD_AMINO_ACIDS)


@dataclass(frozen=True)
class PeptideMHCConfig:
    """What the builder keeps.

    Attributes:
        binder_ic50: IC50 (nM) below which a peptide is a binder.
        chain: ``groove``, ``polymorphic`` or ``full`` (module docstring).
        fractions: train / validation / test shares of the peptides.
        seed: of the peptide split.
    """

    binder_ic50: float = 500.0
    chain: str = "groove"
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0

    def __post_init__(self):
        check_fractions(self.fractions)
        if self.binder_ic50 <= 0:
            raise ValueError(f"binder_ic50 must be positive, got {self.binder_ic50}")
        if self.chain not in ("groove", "polymorphic", "full"):
            raise ValueError(f"chain must be 'groove', 'polymorphic' or 'full', got {self.chain!r}")


@dataclass(frozen=True)
class Measurement:
    """One (allele, peptide) pair with its IC50 in nM (geometric mean over repeated measurements)."""

    allele: str
    peptide: str
    ic50: float
    count: int = 1


@dataclass
class BuildStats:
    """Rows read and what happened to them."""

    rows: int = 0
    kept_rows: int = 0
    skipped: Counter = field(default_factory=Counter)
    merged_duplicates: int = 0
    measurement_types: Counter = field(default_factory=Counter)


def h2_chain_name(mhcnuggets_name: str) -> str | None:
    """``H-2-Kb`` -> ``H2-K*b`` (mhcseqs' spelling); None for names of other species."""
    m = _H2_NAME.fullmatch(mhcnuggets_name.strip())
    return f"H2-{m.group(1)}*{m.group(2)}" if m else None


def groove_domain(sequence: str, name: str = "chain") -> str:
    """Mature residues 1-182 (alpha-1 and alpha-2) of a class I heavy-chain precursor.

    Raises:
        ValueError: no mature N-terminus (``G[PS]HS[LM]RYF``) or too short after it.
    """
    m = MATURE_START.search(sequence)
    if m is None:
        raise ValueError(f"{name}: no mature class I N-terminus (G[PS]HS[LM]RYF) in the chain")
    groove = sequence[m.start() : m.start() + GROOVE_LENGTH]
    if len(groove) < GROOVE_LENGTH:
        raise ValueError(f"{name}: only {len(groove)} residues after the mature N-terminus")
    return groove


def read_chains(text: str, groove: bool = True) -> tuple[dict[str, str], Counter]:
    """Class I alpha chains of mhcseqs' mouse table by allele name; fragments and chains without a
    groove are counted, not kept."""
    chains, skipped = {}, Counter()
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("mhc_class") != "I" or row.get("chain") != "alpha":
            continue
        name, seq = row["allele_name"], (row.get("sequence") or "").strip().upper()
        if row.get("is_fragment") == "True" or not seq:
            skipped["fragment chain"] += 1
            continue
        if set(seq) - _STANDARD:
            skipped["chain with non-standard residues"] += 1
            continue
        try:
            chains[name] = groove_domain(seq, name) if groove else seq
        except ValueError:
            skipped["chain without a groove"] += 1
    return chains, skipped


def read_measurements(text: str, chains: dict[str, str], stats: BuildStats) -> list[Measurement]:
    """Measurements of alleles with a chain, duplicates merged (geometric mean IC50); the rest counted."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or [h.strip() for h in rows[0][:3]] != ["mhc", "peptide", "IC50(nM)"]:
        raise ValueError(f"{MEASUREMENTS}: not mhcnuggets' measurement table (header {rows[:1]})")
    type_col = rows[0].index("measurement_type") if "measurement_type" in rows[0] else None
    logs: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in tqdm(rows[1:], desc="peptide-MHC rows", unit="row", leave=False, mininterval=1.0):
        stats.rows += 1
        if len(row) != len(rows[0]):
            stats.skipped["malformed row"] += 1
            continue
        allele = h2_chain_name(row[0])
        if allele is None:
            stats.skipped["no chain in the package (not mouse H-2)"] += 1
            continue
        if allele not in chains:
            stats.skipped[f"H-2 allele without a chain ({row[0]})"] += 1
            continue
        peptide = row[1].strip().upper()
        if not peptide or set(peptide) - _STANDARD:
            stats.skipped["peptide with non-standard residues"] += 1
            continue
        try:
            ic50 = float(row[2])
        except ValueError:
            stats.skipped["malformed row"] += 1
            continue
        if not math.isfinite(ic50) or ic50 <= 0:
            stats.skipped["malformed row"] += 1
            continue
        stats.kept_rows += 1
        if type_col is not None:
            stats.measurement_types[row[type_col]] += 1
        logs[(allele, peptide)].append(math.log(ic50))
    out = []
    for (allele, peptide), values in sorted(logs.items()):
        stats.merged_duplicates += len(values) - 1
        out.append(Measurement(allele, peptide, math.exp(sum(values) / len(values)), len(values)))
    return out


def polymorphic_positions(grooves: list[str]) -> list[int]:
    """0-based positions where equal-length grooves do not all agree."""
    if not grooves or len({len(g) for g in grooves}) != 1:
        raise ValueError("polymorphic positions need grooves of one length")
    return [i for i in range(len(grooves[0])) if len({g[i] for g in grooves}) > 1]


def peptide_split(peptide: str, fractions: tuple[float, float, float], seed: int) -> str:
    """The split of `peptide` (tasks/real/splits.py): every measurement of it lands on one side."""
    return hash_split(peptide, fractions, seed)


def write_peptide_mhc_dataset(folder: str | Path, config: PeptideMHCConfig) -> dict:
    """Write ``<split>_pairs.tsv`` (chain, peptide, label 1 binder / 0 non-binder, allele, peptide),
    ``<split>_ic50.tsv`` (allele, peptide, IC50, measurements) and ``manifest.json``; returns the manifest."""
    require(MHCNUGGETS, MHCSEQS)
    folder = Path(folder)
    chains, chain_skips = read_chains(read_member(MHCSEQS, MOUSE_CHAINS).decode(), config.chain != "full")
    stats = BuildStats()
    measurements = read_measurements(read_member(MHCNUGGETS, MEASUREMENTS).decode(), chains, stats)
    positions = None
    if config.chain == "polymorphic":
        positions = polymorphic_positions([chains[a] for a in sorted({m.allele for m in measurements})])
        chains = {a: "".join(seq[i] for i in positions) for a, seq in chains.items()}
    by_split: dict[str, list[Measurement]] = {s: [] for s in SPLITS}
    for m in measurements:
        by_split[peptide_split(m.peptide, config.fractions, config.seed)].append(m)
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, items in by_split.items():
        pairs = [
            ProteinPair(chains[m.allele], m.peptide, int(m.ic50 < config.binder_ic50), m.allele, m.peptide)
            for m in items
        ]
        write_pairs(folder / f"{split}_pairs.tsv", pairs)
        lines = ["allele\tpeptide\tic50_nM\tmeasurements\n"]
        lines += [f"{m.allele}\t{m.peptide}\t{m.ic50:.6g}\t{m.count}\n" for m in items]
        (folder / f"{split}_ic50.tsv").write_text("".join(lines))
        per_allele = defaultdict(lambda: [0, 0])
        for p in pairs:
            per_allele[p.id_a][1 - p.label] += 1
        counts[split] = {a: {"binders": b, "non_binders": n} for a, (b, n) in sorted(per_allele.items())}
    manifest = {
        "config": asdict(config),
        "sources": {a.name: f"{a.package} {a.version} ({a.sha256})" for a in (MHCNUGGETS, MHCSEQS)},
        "chains": {a: len(s) for a, s in sorted(chains.items())},
        "polymorphic_positions": None if positions is None else [i + 1 for i in positions],
        "chain_skips": dict(chain_skips),
        "rows": stats.rows,
        "rows_kept": stats.kept_rows,
        "rows_skipped": dict(sorted(stats.skipped.items())),
        "measurement_types": dict(stats.measurement_types),
        "duplicate_rows_merged": stats.merged_duplicates,
        "pairs": len(measurements),
        "counts": counts,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    log.info(
        "peptide-MHC: %d rows, %d kept as %d (allele, peptide) pairs (%d duplicate rows merged); skipped %s",
        stats.rows,
        stats.kept_rows,
        len(measurements),
        stats.merged_duplicates,
        dict(stats.skipped),
    )
    return manifest
