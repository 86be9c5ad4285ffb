"""Peptide-MHC data (reader, groove, peptide split, the real wheels) and the task's three held-out measures."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from tasks.real.peptide_mhc import (
    BuildStats,
    PeptideMHCConfig,
    groove_domain,
    h2_chain_name,
    peptide_split,
    read_chains,
    read_measurements,
    write_peptide_mhc_dataset,
)

HEADER = "mhc,peptide,IC50(nM),measurement_type,measurement_source,original_allele\n"


def _chain(seed: int) -> str:
    rng = random.Random(seed)
    return "MAPRTLLLLLAAALAPTQTRA" + "GPHSLRYF" + "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(300))


def test_allele_names_groove_and_chain_table():
    assert h2_chain_name("H-2-Kb") == "H2-K*b" and h2_chain_name("H-2-Kw28") == "H2-K*w28"
    assert h2_chain_name("HLA-A*02:01") is None and h2_chain_name("BoLA-1*21:01") is None
    chain = _chain(0)
    groove = groove_domain(chain)
    assert groove.startswith("GPHSLRYF") and len(groove) == 182 and chain.index(groove) == 21
    with pytest.raises(ValueError, match="H2-X\\*y: no mature class I N-terminus"):
        groove_domain("M" * 300, "H2-X*y")
    with pytest.raises(ValueError, match="only 58 residues"):
        groove_domain("M" * 20 + "GPHSMRYF" + "A" * 50)
    table = "allele_name,gene,mhc_class,chain,haplotype,uniprot_accession,is_fragment,sequence\n"
    table += f"H2-K*b,K,I,alpha,b,P1,False,{chain}\nH2-K*q,K,I,alpha,q,P2,True,PRFISV\n"
    table += f"H2-Aa*b,Aa,II,alpha,b,P3,False,{chain}\nH2-D*x,D,I,alpha,x,P4,False,{'M' * 300}\n"
    chains, skipped = read_chains(table)
    assert chains == {"H2-K*b": groove}
    assert skipped == {"fragment chain": 1, "chain without a groove": 1}


def test_measurements_are_merged_and_every_drop_is_counted():
    chains = {"H2-K*b": "G" * 182, "H2-D*b": "P" * 182}
    rows = [
        "H-2-Kb,SIINFEKL,10.0,quantitative,x,H-2-Kb",
        "H-2-Kb,SIINFEKL,1000.0,quantitative,y,H-2-Kb",  # the same pair again: geometric mean 100
        "H-2-Db,ASNENMETM,50000,qualitative,z,H-2-Db",
        "HLA-A*02:01,GILGFVFTL,5.0,quantitative,x,HLA-A0201",  # no human chains in the package
        "H-2-Lq,AAAAAAAAA,5.0,quantitative,x,H-2-Lq",  # an H-2 allele without a chain
        "H-2-Kb,SIIBFEKL,5.0,quantitative,x,H-2-Kb",  # B is no standard residue
        "H-2-Kb,SIINFEKV,abc,quantitative,x,H-2-Kb",  # IC50 unreadable
        "H-2-Kb,SIINFEKV,5.0,quantitative",  # a short row
    ]
    stats = BuildStats()
    out = read_measurements(HEADER + "\n".join(rows) + "\n", chains, stats)
    assert [(m.allele, m.peptide, m.count) for m in out] == [("H2-D*b", "ASNENMETM", 1), ("H2-K*b", "SIINFEKL", 2)]
    assert math.isclose(out[1].ic50, 100.0)
    assert stats.rows == 8 and stats.kept_rows == 3 and stats.merged_duplicates == 1
    assert stats.skipped == {
        "no chain in the package (not mouse H-2)": 1,
        "H-2 allele without a chain (H-2-Lq)": 1,
        "peptide with non-standard residues": 1,
        "malformed row": 2,
    }
    assert stats.measurement_types == {"quantitative": 2, "qualitative": 1}
    with pytest.raises(ValueError, match="not mhcnuggets' measurement table"):
        read_measurements("allele,seq\n", chains, BuildStats())


def test_peptide_split_is_a_function_of_the_peptide():
    rng = random.Random(0)
    peptides = list({"".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(9)) for _ in range(4000)})
    splits = [peptide_split(p, (0.8, 0.1, 0.1), 0) for p in peptides]
    assert splits == [peptide_split(p, (0.8, 0.1, 0.1), 0) for p in peptides]
    shares = {s: splits.count(s) / len(splits) for s in ("train", "validation", "test")}
    assert abs(shares["train"] - 0.8) < 0.03 and abs(shares["test"] - 0.1) < 0.02
    assert splits != [peptide_split(p, (0.8, 0.1, 0.1), 1) for p in peptides]  # the seed moves peptides
    with pytest.raises(ValueError, match="fractions"):
        PeptideMHCConfig(fractions=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="chain must be"):
        PeptideMHCConfig(chain="pocket")


def test_the_real_wheels_build_a_leak_free_split(tmp_path):
    """Reads the pinned mhcnuggets and mhcseqs wheels (`mmdiff assets fetch mhcnuggets mhcseqs`)."""
    manifest = write_peptide_mhc_dataset(tmp_path, PeptideMHCConfig())
    assert manifest["rows"] == 241552
    assert set(manifest["chains"]) >= {"H2-K*b", "H2-D*b", "H2-K*d", "H2-K*k", "H2-L*d", "H2-D*d"}
    assert set(manifest["chains"].values()) == {182}
    assert manifest["chain_skips"] == {"fragment chain": 1}  # H2-K*q is a fragment
    skipped = manifest["rows_skipped"]
    assert skipped["H-2 allele without a chain (H-2-Lq)"] == 16
    h2_rows = 241552 - skipped["no chain in the package (not mouse H-2)"]
    assert h2_rows == 15576 and manifest["rows_kept"] == 15576 - 16
    assert manifest["pairs"] + manifest["duplicate_rows_merged"] == manifest["rows_kept"]
    peptides = {}
    for split in ("train", "validation", "test"):
        lines = (tmp_path / f"{split}_pairs.tsv").read_text().splitlines()[1:]
        peptides[split] = {line.split("\t")[1] for line in lines}
        kb = manifest["counts"][split]["H2-K*b"]
        assert kb["binders"] > 0 and kb["non_binders"] > 0
    assert not peptides["train"] & peptides["test"] and not peptides["train"] & peptides["validation"]
    assert not peptides["validation"] & peptides["test"]
    total_kb = sum(sum(manifest["counts"][s]["H2-K*b"].values()) for s in ("train", "validation", "test"))
    assert total_kb == 4925  # distinct H-2Kb peptides in the table
    assert json.loads((tmp_path / "manifest.json").read_text())["pairs"] == manifest["pairs"]

    short = write_peptide_mhc_dataset(tmp_path / "polymorphic", PeptideMHCConfig(chain="polymorphic"))
    positions = short["polymorphic_positions"]
    assert 0 < len(positions) < 182 and set(short["chains"].values()) == {len(positions)}
    grooves = {}
    for line in (tmp_path / "train_pairs.tsv").read_text().splitlines()[1:]:
        seq, _, _, allele, _ = line.split("\t")
        grooves[allele] = seq
    assert all(len({g[p - 1] for g in grooves.values()}) > 1 for p in positions)  # each one differs somewhere
    for split in ("train", "test"):
        full = [line.split("\t")[1:4] for line in (tmp_path / f"{split}_pairs.tsv").read_text().splitlines()]
        cut = [
            line.split("\t")[1:4] for line in (tmp_path / "polymorphic" / f"{split}_pairs.tsv").read_text().splitlines()
        ]
        assert full == cut  # the same peptides, labels and alleles; only the chain is shorter


def test_motif_tools_by_hand():
    from tasks.motifs import PSSM, auroc, informative_positions, js_per_position, position_profile

    assert auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert auroc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5  # ties count one half
    with pytest.raises(ValueError, match="both positives and negatives"):
        auroc([1, 2], [1, 1])
    p = position_profile(["AC", "AD"])
    assert np.allclose(p[0, 0], 1.0) and np.allclose(p[1, [1, 2]], [0.5, 0.5])
    js = js_per_position(p, position_profile(["AC", "AC"]))
    kl_p = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)  # (C .5, D .5) against the mixture (.75, .25)
    kl_q = math.log2(1 / 0.75)
    assert js[0] == 0.0 and math.isclose(js[1], (kl_p + kl_q) / 2)
    assert js_per_position(position_profile(["A"]), position_profile(["C"]))[0] == 1.0  # disjoint: 1 bit
    background = np.full(20, 0.05)
    pssm = PSSM(["AC", "AC", "AD"], background, pseudocount=1.0)
    # position 0: 3 A of 3, plus one pseudo-observation spread as the background
    assert math.isclose(pssm.matrices[2][0, 0], math.log2((3 + 0.05) / 4 / 0.05))
    assert pssm.score("AC") > pssm.score("AD") > pssm.score("CA") and pssm.score("ACD") == 0.0
    assert informative_positions(position_profile(["AC", "AD", "AE"]), background, top=1) == [0]


def test_batch_elbo_is_exact_on_a_flat_model_and_agrees_with_the_row_estimator(table_model):
    from multimodal.diffusion.likelihood import batch_elbo, elbo

    vocab = 7
    flat = table_model(table=torch.zeros(16, vocab))
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 0, 0]])
    maskable = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 0, 0]]).bool()
    est, se = batch_elbo(lambda x: flat(x).logits, ids, maskable, mask_id=0, draws=5)
    assert torch.allclose(est, torch.tensor([-4 * math.log(vocab), -3 * math.log(vocab)], dtype=torch.double))
    assert torch.allclose(se, torch.zeros(2, dtype=torch.double), atol=1e-6)

    torch.manual_seed(0)
    weights = torch.randn(vocab, 5, vocab)

    def logits_fn(x):  # each position's logits depend on the ids around it
        left = torch.nn.functional.pad(x, (1, 0))[:, :-1]
        return weights[x, torch.clamp(left, max=4)]

    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    maskable = torch.tensor([[0, 0, 1, 1, 1, 1]]).bool()
    est, se = batch_elbo(logits_fn, ids, maskable, 0, draws=4000, generator=torch.Generator().manual_seed(1))
    ref = elbo(
        logits_fn, ids[0, :2], ids[0, 2:], 0, mc_num=4000, batch_size=40, generator=torch.Generator().manual_seed(2)
    )
    assert abs(float(est[0]) - ref.log_likelihood) < 4 * math.hypot(float(se[0]), ref.stderr)


def _tiny_folder(tmp_path):
    """Three alleles with their own anchor letter at the last peptide position; binders and non-binders."""
    rng = random.Random(0)
    chains = {a: "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(30)) for a in ("A1", "A2", "A3")}
    anchors = {"A1": "L", "A2": "M", "A3": "Y"}
    for split, n in (("train", 30), ("validation", 4), ("test", 8)):
        rows = ["seq_a\tseq_b\tlabel\tid_a\tid_b"]
        for i in range(n):
            allele = ("A1", "A2", "A3")[i % 3]
            body = "".join(rng.choice("ACDEFGHIKNPQRSTVW") for _ in range(7))
            label = int(i % 4 != 3)
            peptide = body + (anchors[allele] if label else "G")
            rows.append(f"{chains[allele]}\t{peptide}\t{label}\t{allele}\t{peptide}")
        (tmp_path / f"{split}_pairs.tsv").write_text("\n".join(rows) + "\n")
    return tmp_path


def test_task_measures_on_a_tiny_model(tmp_path):
    from encoders.protein import ESM_PRESETS, build_esm2
    from multimodal.backbone.esm import ESMDiffusion
    from multimodal.sampling.engine import Engine
    from multimodal.tokenizer import ESMTokenizer
    from tasks.partner_eval import conditional_samples, paired_reconstruction
    from tasks.peptide_mhc import PeptideMHCTask, PeptideMHCTaskConfig

    folder = _tiny_folder(tmp_path)
    task = PeptideMHCTask(PeptideMHCTaskConfig(data=str(folder), generate_per_target=12, elbo_draws=3))
    assert all(p.label == 1 for p in task.examples("train")) and len(task.measurements("test")) == 8
    torch.manual_seed(0)
    engine = Engine(ESMDiffusion(build_esm2(*ESM_PRESETS["esm2_tiny"])), ESMTokenizer(), batch_size=8)
    layouts = [task.layout(p) for p in task.examples("test")]
    same = paired_reconstruction(engine, task, layouts, [lay.prompt for lay in layouts], rate=0.5)
    assert same["gap"] == 0.0 and same["accuracy_true"] == same["accuracy_control"]  # the same positions twice
    masked = sum(round(0.5 * len(lay.answer)) for lay in layouts)
    assert sum(p["masked"] for p in same["per_position"]) == masked
    samples = conditional_samples(
        engine, task, [layouts[0].prompt] * 5, 9, {"temperature": 1.0, "step_divisor": 1, "remasking": "random"}
    )
    assert len(samples) == 5 and all(len(s) == 9 and set(s) <= set("ACDEFGHIKLMNPQRSTVWY") for s in samples)
    controls = task.shuffled_targets(["A1"] * 50, seed=0)
    assert set(controls) == {"A2", "A3"}

    metrics = task.evaluate(engine, "test").metrics
    rec = metrics["reconstruction"]
    assert rec["binders"] == 6 and 0 <= rec["accuracy_control"] <= 1 and math.isfinite(rec["gap_se"])
    gen = metrics["generation"]["per_target"]
    assert gen == {} and set(metrics["generation"]["skipped"]) == {"A1", "A2", "A3"}  # fewer than 10 held out
    ranking = metrics["ranking"]
    assert ranking["pairs"] == 8 and set(ranking["per_target"]) == {"A1", "A2"}  # A3 has no held-out non-binder
    for allele, row in ranking["per_target"].items():
        assert 0 <= row["auroc_pssm"] <= 1 and 0 <= row["auroc_elbo"] <= 1, allele


def _train_two_steps(tmp_path, capsys, config: str, *extra: str) -> dict:
    """`mmdiff train` of `config` on the tiny folder for two steps; the test metrics it prints."""
    from multimodal.cli import main

    sets = [
        f"task.data={_tiny_folder(tmp_path)}",
        f"train.output_dir={tmp_path / 'runs'}",
        "train.max_steps=2",
        "train.batch_size=4",
        "train.threads=1",
        "task.generate_per_target=4",
        "task.elbo_draws=2",
        *extra,
    ]
    assert main(["train", "-c", config, *[a for s in sets for a in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    return json.loads(out[out.index("{") : out.rindex("}") + 1])


def test_cli_trains_peptide_mhc_for_two_steps(tmp_path, capsys):
    metrics = _train_two_steps(tmp_path, capsys, "peptide_mhc_dsm", "dsm.preset=esm2_tiny")
    assert metrics["reconstruction"]["binders"] == 6 and "H2-K*b" in metrics["generation"]["skipped"]
    assert set(metrics["ranking"]["per_target"]) == {"A1", "A2"}


def test_cli_trains_the_shared_backbone_mode_for_two_steps(tmp_path, capsys):
    metrics = _train_two_steps(
        tmp_path,
        capsys,
        "peptide_mhc_shared",
        "modalities.protein.encoder_args={preset: esm2_tiny}",
        "task.generate_targets=[]",
        "task.min_reference=1",
    )
    assert metrics["reconstruction"]["binders"] == 6 and set(metrics["generation"]["per_target"]) == {"A1", "A2", "A3"}
    for row in metrics["generation"]["per_target"].values():
        assert all(len(s) == row["length"] for s in row["examples"])
