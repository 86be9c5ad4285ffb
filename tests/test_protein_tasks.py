"""Protein tasks: layouts that never mask special tokens, binder-only masking, CLI generation."""

from __future__ import annotations

import pytest

from multimodal.sampling.engine import Engine
from multimodal.tokenizer import BuiltinTokenizer, ESMTokenizer
from tasks.protein import BinderTask, ProteinConfig, ProteinTask


def test_special_tokens_are_never_maskable(protein_folder):
    task = ProteinTask(ProteinConfig(data=str(protein_folder)))
    tok = ESMTokenizer()
    layouts = [task.layout(x) for x in task.examples("train")[:3]]
    batch = task.collate(layouts, tok)
    ids, maskable = batch.input_ids, batch.maskable
    for special in (tok.cls_id, tok.eos_id, tok.pad_id):
        assert not maskable[ids == special].any()
    assert maskable.sum().item() == sum(len(x.answer) for x in layouts)
    assert batch.attention_mask is not None and not bool(batch.attention_mask[ids == tok.pad_id].any())


def test_binder_only_masking_in_both_modes(protein_folder):
    task = BinderTask(ProteinConfig(name="binder", data=str(protein_folder)))
    lays = [task.layout(x) for x in task.examples("train")[:2]]
    tok = ESMTokenizer()
    batch = task.collate(lays, tok)  # DSM: <cls> target <eos> binder <eos>
    row = batch.input_ids[0]
    target_len = len(lays[0].prompt)
    assert row[0] == tok.cls_id and row[target_len + 1] == tok.eos_id
    assert batch.maskable[0].nonzero().flatten().tolist() == list(
        range(target_len + 2, target_len + 2 + len(lays[0].answer))
    )

    from encoders import ModalityAdapter, create_encoder, create_projector
    from multimodal.types import ModalityIO

    char = BuiltinTokenizer.build(task.texts(), specials=["<protein>"])
    enc = create_encoder("esm2_tiny")
    adapter = ModalityAdapter(enc, create_projector("sequence_linear", enc.output_dim, 32))
    io = {"protein": ModalityIO("protein", char.token_id("<protein>"), adapter.num_tokens, enc.preprocess)}
    shared = task.collate(lays, char, io)  # shared backbone: the target is a placeholder run of ESM tokens
    placeholders = shared.input_ids[0] == char.token_id("<protein>")
    assert int(placeholders.sum()) == len(lays[0].prompt) + 2 and not (placeholders & shared.maskable[0]).any()
    assert shared.modality_inputs["protein"].shape[:2] == (2, 1)


def test_bad_residues_are_named_or_mapped(protein_folder):
    task = ProteinTask(
        ProteinConfig(
            data=str(protein_folder), files={"train": str(protein_folder / "bad.fasta")}, invalid="error", min_length=1
        )
    )
    with pytest.raises(ValueError, match="bad.*position 3"):
        task.examples("train")
    mapped = ProteinTask(
        ProteinConfig(
            data=str(protein_folder),
            files={"train": str(protein_folder / "bad.fasta")},
            invalid="map_to_x",
            min_length=1,
        )
    )
    assert [x.sequence for x in mapped.examples("train")] == ["MKV", "MKXV"]


