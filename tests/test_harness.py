"""The lm-evaluation-harness model on local JSON tasks, run through the real harness (lm_eval)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("lm_eval", reason="pip install 'mmdiff[eval]'")

from multimodal.harness import MMDiffLM, evaluate  # noqa: E402

DOCS = [
    {"question": "12=", "choices": ["21", "12", "33"], "label": 0, "target": "21"},
    {"question": "345=", "choices": ["543", "354"], "label": 0, "target": "543"},
    {"question": "7=", "choices": ["7", "8", "9", "0"], "label": 0, "target": "7"},
]


def tiny_lm(seed=0):
    from multimodal.backbone import backbone_preset, create_backbone
    from multimodal.sampling import SamplerConfig
    from multimodal.sampling.engine import Engine
    from multimodal.tokenizer import BuiltinTokenizer

    tok = BuiltinTokenizer.build(["0123456789= \n"])
    torch.manual_seed(seed)
    model = create_backbone(backbone_preset("llada_tiny", vocab_size=len(tok), max_seq_len=32, init_std=0.2))
    engine = Engine(model, tok, SamplerConfig(steps=4, gen_length=4, block_length=4))
    return MMDiffLM(engine, mc_num=8, batch_size=4, seed=1)


def task_folder(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "digits.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    common = f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (tmp_path / "choice.yaml").write_text(
        "task: digits_choice\n" + common + "output_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        "target_delimiter: ''\nmetric_list:\n  - metric: acc\n"
    )
    (tmp_path / "gen.yaml").write_text(
        "task: digits_gen\n" + common + "output_type: generate_until\n"
        'doc_to_text: "{{question}}"\ndoc_to_target: "{{target}}"\n'
        "generation_kwargs:\n  until: ['=']\n  max_gen_toks: 6\n"
        "metric_list:\n  - metric: exact_match\n"
    )
    return tmp_path


def test_the_harness_scores_choices_with_the_elbo(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    lm = tiny_lm()
    out = evaluate(lm, ["digits_choice"], include_path=str(task_folder(tmp_path)))
    acc = out["results"]["digits_choice"]["acc,none"]
    # the same decision by hand: the choice with the highest ELBO, with the harness's request order
    from lm_eval.api.instance import Instance

    requests = [
        Instance("loglikelihood", doc, (doc["question"], choice), i)
        for doc in DOCS
        for i, choice in enumerate(doc["choices"])
    ]
    scores = [ll for ll, _ in tiny_lm().loglikelihood(requests[::-1])][::-1]  # order does not matter
    picks, k = [], 0
    for doc in DOCS:
        n = len(doc["choices"])
        picks.append(max(range(n), key=lambda j: scores[k + j]) == doc["label"])
        k += n
    assert out["n-samples"]["digits_choice"]["effective"] == 3
    assert acc == pytest.approx(sum(picks) / 3)  # the harness's accuracy is our ELBO's argmax
    assert all(s < 0 for s in scores)  # log-probabilities of 1-3 tokens under a random 16-token model


def test_generation_requests_cut_at_the_stop_string(tmp_path, monkeypatch):
    from lm_eval.api.instance import Instance

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    lm = tiny_lm()
    out = evaluate(lm, ["digits_gen"], include_path=str(task_folder(tmp_path)))
    assert "exact_match,none" in out["results"]["digits_gen"]
    texts = lm.generate_until([Instance("generate_until", {}, ("12=", {"until": ["="], "max_gen_toks": 6}), 0)])
    assert "=" not in texts[0] and len(texts[0]) <= 8  # 6 tokens rounded up to two blocks of 4
    rolled = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("1234567890" * 5,), 0)])
    assert rolled[0] < 0


def test_mmdiff_lm_eval_on_a_run(tmp_path, capsys, monkeypatch):
    from multimodal.cli import main
    from tests.test_cli import small

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert main(["train", "-c", "digits_reverse", *small(tmp_path), "--set", "train.max_steps=2"]) == 0
    tasks = task_folder(tmp_path / "tasks")
    capsys.readouterr()
    args = ["lm-eval", "--run", str(tmp_path / "digits_reverse"), "--tasks", "digits_choice", "--mc-num", "4"]
    assert main([*args, "--include-path", str(tasks)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.0 <= out["results"]["digits_choice"]["acc,none"] <= 1.0
