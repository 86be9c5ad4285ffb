"""Decoding a task's examples with a run's sampler, scoring them, writing predictions next to metrics."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from multimodal.diffusion.ctc import ctc_greedy
from multimodal.sampling import SamplerConfig, StepInfo, create_sampler, generate
from multimodal.tokenizer import BuiltinTokenizer, HFTokenizer
from multimodal.train.run import Run, pick_device
from multimodal.types import SampleOutput
from tasks import Layout


def decode_answer(tokenizer: BuiltinTokenizer | HFTokenizer, ids: list[int]) -> str:
    """Answer text of generated ids: everything before the first EOS (EoT), special tokens dropped."""
    stops = {tokenizer.eos_id, getattr(tokenizer, "eot_id", None)}
    for i, tok in enumerate(ids):
        if tok in stops:
            ids = ids[:i]
            break
    return tokenizer.decode([t for t in ids if t != tokenizer.mask_id])


@torch.no_grad()
def answer_layouts(
    run: Run,
    layouts: Sequence[Layout],
    sampler_config: SamplerConfig | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    ctc_texts: list[str] | None = None,
) -> tuple[list[str], SampleOutput]:
    """Decode answers for laid-out examples (modality items encoded once); returns texts and the raw output.

    With `ctc_texts`, the best-path transcripts of a tower's CTC head are appended to it, one per layout
    (nothing when no tower has a head)."""
    device = pick_device(run.config.device)
    run.model.to(device).eval()
    batch = run.task.prompt_batch(layouts, run.tokenizer, run.modalities)
    kwargs: dict[str, Any] = {}
    if batch.modality_inputs:
        inputs = {k: v.to(device) for k, v in batch.modality_inputs.items()}
        masks = {k: v.to(device) for k, v in batch.modality_masks.items()}
        features, feature_masks, extras = run.model.encode(inputs, masks)
        kwargs = {"modality_features": features, "feature_masks": feature_masks}
        if ctc_texts is not None:
            ctc_texts += ctc_transcripts(run, extras, len(layouts))
    sampler = create_sampler(sampler_config or run.config.sampler)
    out = generate(
        run.model,
        batch.prompts,
        sampler,
        run.special,
        pad_id=run.tokenizer.pad_id,
        generator=generator,
        callback=callback,
        **kwargs,
    )
    texts = [decode_answer(run.tokenizer, row.tolist()) for row in out.generated.cpu()]
    return texts, out


def ctc_transcripts(run: Run, extras: dict[str, dict[str, torch.Tensor]], rows: int) -> list[str]:
    """Best-path transcripts of the first tower with a CTC head, one per row (its clips joined), or []."""
    for aux in extras.values():
        if "ctc_logits" not in aux:
            continue
        texts = [""] * rows
        hypotheses = ctc_greedy(aux["ctc_logits"].cpu(), aux["lengths"].cpu(), run.tokenizer.pad_id)
        for row, ids in zip(aux["rows"].tolist(), hypotheses, strict=True):
            texts[row] = f"{texts[row]} {run.tokenizer.decode(ids)}".strip()
        return texts
    return []


def answer(run: Run, prompts: list[str], **kwargs: Any) -> tuple[list[str], SampleOutput]:
    """Decode answers for plain prompt texts."""
    return answer_layouts(run, [Layout(prompt=p, answer="") for p in prompts], **kwargs)


def evaluate(
    run: Run, split: str = "test", limit: int | None = None, batch_size: int | None = None, write: bool = True
) -> dict[str, Any]:
    """Decode the split with the run's sampler, score it, and (with `write`) save predictions and
    metrics under eval/."""
    custom = getattr(run.task, "evaluate_model", None)
    if custom is not None:  # tasks that decode by infilling (proteins) evaluate themselves
        out_dir = run.folder / "eval"
        out_dir.mkdir(parents=True, exist_ok=True)
        run.model.to(pick_device(run.config.device)).eval()
        start = time.perf_counter()
        metrics = custom(
            run.model, run.tokenizer, run.modalities, split, limit, out_dir, run.config.sampler, run.config.seed
        )
        metrics["seconds"] = round(time.perf_counter() - start, 2)
        if write:
            (out_dir / f"{split}_metrics.json").write_text(json.dumps(metrics, indent=2))
        return metrics
    layouts = run.task.eval_layouts(split)[: limit or None]
    batch_size = batch_size or run.config.train.eval_batch_size
    generator = torch.Generator(device=pick_device(run.config.device)).manual_seed(run.config.seed)
    predictions: list[str] = []
    ctc: list[str] = []  # a speech tower's own CTC transcripts, scored apart (multimodal/diffusion/ctc.py)
    nfe, gen_tokens, sample_steps, start = 0, 0, 0, time.perf_counter()
    for i in tqdm(range(0, len(layouts), batch_size), desc=f"decoding {split}", unit="batch", leave=False):
        texts, out = answer_layouts(run, layouts[i : i + batch_size], generator=generator, ctc_texts=ctc)
        predictions += texts
        nfe += out.nfe
        gen_tokens += out.generated.numel()
        # the steps each sample needed (its last commit): a batch runs as long as its slowest row
        sample_steps += int((out.commit_step.max(1).values + 1).clamp(min=0).sum())
    elapsed = time.perf_counter() - start
    metrics: dict[str, Any] = dict(run.task.metrics(predictions, layouts))
    if ctc and len(ctc) == len(layouts):
        for key, value in run.task.metrics(ctc, layouts).items():
            if key.startswith("wer") or key in ("S", "D", "I"):
                metrics[f"ctc_greedy/{key}"] = value
    if metrics.get("audio_seconds"):
        metrics["real_time_factor"] = round(elapsed / metrics["audio_seconds"], 4)
    metrics.update(
        {
            "split": split,
            "examples": len(layouts),
            "nfe": nfe,
            "steps_per_sample": round(sample_steps / max(len(layouts), 1), 2),
            "decode_seconds": round(elapsed, 3),
            "canvas_tokens_per_second": round(gen_tokens / max(elapsed, 1e-9), 1),
            "sampler": dict(vars(run.config.sampler)),
        }
    )
    if not write:
        return metrics
    out_dir = run.folder / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    details = run.task.prediction_details(predictions, layouts)
    with (out_dir / f"{split}_predictions.jsonl").open("w") as f:
        for i, (lay, pred, extra) in enumerate(zip(layouts, predictions, details, strict=True)):
            row = {"id": lay.meta.get("id"), "prompt": lay.prompt, "prediction": pred, "reference": lay.answer}
            if len(ctc) == len(layouts):
                row["ctc_greedy"] = ctc[i]
            row.update({k: v for k, v in lay.meta.items() if k not in row and isinstance(v, (str, int, float))})
            row.update(extra)
            f.write(json.dumps(row) + "\n")
    (out_dir / f"{split}_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
