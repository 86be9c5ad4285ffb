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
