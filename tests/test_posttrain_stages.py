"""VRPO and diffu-GRPO as training stages: `mmdiff train` with a vrpo / grpo section, antithetic pairing,
the frozen reference, resume between inner updates, LoRA, preference data with bad rows, pair building."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import lightning as L
import pytest
import torch

from multimodal.checkpoint import read_weights
from multimodal.config import ConfigError
from multimodal.lora import adapters_disabled
from multimodal.train import vrpo as vrpo_module
from multimodal.train.build import build_run
from multimodal.train.config import load_experiment
from multimodal.train.preferences import build_pairs, media_files, read_pairs
from multimodal.train.run import train
from tasks import create_task


def small(out: Path, *extra: str) -> list[str]:
    """A fresh llada_tiny on short digit strings: a few steps of a few prompts, one thread."""
    return [
        "init_from=null",
        f"train.output_dir={out}",
        "task.train_size=24",
        "task.validation_size=4",
        "task.test_size=4",
        "task.min_digits=3",
        "task.max_digits=5",
        "task.answer_length=8",
        "sampler.gen_length=8",
        "sampler.block_length=8",
        "sampler.steps=8",
        "train.threads=1",
        "train.log_every=1",
        "train.eval_every=0",
        "train.eval_at_end=false",
        *extra,
    ]


def grpo(out: Path, *extra: str):
    return load_experiment(
        "digits_reverse_grpo",
        small(out, "train.batch_size=2", "grpo.group_size=3", "grpo.rollout={temperature: 1.0}", *extra),
    )


def metrics(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]


def write_pairs_file(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = [{"prompt": f"{d}=", "chosen": d[::-1], "rejected": d} for d in ("123", "4567", "809", "3141", "271", "5550")]


def test_grpo_stage_trains_logs_and_writes_safetensors(tmp_path):
    run = train(grpo(tmp_path, "train.max_steps=4", "grpo.inner_updates=2", "grpo.rewards={char_accuracy: 1.0}"))
    rows = metrics(run.folder)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all({"loss", "reward", "reward_std", "kl", "clipped", "completion_tokens"} <= set(r) for r in rows)
    assert rows[0]["kl"] == 0.0  # the first update starts at the reference
    assert rows[0]["reward"] == rows[1]["reward"] != rows[2]["reward"]  # one rollout per inner_updates steps
    assert (run.folder / "checkpoints" / "last" / "model.safetensors").is_file()


def test_grpo_with_one_inner_update_and_kl_runs(tmp_path):
    # d1's release crashes with mu = 1 and beta != 0
    run = train(grpo(tmp_path, "train.max_steps=2", "grpo.inner_updates=1", "grpo.beta=0.04"))
    assert len(metrics(run.folder)) == 2


def test_grpo_resumes_between_inner_updates_exactly(tmp_path):
    whole = train(grpo(tmp_path / "whole", "train.max_steps=5", "grpo.inner_updates=3", "train.checkpoint_every=0"))

    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 2:  # inside the first batch of rollouts (steps 0-2)
                trainer.should_stop = True

    cut = tmp_path / "cut"
    train(grpo(cut, "train.max_steps=5", "grpo.inner_updates=3", "train.checkpoint_every=0"), callbacks=[StopAt()])
    resumed = train(
        grpo(cut, "train.max_steps=5", "grpo.inner_updates=3", "train.checkpoint_every=0", "train.resume=true")
    )
    assert [r["loss"] for r in metrics(resumed.folder)] == pytest.approx([r["loss"] for r in metrics(whole.folder)])
    a = read_weights(whole.folder / "checkpoints" / "last" / "model.safetensors")
    b = read_weights(resumed.folder / "checkpoints" / "last" / "model.safetensors")
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, rtol=1e-6, atol=1e-7)


def test_grpo_with_lora_trains_adapters_only_against_the_base_model(tmp_path):
    config = grpo(
        tmp_path,
        "train.max_steps=2",
        "grpo.inner_updates=1",
        "train.lora={rank: 4, alpha: 8, targets: [q_proj, v_proj]}",
        "train.trainable=[]",
        "train.lr=0.01",
    )
    start = build_run(config).model  # the same seed: the starting weights, adapters at zero
    run = train(config)
    trained = read_weights(run.folder / "checkpoints" / "last" / "model.safetensors")
    for name, value in start.state_dict().items():
        if ".lora_" not in name:
            torch.testing.assert_close(trained[name], value)  # the backbone never moved
    assert any(float(v.abs().sum()) > 0 for k, v in trained.items() if k.endswith("lora_b"))
    ids = torch.tensor([[5, 6, 7, 3, 1, 1]])
    with adapters_disabled(run.model):
        off = run.model(ids).logits
    torch.testing.assert_close(off, start(ids).logits)  # the reference: the policy with its adapters off
    assert not torch.allclose(run.model(ids).logits, off)


def test_vrpo_policy_and_reference_score_identical_masked_copies(tmp_path, monkeypatch):
    data = write_pairs_file(tmp_path / "pairs.jsonl", GOOD)
    seen: list[torch.Tensor] = []
    original = vrpo_module.copies_elbo

    def spy(model, batch, copies, chunk_size=1024):
        seen.append(copies.input_ids.clone())
        return original(model, batch, copies, chunk_size)

    monkeypatch.setattr(vrpo_module, "copies_elbo", spy)
    base = small(tmp_path, f"vrpo.data={data}", "train.batch_size=3", "train.max_steps=1", "vrpo.timesteps=4")
    train(load_experiment("digits_reverse_vrpo", base))
    policy, reference = seen
    assert policy.shape[0] == 2 * 3 * 4  # chosen and rejected rows x 4 copies
    assert torch.equal(policy, reference)  # antithetic: the reference sees the policy's copies

    seen.clear()
    train(load_experiment("digits_reverse_vrpo", [*base, "vrpo.antithetic=false", "name=independent"]))
    assert not torch.equal(*seen)


def test_vrpo_stage_learns_its_pairs(tmp_path):
    data = write_pairs_file(tmp_path / "pairs.jsonl", GOOD)
    config = load_experiment(
        "digits_reverse_vrpo",
        small(tmp_path, f"vrpo.data={data}", "train.batch_size=6", "train.max_steps=30", "train.lr=1e-2"),
    )
    rows = metrics(train(config).folder)
    assert rows[0]["margin"] == pytest.approx(0.0, abs=1e-5) and rows[0]["loss"] == pytest.approx(math.log(2))
    last = rows[-6:]  # the per-step estimates are noisy: judge the last six steps together
    assert sum(r["loss"] for r in last) / 6 < 0.4 and min(r["margin"] for r in last) > 3.0


def test_bad_preference_rows_are_counted_and_skipped(tmp_path):
    rows = [
        *GOOD[:2],
        "{not json",
        {"prompt": "12=", "chosen": "21"},
        {"prompt": "12=", "chosen": " ", "rejected": "12"},
        {"prompt": "12=", "chosen": "21", "rejected": "21"},
        {"prompt": "12=", "chosen": "21", "rejected": "12", "media": {"image": "x.png"}},
        {"prompt": "12=", "chosen": "2" * 30, "rejected": "12"},
        {"prompt": 12, "chosen": "21", "rejected": "12"},
    ]
    config = load_experiment("digits_reverse_vrpo", small(tmp_path, "vrpo.data=x"))
    task = create_task(config.task)
    from multimodal.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(config.tokenizer, task.texts())
    pairs, report = read_pairs(write_pairs_file(tmp_path / "p.jsonl", rows), task, tokenizer, {})
    assert len(pairs) == report.kept == 2 and report.read == 9
    assert dict(report.skipped) == {
        "not JSON": 1,
        "missing field 'rejected'": 1,
        "empty response": 1,
        "chosen equals rejected": 1,
        "unknown media 'image'": 1,
        "response longer than task.answer_length": 1,
        "field 'prompt' is not a string": 1,
    }
    assert pairs[0].chosen.answer == "321" and pairs[0].rejected.answer == "123" and pairs[0].chosen.prompt == "123="
    with pytest.raises(ValueError, match="no usable preference pair"):
        read_pairs(write_pairs_file(tmp_path / "bad.jsonl", rows[2:]), task, tokenizer, {})
    with pytest.raises(FileNotFoundError, match="preference pairs not found"):
        read_pairs(tmp_path / "missing.jsonl", task, tokenizer, {})


def test_pairs_from_a_models_own_samples_rank_best_over_worst(tmp_path):
    run = train(load_experiment("digits_reverse", small(tmp_path, "train.max_steps=30", "train.batch_size=8")))
    engine = run.engine()
    engine.sampler_config = replace(engine.sampler_config, temperature=1.0)
    layouts = run.task.train_layouts()[:12]
    rows, stats = build_pairs(run.task, engine, layouts, 4, {"char_accuracy": 1.0})
    assert stats["prompts"] == 12 and stats["pairs"] + stats["no_pair"] == 12 and rows
    for row in rows:
        assert row["chosen_reward"] > row["rejected_reward"] and row["chosen"].strip() and row["rejected"].strip()
        assert row["prompt"].endswith("=")


def test_post_training_config_errors_name_the_setting(tmp_path):
    with pytest.raises(ConfigError, match="either a vrpo or a grpo"):
        load_experiment("digits_reverse_grpo", ["vrpo.data=x.jsonl"])
    with pytest.raises(ConfigError, match="unknown reward 'exact_mach'.*did you mean 'exact_match'"):
        load_experiment("digits_reverse_grpo", ["grpo.rewards={exact_mach: 1.0}"])
    with pytest.raises(ConfigError, match="group_size must be at least 2"):
        load_experiment("digits_reverse_grpo", ["grpo.group_size=1"])
    with pytest.raises(ConfigError, match="grpo.split: unknown split 'dev'"):
        load_experiment("digits_reverse_grpo", ["grpo.split=dev"])
    with pytest.raises(ConfigError, match="vrpo.data"):
        load_experiment("digits_reverse_vrpo", ["vrpo.data="])
    assert load_experiment("digits_reverse_grpo", ["grpo.rewards={task.char_accuracy: 1.0}"]).grpo is not None


def test_both_stages_take_image_prompts_whose_adapter_inputs_ride_along(tmp_path):
    data = tmp_path / "data"
    shapes = [
        f"train.output_dir={tmp_path}",
        f"task.data_dir={data}",
        "task.shapes={train_scenes: 12, validation_scenes: 4, test_scenes: 4, shard_size: 8}",
        "train.batch_size=4",
        "train.threads=1",
        "train.log_every=1",
        "train.eval_at_end=false",
        "modalities.image.encoder_args={image_size: 32, widths: [16, 16]}",
    ]
    sft = train(load_experiment("shapes_vqa", [*shapes, "train.max_steps=2"]))
    after = [*shapes, f"init_from={sft.folder}", "train.max_steps=2", "sampler.gen_length=4", "sampler.steps=4"]
    after.append("sampler.block_length=4")
    rl = train(
        load_experiment(
            "shapes_vqa",
            [*after, "name=grpo", "grpo={group_size: 2, inner_updates: 1, rewards: {vqa_accuracy: 1.0}}"],
        )
    )
    assert [r["step"] for r in metrics(rl.folder)] == [1, 2]

    layouts = [lay for lay in sft.task.train_layouts() if not lay.history][:4]
    rows = [
        {
            "prompt": lay.prompt,
            "chosen": lay.answer,
            "rejected": "blue" if lay.answer != "blue" else "red",
            "media": media_files(lay, tmp_path / "media"),  # rendered PNG bytes become files
        }
        for lay in layouts
    ]
    assert all(Path(r["media"]["image"]).read_bytes().startswith(b"\x89PNG") for r in rows)
    pairs_file = write_pairs_file(tmp_path / "pairs.jsonl", rows)
    pref = train(load_experiment("shapes_vqa", [*after, "name=vrpo", f"vrpo={{data: {pairs_file}, timesteps: 2}}"]))
    assert [r["step"] for r in metrics(pref.folder)] == [1, 2]


def test_both_stages_take_audio_prompts_with_a_wer_reward(tmp_path):
    spoken = "{train_size: 12, validation_size: 4, test_size: 4, voices: [en-us], held_out_voices: [en-us+f2]}"
    speech = [
        f"train.output_dir={tmp_path}",
        f"task.data_dir={tmp_path / 'data'}",
        f"task.spoken={spoken}",
        "train.batch_size=2",
        "train.threads=1",
        "train.log_every=1",
        "train.eval_at_end=false",
        "modalities.audio.encoder_args={width: 32, layers: 1, heads: 2, ctc_vocab: 256}",
    ]
    sft = train(load_experiment("spoken_asr", [*speech, "train.max_steps=2"]))
    after = [*speech, f"init_from={sft.folder}", "train.max_steps=2", "sampler.steps=8"]
    rl = train(
        load_experiment(
            "spoken_asr", [*after, "name=grpo", "grpo={group_size: 2, inner_updates: 1, rewards: {wer: -1.0}}"]
        )
    )
    assert [r["step"] for r in metrics(rl.folder)] == [1, 2] and all(r["reward"] <= 0 for r in metrics(rl.folder))

    layouts = sft.task.train_layouts()[:3]
    rows = [
        {
            "prompt": lay.prompt + lay.prompt_suffix,
            "chosen": lay.answer,
            "rejected": "no",
            "media": media_files(lay, tmp_path / "m"),
        }
        for lay in layouts
    ]
    pairs_file = write_pairs_file(tmp_path / "pairs.jsonl", rows)
    pref = train(load_experiment("spoken_asr", [*after, "name=vrpo", f"vrpo={{data: {pairs_file}, timesteps: 2}}"]))
    assert [r["step"] for r in metrics(pref.folder)] == [1, 2]
