"""Deliberation over a file of first-pass hypotheses with a trained speech run (`mmdiff deliberate`).

The file holds JSON lines with ``id``, ``hypothesis`` and either ``audio`` (a path) or an id of the
run's task split (the audio is then taken from there); ``reference`` / ``text`` give the truth when
the split does not. WER is reported before and after, with the model calls and the real-time factor,
and the new hypotheses are written next to the run's evaluations.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from multimodal.train.run import Run, pick_device
from tasks.deliberation import DeliberationConfig, deliberate


def deliberate_file(
    run: Run, path: str | Path, config: DeliberationConfig, split: str = "test", batch_size: int = 64
) -> dict[str, Any]:
    from tasks.asr_metrics import wer_report

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"hypothesis file not found: {path}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    known = {lay.meta.get("id"): lay for lay in run.task.eval_layouts(split)} if split else {}
    layouts, hyps, refs = [], [], []
    for n, row in enumerate(rows, start=1):
        hyp = row.get("hypothesis", row.get("prediction"))
        if hyp is None:
            raise ValueError(f"{path}:{n}: no 'hypothesis'")
        if row.get("audio"):
            layouts.append(run.task.layout_for_prompt("", audio=str(path.parent / row["audio"])))
        elif row.get("id") in known:
            layouts.append(known[row["id"]])
        else:
            raise ValueError(f"{path}:{n}: no 'audio' and id {row.get('id')!r} is not in the '{split}' split")
        ref = row.get("reference", row.get("text", layouts[-1].answer))
        hyps.append(hyp)
        refs.append(ref)
    device = pick_device(run.config.device)
    run.model.to(device).eval()
    generator = torch.Generator(device=device).manual_seed(run.config.seed)
    out, calls, start = [], 0, time.perf_counter()
    for i in range(0, len(layouts), batch_size):
        new, n = deliberate(
            run.model,
            run.task,
            run.tokenizer,
            run.modalities,
            layouts[i : i + batch_size],
            hyps[i : i + batch_size],
            config,
            run.special,
            generator,
        )
        out += new
        calls += n
    elapsed = time.perf_counter() - start
    before, after = wer_report(hyps, refs), wer_report(out, refs)
    audio = sum(lay.meta.get("duration_s", 0.0) for lay in layouts)
    result = {
        "mode": config.mode,
        "mask_ratio": config.mask_ratio,
        "chunks": config.chunks,
        "text_only": config.text_only,
        "utterances": len(out),
        "wer_before": before["wer"],
        "wer_after": after["wer"],
        "relative_reduction": (before["wer"] - after["wer"]) / max(before["wer"], 1e-9),
        "model_calls": calls,
        "seconds": round(elapsed, 3),
    }
    if audio:
        result["real_time_factor"] = round(elapsed / audio, 4)
    name = f"deliberation_{config.mode}{'_text_only' if config.text_only else ''}"
    folder = run.folder / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{name}.jsonl").open("w") as f:
        for row, new, ref in zip(rows, out, refs, strict=True):
            f.write(
                json.dumps(
                    {
                        "id": row.get("id"),
                        "hypothesis": row.get("hypothesis", row.get("prediction")),
                        "deliberated": new,
                        "reference": ref,
                    }
                )
                + "\n"
            )
    (folder / f"{name}_metrics.json").write_text(json.dumps(result, indent=2))
    return result
