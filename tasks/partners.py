"""Base of the real partner-pair tasks (peptide-MHC, TCR-epitope): named targets, short binders, three measures.

A pair file row is (target sequence, binder, label, target name, binder id), as tasks/protein_io.py
writes pairs; the target name (an MHC allele, an epitope pool) identifies the partner. Training sees
the binders (label 1), laid out as the ``binder`` task lays pairs out: DSM-ppi's ``<cls> target <eos>
binder <eos>`` with only the binder maskable, or the shared-backbone mode with the target through the
protein encoder.

Evaluation on held-out binders, each measure next to a control (tasks/partner_eval.py, tasks/motifs.py):

* (a) masked-binder reconstruction with the true target vs a shuffled one (another target of the
  training set, drawn per binder), on the same masked positions: the paired gap with its standard
  error, per target and per binder position;
* (b) per target, `generate_per_target` binders of the target's most common training length, their
  per-position amino-acid profile against the held-out binders of that length (JS divergence per
  position, in bits), next to as many generated under a shuffled target; the two positions whose
  training profile is furthest from the background are reported as the anchors;
* (c) ranking of `ranking_rows` (labelled pairs: measured non-binders, or a subclass's own negatives)
  by the ELBO of the binder given its target, AUROC per target, next to a PSSM fitted on the same
  training binders and to the ELBO minus the binder's background log-probability (the PSSM's
  log-odds form).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from tasks.base import Layout
from tasks.evaluation import Evaluation
from tasks.protein import BinderTask, ProteinConfig, sampler_fields

if TYPE_CHECKING:
    from multimodal.sampling.engine import Engine
    from tasks.protein_io import ProteinPair

log = logging.getLogger(__name__)


@dataclass
class PartnerConfig(ProteinConfig):
    """Evaluation settings shared by the partner-pair tasks (besides the protein tasks' reading policy).

    Attributes:
        targets: target names kept (empty: all).
        reconstruction_rate: share of each held-out binder masked in (a).
        generate_per_target: binders generated per target (and as many under a shuffled target) in (b).
        generate_targets: targets of (b); empty: every target with training binders.
        min_reference: held-out binders of the modal length a target needs for (b).
        elbo_draws: masked copies per binder for the ELBO in (c).
        pssm_pseudocount: pseudo-observations per position of the PSSM baseline.
    """

    min_length: int = 1
    max_length: int = 400
    crop: Literal["random_crop", "left_crop", "reject"] = "reject"
    invalid: Literal["error", "skip", "map_to_x"] = "skip"
    targets: list[str] = field(default_factory=list)
    reconstruction_rate: float = 0.5
    generate_per_target: int = 1000
    generate_targets: list[str] = field(default_factory=list)
    min_reference: int = 10
    elbo_draws: int = 16
    pssm_pseudocount: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.reconstruction_rate <= 1:
            raise ValueError(f"reconstruction_rate must be in (0, 1], got {self.reconstruction_rate}")
        if self.generate_per_target < 0 or self.elbo_draws < 1 or self.min_reference < 1:
            raise ValueError("generate_per_target must be >= 0, elbo_draws and min_reference >= 1")


class PartnerTask(BinderTask):
    """Named targets and their binders; subclasses say where the pair files come from (`folder`)."""

    Config = PartnerConfig

    def measurements(self, split: str) -> list[ProteinPair]:
        """Every labelled pair of `split` (binders and measured non-binders) of the kept targets."""
        from tasks.protein_io import read_pairs

        key = f"all:{split}"
        if key not in self._cache:
            self.check_split(split)
            pairs, _ = read_pairs(self.folder() / f"{split}_pairs.tsv", self.policy(), self.rng)
            keep = set(self.config.targets)
            self._cache[key] = [p for p in pairs if not keep or p.id_a in keep]
        return self._cache[key]

    def examples(self, split: str) -> Sequence[ProteinPair]:
        if split not in self._cache:
            self._cache[split] = [p for p in self.measurements(split) if p.label == 1]
            log.info("%s %s: %d binders (%s)", self.config.name, split, len(self._cache[split]), self.counts(split))
        return self._cache[split]

    def counts(self, split: str) -> dict[str, int]:
        """Binders per target."""
        return dict(sorted(Counter(p.id_a for p in self.examples(split)).items()))

    def layout(self, example: Any) -> Layout:
        return Layout(
            prompt=example.seq_a,
            answer=example.seq_b,
            meta={"id": f"{example.id_a}|{example.id_b}", "target": example.id_a},
            media={"protein": [example.seq_a]},
        )

    def target_sequences(self) -> dict[str, str]:
        """Target name -> sequence, for every target with training binders."""
        return {p.id_a: p.seq_a for p in self.examples("train")}

    def shuffled_targets(self, names: Sequence[str], seed: int) -> list[str]:
        """For each name in `names`, another target of the training set, drawn uniformly."""
        known = sorted(self.target_sequences())
        if len(known) < 2:
            raise ValueError("a shuffled-target control needs at least two targets")
        rng = np.random.default_rng(seed)
        out = []
        for name in names:
            others = [n for n in known if n != name]
            out.append(others[int(rng.integers(len(others)))])
        return out

    def ranking_rows(self, split: str, seed: int) -> list[ProteinPair]:
        """The labelled pairs (c) ranks: the split's measurements (binders and measured non-binders)."""
        return list(self.measurements(split))

    def evaluate(self, engine: Engine, split: str = "test", limit: int | None = None) -> Evaluation:
        """(a) reconstruction vs a shuffled target, (b) generated profiles, (c) ELBO vs PSSM ranking."""
        binders = list(self.examples(split))[: limit or None]
        metrics: dict[str, Any] = {"split": split, "binders": len(binders), "per_target": self.counts(split)}
        metrics["reconstruction"] = self.reconstruction(engine, binders)
        metrics["generation"] = self.generation(engine, split)
        metrics["ranking"] = self.ranking(engine, split, limit)
        return Evaluation(metrics)

    def reconstruction(self, engine: Engine, binders: Sequence[ProteinPair]) -> dict[str, Any]:
        """(a): true vs shuffled target on the same masked positions, per target too."""
        from tasks.partner_eval import paired_reconstruction

        sequences = self.target_sequences()
        names = [p.id_a for p in binders]
        controls = [sequences[n] for n in self.shuffled_targets(names, engine.seed)]
        layouts = [self.layout(p) for p in binders]
        rate = self.config.reconstruction_rate
        return paired_reconstruction(engine, self, layouts, controls, rate, engine.seed, groups=names)

    def generation(self, engine: Engine, split: str) -> dict[str, Any]:
        """(b): per-position profiles of generated binders against held-out ones, true vs shuffled target."""
        from tasks.motifs import composition, informative_positions, js_per_position, position_profile
        from tasks.partner_eval import conditional_samples

        n = self.config.generate_per_target
        if n == 0:
            return {}
        sequences = self.target_sequences()
        train, held = self.examples("train"), self.examples(split)
        background = composition(p.seq_b for p in self.measurements("train"))
        fields = sampler_fields(engine.sampler_config)
        out: dict[str, Any] = {"per_target": {}, "samples_per_target": n, **fields, "skipped": {}}
        for name in self.config.generate_targets or sorted(sequences):
            lengths = Counter(len(p.seq_b) for p in train if p.id_a == name)
            if not lengths:
                out["skipped"][name] = "no training binders"
                continue
            length = lengths.most_common(1)[0][0]
            reference = [p.seq_b for p in held if p.id_a == name and len(p.seq_b) == length]
            if len(reference) < self.config.min_reference:
                out["skipped"][name] = f"{len(reference)} held-out binders of length {length}"
                continue
            seed = engine.seed + int(hashlib.sha1(name.encode()).hexdigest()[:6], 16)
            true = conditional_samples(engine, self, [sequences[name]] * n, length, fields, seed)
            controls = [sequences[c] for c in self.shuffled_targets([name] * n, seed)]
            control = conditional_samples(engine, self, controls, length, fields, seed + 1)
            ref = position_profile(reference, length)
            js_true = js_per_position(position_profile(true, length), ref)
            js_ctrl = js_per_position(position_profile(control, length), ref)
            trained = [p.seq_b for p in train if p.id_a == name and len(p.seq_b) == length]
            anchors = informative_positions(position_profile(trained, length), background)
            out["per_target"][name] = {
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
        for name, why in out["skipped"].items():
            log.warning("generated profiles: %s skipped (%s)", name, why)
        return out

    def ranking(self, engine: Engine, split: str, limit: int | None) -> dict[str, Any]:
        """(c): AUROC per target of the ELBO, its log-odds form and the PSSM baseline."""
        from tasks.motifs import PSSM, RESIDUES, auroc, composition
        from tasks.partner_eval import elbo_scores

        rows = self.ranking_rows(split, engine.seed)[: limit or None]
        train = self.measurements("train")
        background = composition(p.seq_b for p in train)
        elbo, elbo_se = elbo_scores(engine, self, [self.layout(p) for p in rows], self.config.elbo_draws, engine.seed)
        log_bg = np.array([sum(math.log(background[RESIDUES.index(a)]) for a in p.seq_b) for p in rows])
        out: dict[str, Any] = {"pairs": len(rows), "elbo_draws": self.config.elbo_draws, "per_target": {}}
        out["mean_elbo_se"] = float(np.nanmean(elbo_se)) if len(rows) else float("nan")
        pseudo = self.config.pssm_pseudocount
        for name in sorted({p.id_a for p in rows}):
            idx = [i for i, p in enumerate(rows) if p.id_a == name]
            labels = [int(rows[i].label) for i in idx]
            if len(set(labels)) < 2:
                continue
            pssm = PSSM([p.seq_b for p in train if p.id_a == name and p.label == 1], background, pseudo)
            out["per_target"][name] = {
                "positives": sum(labels),
                "negatives": len(labels) - sum(labels),
                "auroc_elbo": auroc(elbo[idx], labels),
                "auroc_elbo_log_odds": auroc(elbo[idx] - log_bg[idx], labels),
                "auroc_pssm": auroc([pssm.score(rows[i].seq_b) for i in idx], labels),
            }
        return out
