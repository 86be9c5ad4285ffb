"""The `mmdiff` console script, end to end on the embedded toy task for two steps."""

from __future__ import annotations

import json

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
    metrics = json.loads((run / "eval" / "test_metrics.json").read_text())
    assert metrics["examples"] == 4 and metrics["nfe"] == 4
    capsys.readouterr()

    assert main(["sample", "--run", str(run), "--prompt", "1234=", "--show-steps"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1234= -> ") and "denoising order" in out
    assert (run / "samples" / "steps_0.png").is_file()


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
