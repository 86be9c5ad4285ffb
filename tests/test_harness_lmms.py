"""The lmms-eval model: a local VQA task (JSON documents with image files) through the real harness on a
tiny LLaDA-V folder, scored by lmms-eval's own VQAv2 code."""

from __future__ import annotations

import json
import zlib

import pytest

pytest.importorskip("lmms_eval")

UTILS = """
from PIL import Image

from lmms_eval.tasks.vqav2.utils import vqav2_process_results_val


def doc_to_visual(doc):
    return [Image.open(doc["image"]).convert("RGB")]


def process_results(doc, result):
    return vqav2_process_results_val(doc, result)
"""


def test_a_local_vqa_task_through_lmms_eval(tmp_path, capsys):
    from PIL import Image

    from multimodal.harness_lmms import MMDiffLMMS, evaluate
    from multimodal.sampling import SamplerConfig
    from multimodal.serve.request_sampler import request_sampler
    from multimodal.sources import LLaDABackend, Turn
    from tests.test_llada_v import write_llada_v

    folder, *_ = write_llada_v(tmp_path / "LLaDA-V-tiny", vocab=20)  # every id a word or a special
    backend = LLaDABackend(folder, SamplerConfig(steps=4, gen_length=4, block_length=4), vision_heads=2)
    engine = backend.engine
    docs = []
    for i, (size, question) in enumerate([((60, 40), "what colour is it"), ((30, 50), "is it a square")]):
        path = tmp_path / f"image_{i}.png"
        Image.effect_noise(size, 40 + 20 * i).convert("RGB").save(path)
        # what the model answers when asked directly, with the seed the harness model uses
        batch = backend.chat([Turn("user", question, media={"image": [path.read_bytes()]})])
        sampler = request_sampler(engine.sampler_config, 4, 0.0, None)
        generator = engine.generator(zlib.crc32(question.encode()))
        direct = engine.texts(engine.generate(batch, sampler, generator=generator))[0]
        assert direct
        # the first document's annotators all gave that answer, the second's all gave another; each answer
        # has its id, as in VQAv2 (lmms-eval's leave-one-out drops every answer equal to the one left out)
        truth = direct if i == 0 else "zebra"
        answers = [{"answer": truth, "answer_id": k} for k in range(1, 11)]
        docs.append({"question_id": i, "question": question, "image": str(path), "answers": answers})
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "utils.py").write_text(UTILS)
    (tasks / "local_vqa.yaml").write_text(
        "task: mmdiff_local_vqa\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {tmp_path / 'docs.jsonl'}\n"
        "test_split: test\n"
        "output_type: generate_until\n"
        "doc_to_visual: !function utils.doc_to_visual\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_target: "question"\n'
        "generation_kwargs:\n  max_new_tokens: 4\n  until: ['\\n\\n']\n"
        "process_results: !function utils.process_results\n"
        "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
    )
    out = evaluate(MMDiffLMMS(backend), ["mmdiff_local_vqa"], str(tasks))
    assert out["results"]["mmdiff_local_vqa"]["exact_match,none"] == pytest.approx(0.5)
    # the same through the command line
    from multimodal.cli import main

    decoding = [a for k in ("steps", "gen_length", "block_length") for a in ("--set", f"sampler.{k}=4")]
    args = ["--llada", str(folder), "--vision-heads", "2", "--tasks", "mmdiff_local_vqa", "--include-path", str(tasks)]
    assert main(["lmms-eval", *args, *decoding]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["results"]["mmdiff_local_vqa"]["exact_match,none"] == pytest.approx(0.5)
