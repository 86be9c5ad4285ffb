"""Registries and strict YAML configs."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from multimodal.config import ConfigError, apply_overrides, dump, from_dict, load_yaml
from multimodal.registry import ALL_REGISTRIES, Registry
from multimodal.sampling import SAMPLERS
from multimodal.train.config import ExperimentConfig, experiment_from_text, load_experiment


def test_registry_suggests_close_names_and_globs():
    reg = Registry("thing")
    reg.register("alpha", 1)
    reg.register("alpine", 2)
    assert reg.names("alp*") == ["alpha", "alpine"] and reg.get("alpha") == 1
    with pytest.raises(KeyError, match="did you mean 'alpha'"):
        reg.get("alpah")
    with pytest.raises(KeyError, match="already registered"):
        reg.register("alpha", 3)


def test_every_family_is_registered():
    import tasks  # noqa: F401

    assert {"backbone", "sampler", "schedule", "task"} <= set(ALL_REGISTRIES)
    assert all(len(r) > 0 for r in ALL_REGISTRIES.values())


def test_experiment_defaults_and_every_shipped_config_resolve():
    from multimodal.train.config import CONFIG_ROOT

    for path in sorted((CONFIG_ROOT / "experiment").glob("*.yaml")):
        cfg = load_experiment(path)
        assert isinstance(cfg, ExperimentConfig)
        again = experiment_from_text(dump(cfg))  # the resolved dump loads back to the same config
        assert again == cfg


def test_unknown_keys_fail_with_the_closest_name():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.max_step' \(did you mean 'max_steps'\?\)"):
        from_dict(ExperimentConfig, {"train": {"max_step": 3}})
    with pytest.raises(ConfigError, match="unknown config key 'sampler.step'"):
        from_dict(ExperimentConfig, {"sampler": {"name": "random", "step": 3}})
    with pytest.raises(ConfigError, match="unknown sampler 'randon'.*did you mean 'random'"):
        from_dict(ExperimentConfig, {"sampler": {"name": "randon"}})
    with pytest.raises(ConfigError, match="unknown backbone preset"):
        from_dict(ExperimentConfig, {"backbone": {"preset": "llada_tiyn"}})


def test_types_are_checked():
    with pytest.raises(ConfigError, match="'train.max_steps' must be an integer"):
        from_dict(ExperimentConfig, {"train": {"max_steps": "ten"}})
    with pytest.raises(ConfigError, match="'diffusion.normalisation' must be one of"):
        from_dict(ExperimentConfig, {"diffusion": {"normalisation": "anwser"}})
    with pytest.raises(ConfigError, match="invalid 'backbone'"):
        from_dict(ExperimentConfig, {"backbone": {"preset": "llada_tiny", "n_heads": 3}})


def test_presets_with_overrides_and_selected_classes():
    cfg = from_dict(
        ExperimentConfig,
        {"backbone": {"preset": "llada_small", "n_layers": 2}, "sampler": {"name": "random", "steps": 4}},
    )
    assert cfg.backbone.d_model == 256 and cfg.backbone.n_layers == 2 and cfg.backbone.name == "llada_small"
    assert cfg.sampler.steps == 4 and type(cfg.sampler) is SAMPLERS.get("random").Config


def test_overrides(tmp_path):
    data = apply_overrides({"train": {"lr": 1.0}}, ["train.lr=5e-4", "sampler.name=random", "train.betas=[0.8, 0.9]"])
    assert data == {"train": {"lr": 5e-4, "betas": [0.8, 0.9]}, "sampler": {"name": "random"}}
    cfg = from_dict(ExperimentConfig, data)
    assert cfg.train.betas == (0.8, 0.9)
    with pytest.raises(ConfigError, match="must look like"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ConfigError, match="holds a value"):
        apply_overrides({"train": 3}, ["train.lr=1"])


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_yaml(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="neither a file nor an experiment"):
        load_experiment("no_such_experiment")


@dataclass
class Part:
    size: int = 1


@dataclass
class Holder:
    parts: dict[str, Part] = field(default_factory=dict)


def test_mappings_of_dataclasses_are_validated():
    held = from_dict(Holder, {"parts": {"a": {"size": 3}, "b": {}}})
    assert held.parts == {"a": Part(3), "b": Part(1)}
    with pytest.raises(ConfigError, match="unknown config key 'parts.a.sise'"):
        from_dict(Holder, {"parts": {"a": {"sise": 3}}})


def test_an_unknown_eval_split_is_refused_before_training(tmp_path):
    from multimodal.train.run import train

    sets = [f"train.output_dir={tmp_path}", "task.train_size=8", "train.eval_splits=[test, tset]"]
    with pytest.raises(ConfigError, match="train.eval_splits: unknown split 'tset' for task 'digits'"):
        train(load_experiment("digits_reverse", sets))
    assert not (tmp_path / "digits_reverse").exists()


@pytest.mark.parametrize(
    "experiment, override, message",
    [
        ("shapes_vqa", "train.pack_length=64", "pack_length needs a token-only task"),
        ("digits_reverse", "train.pack_length=1000", "exceeds backbone.max_seq_len"),
        ("digits_reverse", "train.activation_checkpointing=true", "needs train.strategy=fsdp"),
        ("digits_reverse", "train.eval_splits=[tst]", "unknown split 'tst'"),
        ("digits_reverse", "train.trainable=[backbone, projektor]", "unknown parts ['projektor']"),
        ("shapes_vqa", "modalities.image.encoder=conv_tny", "did you mean 'conv_tiny'"),
        ("digits_reverse", "sampler.block_length=7", "not divisible by block_length 7"),
        ("digits_reverse", "train.max_steps=-1", "max_steps must be positive"),
    ],
)
def test_show_config_refuses_what_train_refuses(experiment, override, message, capsys):
    from multimodal.cli import main

    assert main(["show-config", "-c", experiment, "--set", override]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_runs_checkpoint_by_default_so_a_killed_demo_can_resume():
    from multimodal.train.config import TrainConfig

    for name in ("digits_reverse", "shapes_vqa", "spoken_asr", "protein_dsm"):
        cfg = load_experiment(name).train
        assert 0 < cfg.checkpoint_every < cfg.max_steps, name
    assert TrainConfig().checkpoint_every == 500
