"""The ``peptide_mhc`` task: DSM-ppi (and the shared-backbone mode) on mouse class I peptide-MHC binders.

Data (tasks/real/peptide_mhc.py): IEDB measurements joined to H-2 heavy chains from pinned registry
assets, split by peptide (a held-out peptide is never seen in training with any allele). The MHC chain
(its groove) is the target, named by its allele, and the peptide the binder: ``<cls> MHC <eos> peptide
<eos>``, only the peptide maskable. Training uses binders only (IC50 below ``binder_ic50``); the measured
non-binders of the held-out peptides are the negatives of the ranking measure. The three held-out
measures (reconstruction vs a shuffled allele, generated per-position profiles, ELBO vs PSSM ranking)
are tasks/partners.py's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from tasks.base import TASKS
from tasks.partners import PartnerConfig, PartnerTask
from tasks.real.built import built_dataset

log = logging.getLogger(__name__)


@dataclass
class PeptideMHCTaskConfig(PartnerConfig):
    """Settings of the peptide-MHC task.

    Attributes:
        data: ``assets`` (built from the pinned mhcnuggets / mhcseqs wheels into `data_dir`) or a folder
            with ``<split>_pairs.tsv`` as the builder writes them.
        binder_ic50, chain, fractions: the builder's settings (tasks/real/peptide_mhc.py); `chain` is
            ``groove`` (alpha-1/alpha-2, 182 residues), ``polymorphic`` (the groove positions where the
            alleles differ) or ``full`` (the precursor).
        targets: alleles kept, by mhcseqs name (``H2-K*b``); empty keeps every allele with a chain.
    """

    name: str = "peptide_mhc"
    data: str = "assets"
    data_dir: str = "data/peptide_mhc"
    binder_ic50: float = 500.0
    chain: str = "groove"
    fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])


@TASKS.register("peptide_mhc")
class PeptideMHCTask(PartnerTask):
    """Peptides given their MHC heavy chain."""

    Config = PeptideMHCTaskConfig

    def folder(self) -> Path:
        from tasks.real.peptide_mhc import PeptideMHCConfig, write_peptide_mhc_dataset

        cfg = self.config
        if cfg.data != "assets":
            return Path(cfg.data)
        build = PeptideMHCConfig(cfg.binder_ic50, cfg.chain, tuple(cfg.fractions), cfg.seed)
        return built_dataset(cfg.data_dir, build, write_peptide_mhc_dataset, "peptide-MHC")