def test_cli_trains_dsm_and_generates_fasta(protein_folder, tmp_path, capsys):
    from multimodal.cli import main

    sets = [
        f"task.data={protein_folder}",
        f"train.output_dir={tmp_path / 'runs'}",
        "train.max_steps=2",
        "train.batch_size=4",
        "train.threads=1",
        "dsm.preset=esm2_tiny",
        "train.eval_limit=3",
        "task.eval_samples=3",
        "task.mask_rates=[0.15, 0.5]",
    ]
    assert main(["train", "-c", "protein_dsm", *[a for s in sets for a in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    assert '"mask_filling"' in out and '"js_1mer"' in out
    run = tmp_path / "runs" / "protein_dsm"
    assert (run / "eval" / "test_generated.fasta").read_text().startswith(">sample_0 temperature=1.0")
    assert main(["generate", "--run", str(run), "--length", "12", "--num", "2"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert len(lines[0]) == 12 and set(lines[0]) <= set("ACDEFGHIKLMNPQRSTVWYXBZUO")
    fasta = run / "samples" / "generated_L12.fasta"
    assert f"wrote: {fasta}" in lines and fasta.read_text().count(">sample_") == 2
    assert main(["deliberate", "--run", str(run), "--hypotheses", "x.jsonl"]) == 2  # an ASR command
    assert "works on runs of the asr task" in capsys.readouterr().err
    assert main(["sample", "--run", str(run), "--prompt", "MKV"]) == 2
    assert "mmdiff generate" in capsys.readouterr().err


def test_mask_filling_draws_pool_independent_masks(protein_folder, capsys):
    import torch

    from encoders.protein import ESM_PRESETS, build_esm2
    from multimodal.backbone.esm import ESMDiffusion
    from tasks.protein_eval import mask_filling

    torch.manual_seed(0)
    task = ProteinTask(ProteinConfig(data=str(protein_folder)))
    tok = ESMTokenizer()
    layouts = [task.layout(x) for x in task.examples("train")[:4]]
    engine = Engine(ESMDiffusion(build_esm2(*ESM_PRESETS["esm2_tiny"])), tok)
    one = mask_filling(engine, task, layouts, [0.5], seed=3)["50%"]
    three = mask_filling(engine, task, layouts, [0.5], seed=3, draws=3)["50%"]
    assert "mask filling" in capsys.readouterr().err  # a progress bar
    assert three["accuracy_per_draw"][0] == one["accuracy"]  # the first draw is the one-draw evaluation
    assert three["masked_tokens"] == 3 * one["masked_tokens"]  # each draw masks round(rate * n) per sequence
    assert abs(three["accuracy"] - sum(three["accuracy_per_draw"]) / 3) < 1e-12
    with pytest.raises(ValueError, match="mask_draws"):
        ProteinConfig(mask_draws=0)


def test_evaluation_without_samples_skips_generation(protein_folder, tmp_path):
    from encoders.protein import ESM_PRESETS, build_esm2
    from multimodal.backbone.esm import ESMDiffusion

    task = ProteinTask(ProteinConfig(data=str(protein_folder), eval_samples=0, mask_rates=[0.5], mask_draws=2))
    engine = Engine(ESMDiffusion(build_esm2(*ESM_PRESETS["esm2_tiny"])), ESMTokenizer())
    result = task.evaluate(engine, "test", 3)
    metrics = result.metrics
    assert "generation" not in metrics and len(metrics["mask_filling"]["50%"]["accuracy_per_draw"]) == 2
    assert not result.files  # no FASTA
    with pytest.raises(ValueError, match="eval_samples"):
        ProteinConfig(eval_samples=-1)


def test_reference_classification_report_by_hand():
    import torch

    from tasks.protein_reference_eval import classification_report

    report = classification_report(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 2]), 3)
    # per class P/R/F1: (1/2, 1, 2/3), (1, 1/2, 2/3), (1, 1, 1); supports 1, 2, 1
    assert report["accuracy"] == 0.75 and report["precision"] == pytest.approx(0.875)
    assert report["recall"] == pytest.approx(0.75) and report["f1"] == pytest.approx(0.75)
    assert report["mcc"] == pytest.approx(0.7)  # (c s - sum p_k t_k) / sqrt((s^2 - sum p^2)(s^2 - sum t^2)) = 7 / 10


class _OneHotEngine:
    """Logits 10 x one-hot of each sequence's clean tokens at masked positions; elsewhere the clean token
    too (`fill_unmasked=None`) or a fixed token, to see that the argmax is taken at every position."""

    def __init__(self, task, layouts, tokenizer, fill_unmasked=None):
        self.tokenizer, self.modalities, self.fill, self.seed = tokenizer, {}, fill_unmasked, 0
        self.clean = {lay.meta["id"]: task.collate([lay], tokenizer).input_ids[0] for lay in layouts}

    def logits(self, batch):
        import torch

        out = torch.zeros(*batch.input_ids.shape, len(self.tokenizer))
        for row, meta in enumerate(batch.meta):
            clean = self.clean[meta["id"]]
            target = clean.clone()
            if self.fill is not None:
                target = torch.where(batch.input_ids[row, : len(clean)] == self.tokenizer.mask_id, clean, self.fill)
            out[row, torch.arange(len(clean)), target] = 10.0
        return out


def test_reference_mask_filling_scores_the_full_vocabulary_and_every_position(protein_folder):
    import math

    from tasks.protein_reference_eval import reference_mask_filling

    task = ProteinTask(ProteinConfig(data=str(protein_folder)))
    tok = ESMTokenizer()
    layouts = [task.layout(x) for x in task.examples("train")[:10]]
    perfect = reference_mask_filling(_OneHotEngine(task, layouts, tok), task, layouts, [0.3])["30%"]
    # 33 classes: the true token at 10, 32 others at 0
    assert perfect["loss"] == pytest.approx(math.log(1 + 32 * math.exp(-10)), rel=1e-5)
    assert perfect["accuracy"] == perfect["f1"] == perfect["mcc"] == perfect["asc"] == 1.0
    assert perfect["batches"] == 3  # 10 sequences in batches of 4
    # independent draws: the mask count varies with the sequence, not round(0.3 n) each
    assert perfect["masked_tokens"] != sum(round(0.3 * len(lay.answer)) for lay in layouts)
    wrong_elsewhere = reference_mask_filling(
        _OneHotEngine(task, layouts, tok, fill_unmasked=tok.token_id("W")), task, layouts, [0.3]
    )["30%"]
    assert wrong_elsewhere["accuracy"] == 1.0 and wrong_elsewhere["asc"] < 0.7  # ASc sees unmasked positions
    config = task.config
    config.mask_fill_protocol, config.eval_samples = "reference", 0
    assert set(task.evaluate(_OneHotEngine(task, layouts, tok), "train", 10).metrics["mask_filling"]) == {
        f"{round(r * 100)}%" for r in config.mask_rates
    }
