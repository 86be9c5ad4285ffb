"""Backbone families: a run's family comes from its config, and a new family is one module (here: this file)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from multimodal.backbone import BACKBONE_PRESETS, LLaDABackbone
from multimodal.backbone.config import BackboneConfig
from multimodal.backbone.esm import ESMDiffusion
from multimodal.backbone.families import FAMILIES, LLaDAFamily, family_of
from multimodal.cli import main
from multimodal.train.build import load_run
from multimodal.train.config import load_experiment


def test_the_config_names_the_family():
    assert isinstance(family_of(load_experiment("digits_reverse"))[0], LLaDAFamily)
    family, settings = family_of(load_experiment("protein_dsm"))
    assert (family.section, family.takes_modalities, family.packs) == ("dsm", False, False)
    assert settings.preset.startswith("esm2")


@dataclass(frozen=True)
class ScaledConfig(BackboneConfig):
    """A family of our own: LLaDA with its input embeddings scaled."""

    embed_scale: float = 2.0


class ScaledBackbone(LLaDABackbone):
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().embed(input_ids) * self.config.embed_scale


class ScaledFamily(LLaDAFamily):
    settings = ScaledConfig

    def build(self, settings, source):
        return ScaledBackbone(settings)


@pytest.fixture
def scaled_family(monkeypatch):
    tiny = BACKBONE_PRESETS.get("llada_tiny")
    preset = ScaledConfig(**{**vars(tiny), "name": "scaled_tiny", "max_seq_len": 64}, embed_scale=3.0)
    monkeypatch.setitem(FAMILIES._entries, "scaled", ScaledFamily)
    monkeypatch.setitem(BACKBONE_PRESETS._entries, "scaled_tiny", preset)


def test_a_new_family_is_one_module(scaled_family, tmp_path, capsys):
    sets = ["backbone.preset=scaled_tiny", "backbone.vocab_size=16", f"train.output_dir={tmp_path}",
            "train.max_steps=2", "train.batch_size=4", "train.threads=1", "task.train_size=40", "task.test_size=4",
            "task.validation_size=4"]  # fmt: skip
    assert main(["train", "-c", "digits_reverse", *[a for s in sets for a in ("--set", s)]]) == 0
    run = load_run(tmp_path / "digits_reverse")  # the saved config names the preset: the family comes back
    assert type(run.model) is ScaledBackbone and run.model.config.embed_scale == 3.0
    assert "exact_match" in capsys.readouterr().out


def test_a_released_esm_run_keeps_its_family(tmp_path):
    family, settings = family_of(load_experiment("protein_dsm", [f"train.output_dir={tmp_path}"]))
    assert isinstance(family.build(settings, None), ESMDiffusion)
