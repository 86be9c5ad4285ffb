"""The `mmdiff` console script, end to end on the embedded toy task for two steps."""

from __future__ import annotations

import json

import pytest
import yaml

from multimodal.cli import main


def small(tmp_path):
    sets = [
        "train.max_steps=2",
        f"train.output_dir={tmp_path}",
        "task.train_size=200",
        "task.test_size=8",
        "task.validation_size=8",
        "train.batch_size=8",
        "train.log_every=1",
        "train.threads=1",
        "train.eval_every=2",
        "train.val_limit=4",
    ]
    return [arg for item in sets for arg in ("--set", item)]


def test_train_eval_sample(tmp_path, capsys):
    assert main(["train", "-c", "digits_reverse", *small(tmp_path), "--set", "train.max_steps=3"]) == 0
    run = tmp_path / "digits_reverse"
    out = capsys.readouterr().out
    assert '"exact_match"' in out
    assert (run / "checkpoints" / "last" / "model.safetensors").is_file()
    assert (run / "checkpoints" / "step_0000003" / "tokenizer.json").is_file()
    saved = yaml.safe_load((run / "checkpoints" / "last" / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 3 and saved["backbone"]["d_model"] == 128  # resolved, defaults included
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3] and all("loss" in x and "tok_s" in x for x in lines)
    assert ["val/exact_match" in x for x in lines] == [False, True, False]  # the learning curve, each point once
    preds = [json.loads(x) for x in (run / "eval" / "test_predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 8 and {"prompt", "prediction", "reference"} <= set(preds[0])

    assert (
        main(
            [
                "eval",
                "--run",
                str(run),
                "--limit",
                "4",
                "--set",
                "sampler.steps=4",
                "--set",
                "sampler.stop_at_eos=false",
            ]
        )
        == 0
    )
    metrics = json.loads((run / "eval" / "test_limit-4_steps-4_stop_at_eos-False_metrics.json").read_text())
    assert metrics["examples"] == 4 and metrics["nfe"] == 4
    assert len(json.loads((run / "eval" / "test_metrics.json").read_text())["sampler"]) > 0  # training's kept
    assert (
        f"wrote: {run / 'eval' / 'test_limit-4_steps-4_stop_at_eos-False_predictions.jsonl'}" in capsys.readouterr().out
    )
    before = (run / "eval" / "test_metrics.json").read_text()
    assert main(["eval", "--run", str(run), "--set", "task.test_size=3"]) == 0  # another task setting
    changed = [p for p in (run / "eval").glob("test_cfg-*_metrics.json")]
    assert len(changed) == 1 and (run / "eval" / "test_metrics.json").read_text() == before  # nothing replaced
    assert json.loads(changed[0].read_text())["changed_settings"] == {"task.test_size": 3}
    capsys.readouterr()
    assert main(["train", "-c", "digits_reverse", *small(tmp_path)]) == 0  # the same folder again: a new one
    assert f"run folder: {tmp_path / 'digits_reverse-2'}" in capsys.readouterr().out
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3  # the first run's curve is untouched

    assert main(["sample", "--run", str(run), "--prompt", "1234=", "--show-steps"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1234= -> ") and "denoising order" in out
    assert (run / "samples" / "steps_0.png").is_file()
    first = (run / "samples" / "steps_0.png").read_bytes()
    assert main(["sample", "--run", str(run), "--prompt", "98=", "--show-steps"]) == 0
    assert (run / "samples" / "steps_0-2.png").is_file() and (run / "samples" / "steps_0.png").read_bytes() == first
    assert main(["sample", "--run", str(run), "--prompt", "12a4x="]) == 0
    assert "'a', 'x' in '12a4x=' are not in the run's vocabulary" in capsys.readouterr().err


def test_list_and_show_config(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "llada_8b" in out and "low_confidence" in out and "digits" in out
    assert main(["show-config", "-c", "digits_reverse", "--set", "sampler.steps=4"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["sampler"]["steps"] == 4


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["show-config", "-c", "digits_reverse", "--set", "train.max_step=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'max_steps'" in err
    assert main(["list", "samplers"]) == 2
    assert "did you mean 'sampler'" in capsys.readouterr().err
    assert main(["eval", "--run", str(tmp_path)]) == 2
    assert "checkpoints/last" in capsys.readouterr().err


def test_validation_between_logging_steps_reaches_the_curve(tmp_path, capsys):
    sets = [*small(tmp_path), "--set", "train.max_steps=6", "--set", "train.log_every=4", "--set", "train.eval_every=3"]
    assert main(["train", "-c", "digits_reverse", *sets]) == 0
    shown = capsys.readouterr()
    assert "6/6" in shown.err and "Epoch" not in shown.err + shown.out  # the bar counts the 6 steps, on stderr
    run = tmp_path / "digits_reverse"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(x["step"], "val/exact_match" in x) for x in lines] == [(3, True), (4, False), (6, True)]
    assert main(["plot", str(run)]) == 0
    from PIL import Image

    from multimodal.plot import PANEL_SIZE

    with Image.open(run / "curves.png") as image:
        assert image.size[1] == round(PANEL_SIZE[1] * 100 * 3)  # loss, validation and throughput panels


def test_a_missing_optional_module_names_its_extra(monkeypatch, capsys):
    import multimodal.cli as cli

    def dispatch(args):
        raise ModuleNotFoundError("No module named 'fastapi'", name="fastapi")

    monkeypatch.setattr(cli, "_dispatch", dispatch)
    assert main(["list"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "mmdiff list: error: this needs 'fastapi', which the mmdiff[serve] extra installs: "
        "pip install -e '.[serve]' (or '.[all]')"
    ]
    assert "extra" not in cli.missing_extra(ModuleNotFoundError("x", name="left_pad"))


def test_a_model_source_is_a_run_or_a_folder_exactly_one():
    from multimodal.sources import open_source

    with pytest.raises(ValueError, match="serve needs one of a run folder or a LLaDA folder"):
        open_source(command="serve")
    with pytest.raises(ValueError, match="one of a run folder or a LLaDA folder"):
        open_source("a", "b")
