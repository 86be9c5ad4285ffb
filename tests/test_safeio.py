"""Weight files that cannot be read safely: one error naming the file, never a traceback or the
advice to turn weights_only off."""

from __future__ import annotations

import pytest
import torch

from multimodal.safeio import WeightsFileError, read_pickle, read_safetensors


class Payload:
    """Any object a pickle may carry besides tensors."""


def test_a_pickle_with_objects_is_refused_without_the_unsafe_hint(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weight": torch.ones(2), "extra": Payload()}, path)
    with pytest.raises(WeightsFileError) as err:
        read_pickle(path)
    assert str(path) in str(err.value) and "weights_only=False" not in str(err.value)
    torch.save({"weight": torch.ones(2)}, path)
    assert torch.equal(read_pickle(path)["weight"], torch.ones(2))


def test_truncated_files_are_one_error_naming_them(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.randn(64, 64)}, str(path))
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(WeightsFileError, match="w.safetensors is not a readable safetensors file"):
        read_safetensors(path)
    pt = tmp_path / "w.pt"
    torch.save({"a": torch.randn(64, 64)}, pt)
    pt.write_bytes(pt.read_bytes()[:500])
    with pytest.raises(WeightsFileError, match="w.pt is not a readable PyTorch checkpoint"):
        read_pickle(pt)


def test_a_corrupt_run_checkpoint_or_llada_folder_is_one_line(tmp_path, capsys):
    from multimodal.backbone import backbone_preset, create_backbone
    from multimodal.backbone.convert import save_llada_checkpoint
    from multimodal.checkpoint import save_checkpoint
    from multimodal.cli import main
    from multimodal.config import dump
    from multimodal.train.build import build_run
    from multimodal.train.config import load_experiment

    config = load_experiment("digits_reverse", ["task.train_size=20", "task.test_size=2", "task.validation_size=2"])
    run = build_run(config)
    folder = save_checkpoint(tmp_path / "ckpt", run.model, dump(config), {"tokenizer.json": run.tokenizer.save})
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    assert main(["eval", "--run", str(folder)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("INFO")]
    assert len(err) == 1 and "model.safetensors is not a readable safetensors file" in err[0]

    llada = tmp_path / "llada"
    save_llada_checkpoint(create_backbone(backbone_preset("llada_tiny")), llada)
    shard = next(llada.glob("*.safetensors"))
    shard.write_bytes(shard.read_bytes()[:4000])
    assert main(["serve", "--llada", str(llada)]) == 2
    assert f"{shard.name} is not a readable safetensors file" in capsys.readouterr().err
