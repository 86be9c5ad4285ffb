"""Tower pre-training (`mmdiff pretrain-tower`): CLIP loss on captions, a tower file that stage 1 loads."""

from __future__ import annotations

import json

import pytest
import torch

from encoders import create_encoder
from tasks.vqa import caption, region

SMALL = [
    "--set",
    "task.shapes={train_scenes: 24, validation_scenes: 8, test_scenes: 4, shard_size: 12}",
    "--set",
    "train.steps=3",
    "--set",
    "train.batch_size=8",
    "--set",
    "train.eval_every=3",
    "--set",
    "train.log_every=1",
    "--set",
    "train.threads=1",
]


def test_every_shipped_pretraining_config_resolves():
    from multimodal.train.config import CONFIG_ROOT
    from multimodal.train.contrastive import PretrainConfig, load_pretrain_config

    paths = sorted((CONFIG_ROOT / "pretrain").glob("*.yaml"))
    assert paths and all(isinstance(load_pretrain_config(str(p)), PretrainConfig) for p in paths)
    assert load_pretrain_config("shapes_vqa_tower", ["train.steps=7"]).train.steps == 7
    with pytest.raises(Exception, match="neither a file nor a pre-training config"):
        load_pretrain_config("shapes_vqa")


def test_captions_place_each_object_on_a_three_by_three_grid():
    scene = {
        "objects": [
            {"shape": "star", "colour": "blue", "size": "small", "x": 0.9, "y": 0.5},
            {"shape": "circle", "colour": "red", "size": "large", "x": 0.1, "y": 0.1},
        ]
    }
    assert caption(scene) == "large red circle top left, small blue star middle right"
    assert region({"x": 1.0, "y": 1.0}) == "bottom right" and caption({"objects": []}) == "nothing"


def test_contrastive_towers_give_unit_embeddings_and_a_clip_loss():
    from open_clip.loss import ClipLoss

    from encoders.contrastive import ContrastiveConfig, ContrastiveTowers

    model = ContrastiveTowers(create_encoder("conv_tiny"), vocab_size=12, cfg=ContrastiveConfig(embed_dim=16))
    images, ids = torch.randn(4, 3, 32, 32), torch.tensor([[2, 3, 0], [4, 5, 6], [7, 0, 0], [8, 9, 10]])
    image, text, scale = model(images, ids)
    assert image.shape == text.shape == (4, 16)
    torch.testing.assert_close(image.norm(dim=-1), torch.ones(4))
    assert scale.item() == pytest.approx(1 / 0.07, rel=1e-5)
    assert ClipLoss()(image, text, scale).item() > 0
    # padding changes nothing: the same caption with more pad ids embeds identically
    torch.testing.assert_close(model.encode_text(ids[2:3]), model.encode_text(torch.tensor([[7, 0, 0, 0, 0]])))
    with pytest.raises(ValueError, match="max_text_len"):
        model.encode_text(torch.ones(1, 49, dtype=torch.long))


def test_pretrain_tower_writes_a_tower_that_stage_one_loads(tmp_path, capsys):
    from safetensors.torch import load_file

    from multimodal.cli import main
    from multimodal.train.build import build_run
    from multimodal.train.config import load_experiment

    paths = ["--set", f"train.output_dir={tmp_path}", "--set", f"task.data_dir={tmp_path / 'data'}"]
    assert main(["pretrain-tower", "-c", "shapes_vqa_tower", *paths, *SMALL]) == 0
    folder = tmp_path / "shapes_vqa_tower"
    out = capsys.readouterr().out
    assert f"tower weights: {folder / 'tower.safetensors'}" in out and '"val/i2t_r1"' in out
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and 0.0 <= rows[-1]["val/i2t_r1"] <= 1.0
    assert {"top", "left,", "circle", "large"} & set(json.loads((folder / "vocab.json").read_text()))
    # stage 1 builds its encoder from the file: the tower's tensors arrive unchanged
    weights = str(folder / "tower.safetensors")
    config = load_experiment(
        "shapes_vqa_stage1",
        [f"task.data_dir={tmp_path / 'data'}", f"modalities.image.encoder_args.weights={weights}"]
        + ["task.shapes={train_scenes: 24, validation_scenes: 8, test_scenes: 4, shard_size: 12}"],
    )
    run = build_run(config)
    saved = load_file(weights)
    tower = run.model.adapters["image"].encoder
    for key, value in tower.state_dict().items():
        torch.testing.assert_close(value, saved[key])
    # a file of another tower is one error naming the mis-shaped keys
    with pytest.raises(ValueError, match="mis-shaped keys: body.0.0.weight"):
        create_encoder("conv_small", stem_width=16, weights=weights)


def test_the_caption_first_route_runs_through_its_three_configs(tmp_path, capsys):
    from safetensors.torch import load_file

    from multimodal.cli import main

    common = ["--set", f"train.output_dir={tmp_path}", "--set", f"task.data_dir={tmp_path / 'data'}"]
    assert main(["pretrain-tower", "-c", "shapes_vqa_tower", *common, *SMALL]) == 0
    tower = str(tmp_path / "shapes_vqa_tower" / "tower.safetensors")
    steps = [*SMALL[:2], "--set", "train.max_steps=2", "--set", "train.threads=1", "--set", "train.eval_limit=4"]
    no_validation = ["--set", "train.eval_every=0"]
    chain = [
        ("shapes_vqa_caption", ["--set", f"modalities.image.encoder_args.weights={tower}"]),
        ("shapes_vqa_caption_tower", ["--set", f"init_from={tmp_path / 'shapes_vqa_caption'}"]),
        ("shapes_vqa_qa", ["--set", f"init_from={tmp_path / 'shapes_vqa_caption_tower'}", *no_validation]),
    ]
    for config, sets in chain:
        assert main(["train", "-c", config, *common, *steps, *sets]) == 0, config
    capsys.readouterr()
    weights = {name: load_file(tmp_path / name / "checkpoints" / "last" / "model.safetensors") for name, _ in chain}
    key = "adapters.image.encoder.body.0.0.weight"
    # the tower is frozen in the first and last step, trained in the middle one
    torch.testing.assert_close(weights["shapes_vqa_caption"][key], load_file(tower)["body.0.0.weight"])
    assert not torch.equal(weights["shapes_vqa_caption_tower"][key], weights["shapes_vqa_caption"][key])
    torch.testing.assert_close(weights["shapes_vqa_qa"][key], weights["shapes_vqa_caption_tower"][key])
    metrics = json.loads((tmp_path / "shapes_vqa_qa" / "eval" / "test_metrics.json").read_text())
    assert {"accuracy/colour", "prior/shape"} <= set(metrics)
