"""ASR deliberation (Whisper-LLaDA): mask part of a first-pass hypothesis and refill it with the
audio-conditioned diffusion model.

Modes (PAPERS.md section 4):

* ``random``: mask `mask_ratio` of the hypothesis tokens, chosen uniformly, and refill them together;
* ``low_confidence``: one extra forward scores every hypothesis token under the audio (with the
  whole hypothesis masked, the input a masked diffusion model is trained on) and the least probable
  `mask_ratio` are masked and refilled;
* ``chunks``: semi-autoregressive: the hypothesis is split into `chunks` contiguous pieces, and each in
  turn is masked entirely and refilled with the rest visible.

The hypothesis keeps its token count (deliberation refills: no word can be added, and a word is dropped
only where an EOS is written over it), unless ``free_length``: then the refilled region is the whole
answer canvas the model was trained to fill (``task.answer_length`` positions: the hypothesis, then EOS),
so masking an EOS lets the model write a word the first pass dropped and writing an EOS ends the text
early; the result is read up to its first EOS. A real recogniser's first pass often has the wrong number
of words (a dropped short utterance, a split or merged word), which a fixed count can never repair. The
text-only control (`text_only`) runs the same model with the audio withheld: Whisper-LLaDA's finding
is that it does not help, so the gain must come from listening.

``protocol: reference`` follows the released Whisper-LLaDA loop where it chooses differently from us:
floor(ratio x n) tokens are masked (we round); the low-confidence forward sees the tokenizer's padding
token at the hypothesis positions (we show masks, the input the model was trained to fill); chunks are
n // chunks tokens each with the remainder in the last (we spread the remainder). Both refill one
token per model call, most confident first, as the release does for up to steps / chunks tokens per
chunk (its default 128 steps; a longer chunk would commit several tokens per call there). The
release's batch-level EOS rule in plain decoding (the first EOS of any row cuts every row) is a bug at
batch sizes above one; ours stops each row at its own EOS (``sampler.stop_at_eos``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from tqdm.auto import tqdm

from multimodal.sampling import SamplerConfig
from multimodal.sampling.engine import EncodedMedia, Engine
from multimodal.types import MultimodalBatch
from tasks.base import Layout, Task
from tasks.commands import CommandContext, CommandOutput, TaskCommand, register_command


@dataclass
class DeliberationConfig:
    """Attributes: mode, mask_ratio, chunks, protocol, free_length (module docstring); text_only withholds
    the audio."""

    mode: Literal["random", "low_confidence", "chunks"] = "low_confidence"
    mask_ratio: float = 0.3
    chunks: int = 4
    text_only: bool = False
    protocol: Literal["ours", "reference"] = "ours"
    free_length: bool = False


def _strip_media(layout: Layout) -> Layout:
    prompt = layout.prompt
    for token in ("<audio>", "<image>"):
        prompt = prompt.replace(token, "")
    return replace(layout, prompt=" ".join(prompt.split()), media={})


@torch.no_grad()
def deliberate(
    engine: Engine,
    task: Task,
    layouts: Sequence[Layout],
    hypotheses: Sequence[str],
    config: DeliberationConfig,
    generator: torch.Generator | None = None,
) -> tuple[list[str], int]:
    """Refill part of each hypothesis; returns the new hypotheses and the model calls made."""
    tokenizer, special = engine.tokenizer, engine.special
    if config.text_only:
        layouts = [_strip_media(lay) for lay in layouts]
    batch = task.prompt_batch(layouts, tokenizer, engine.modalities if not config.text_only else {})
    hyp_ids = [tokenizer.encode(h) for h in hypotheses]
    width_p = max(len(p) for p in batch.prompts)
    width_h = max(1, max(len(h) for h in hyp_ids))
    if config.free_length:
        canvas_length = getattr(task.config, "answer_length", None)
        if not canvas_length:
            raise ValueError("free-length deliberation refills the answer canvas: set task.answer_length")
        width_h = max(width_h, canvas_length)
    b = len(hyp_ids)
    ids = torch.full((b, width_p + width_h), tokenizer.eos_id, dtype=torch.long)
    attention = torch.ones_like(ids)
    region = torch.zeros_like(ids, dtype=torch.bool)  # hypothesis tokens
    for i, (p, h) in enumerate(zip(batch.prompts, hyp_ids, strict=True)):
        pad = width_p - len(p)
        ids[i, :pad], attention[i, :pad] = tokenizer.pad_id, 0
        ids[i, pad:width_p] = torch.tensor(p, dtype=torch.long)
        if h:
            ids[i, width_p : width_p + len(h)] = torch.tensor(h, dtype=torch.long)
        region[i, width_p : width_p + (width_h if config.free_length else len(h))] = True
    canvas = MultimodalBatch(
        input_ids=ids,
        maskable=region,
        attention_mask=attention,
        modality_inputs=batch.modality_inputs,
        modality_masks=batch.modality_masks,
    )
    media = engine.encode(canvas)  # once for every call below
    calls, reference = 0, config.protocol == "reference"
    if config.mode == "chunks":
        for chosen in chunk_masks(region, config.chunks, remainder_last=reference):
            canvas, n = _refill(engine, canvas, chosen, generator, media)
            calls += n
    else:
        if config.mode == "low_confidence":
            hidden_by = tokenizer.pad_id if reference else engine.special.mask_id
            scores = _scores(engine, canvas, media, hidden_by)
            calls += 1
        else:
            scores = torch.rand(ids.shape, generator=generator, device=generator.device if generator else "cpu")
        chosen = select_lowest(scores.cpu(), region, config.mask_ratio, floor=reference)
        canvas, n = _refill(engine, canvas, chosen, generator, media)
        calls += n
    out = []
    final = canvas.input_ids.cpu()
    for i in range(b):
        tokens = final[i][region[i]].tolist()
        if config.free_length and special.eos_id in tokens:
            tokens = tokens[: tokens.index(special.eos_id)]
        out.append(tokenizer.decode([t for t in tokens if t not in (special.eos_id, special.mask_id)]))
    return out, calls


def select_lowest(scores: torch.Tensor, region: torch.Tensor, ratio: float, floor: bool = False) -> torch.Tensor:
    """(B, L) bool: in each row, the round(ratio * n) (`floor`: floor(ratio * n), the release's count)
    lowest-scored of its n hypothesis positions."""
    chosen = torch.zeros_like(region)
    for i in range(region.shape[0]):
        size = int(region[i].sum())
        n = int(ratio * size) if floor else int(round(ratio * size))
        if n:
            candidates = torch.where(region[i], scores[i].float(), torch.full_like(scores[i].float(), float("inf")))
            chosen[i, candidates.topk(n, largest=False).indices] = True
    return chosen


def chunk_masks(region: torch.Tensor, chunks: int, remainder_last: bool = False) -> list[torch.Tensor]:
    """`chunks` (B, L) masks splitting each row's hypothesis positions into contiguous pieces, in order:
    sizes differing by at most one, or (`remainder_last`, the release's split) n // chunks each and
    the remainder in the last piece."""
    index = region.long().cumsum(1) - 1  # rank of each hypothesis position within its row
    lengths = region.sum(1, keepdim=True)
    if remainder_last:
        size = torch.div(lengths, chunks, rounding_mode="floor")  # (B, 1); 0 puts everything in the last
        piece = torch.div(index, size.clamp_min(1), rounding_mode="floor").clamp_max(chunks - 1)
        piece = torch.where(size > 0, piece, torch.full_like(piece, chunks - 1))
    else:
        piece = torch.div(index * chunks, lengths.clamp_min(1), rounding_mode="floor")
    return [region & (piece == c) for c in range(chunks)]


def _scores(engine: Engine, canvas: MultimodalBatch, media: EncodedMedia, hidden_by: int) -> torch.Tensor:
    """(B, L) log-probability of each hypothesis token with the whole hypothesis replaced by `hidden_by`
    (the mask token; the padding token under the reference protocol), in one forward."""
    ids = canvas.input_ids
    masked = torch.where(canvas.maskable, torch.full_like(ids, hidden_by), ids)
    logp = engine.logits(replace(canvas, input_ids=masked), media).log_softmax(-1).cpu()
    return logp.gather(-1, ids[..., None]).squeeze(-1)


def _refill(
    engine: Engine, canvas: MultimodalBatch, chosen: torch.Tensor, generator, media: EncodedMedia
) -> tuple[MultimodalBatch, int]:
    """Mask `chosen` and infill them one token per model call, most confident first."""
    n = int(chosen.sum(1).max())
    if n == 0:
        return canvas, 0
    ids = canvas.input_ids
    masked = torch.where(chosen, torch.full_like(ids, engine.special.mask_id), ids)
    sampler = SamplerConfig(steps=n, gen_length=n, block_length=n)
    out = engine.infill(replace(canvas, input_ids=masked), sampler, generator=generator, media=media)
    return replace(canvas, input_ids=out.sequences.cpu()), out.nfe


# ---- `mmdiff deliberate`: a file of first-pass hypotheses (tasks/commands.py)


def read_hypotheses(task: Task, path: Path, split: str | None) -> tuple[list[dict], list[Layout], list[str], list[str]]:
    """Rows of a hypothesis file (JSON lines: ``id``, ``hypothesis``, and ``audio`` or an id of `split`),
    with the layout, hypothesis and reference of each; ``reference`` / ``text`` give the truth when the
    split does not."""
    if not path.is_file():
        raise FileNotFoundError(f"hypothesis file not found: {path}")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not JSON ({err.msg})") from None
    if not rows:
        raise ValueError(f"{path} holds no hypotheses: nothing to deliberate")
    known = {lay.meta.get("id"): lay for lay in task.eval_layouts(split)} if split else {}
    layouts, hyps, refs = [], [], []
    for n, row in enumerate(rows, start=1):
        hyp = row.get("hypothesis", row.get("prediction"))
        if hyp is None:
            raise ValueError(f"{path}:{n}: no 'hypothesis'")
        if row.get("audio"):
            layouts.append(task.layout_for_prompt("", {"audio": str(path.parent / row["audio"])}))
        elif row.get("id") in known:
            layouts.append(known[row["id"]])
        else:
            raise ValueError(f"{path}:{n}: no 'audio' and id {row.get('id')!r} is not in the '{split}' split")
        hyps.append(hyp)
        refs.append(row.get("reference", row.get("text", layouts[-1].answer)))
    return rows, layouts, hyps, refs


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hypotheses", required=True, help="JSON lines: id, hypothesis, audio (or an id of --split)")
    p.add_argument("--mode", default="low_confidence", choices=["random", "low_confidence", "chunks"])
    p.add_argument("--ratio", type=float, default=0.3, help="fraction of hypothesis tokens to mask")
    p.add_argument("--chunks", type=int, default=4, help="chunks for the semi-autoregressive mode")
    p.add_argument("--text-only", action="store_true", help="withhold the audio (the control)")
    p.add_argument(
        "--free-length", action="store_true", help="refill the whole answer canvas, so words can be added or dropped"
    )
    p.add_argument(
        "--protocol", default="ours", choices=["ours", "reference"], help="reference: the released loop's choices"
    )
    p.add_argument("--split", default="test", help="task split that hypothesis ids refer to")


def deliberate_command(args: argparse.Namespace, context: CommandContext) -> CommandOutput:
    """WER of the hypotheses before and after deliberation, the model calls and the real-time factor;
    the new hypotheses go to eval/deliberation_<mode>[_text_only].jsonl beside the metrics."""
    from tasks.asr_metrics import wer_report

    config = DeliberationConfig(args.mode, args.ratio, args.chunks, args.text_only, args.protocol, args.free_length)
    path = Path(args.hypotheses)
    rows, layouts, hyps, refs = read_hypotheses(context.task, path, args.split)
    engine = context.engine
    generator, out, calls, start = engine.generator(), [], 0, time.perf_counter()
    size = engine.batch_size
    for i in tqdm(range(0, len(layouts), size), desc="deliberating", unit="batch", leave=False):
        new, n = deliberate(engine, context.task, layouts[i : i + size], hyps[i : i + size], config, generator)
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
        "protocol": config.protocol,
        "free_length": config.free_length,
        "utterances": len(out),
        "wer_before": before["wer"],
        "wer_after": after["wer"],
        "relative_reduction": (before["wer"] - after["wer"]) / max(before["wer"], 1e-9),
        "model_calls": calls,
        "seconds": round(elapsed, 3),
    }
    if audio:
        result["real_time_factor"] = round(elapsed / audio, 4)
    name = f"eval/deliberation_{config.mode}{'_text_only' if config.text_only else ''}"
    name += "_reference" if config.protocol == "reference" else ""
    name += "_free_length" if config.free_length else ""
    lines = [
        json.dumps({"id": row.get("id"), "hypothesis": hyp, "deliberated": new, "reference": ref})
        for row, hyp, new, ref in zip(rows, hyps, out, refs, strict=True)
    ]
    files = {
        f"{name}.jsonl": "".join(line + "\n" for line in lines),
        f"{name}_metrics.json": json.dumps(result, indent=2),
    }
    return CommandOutput(metrics=result, files=files)


register_command(
    TaskCommand(
        "deliberate",
        "refill part of first-pass ASR hypotheses with a speech run",
        ("asr",),
        _add_arguments,
        deliberate_command,
    )
)
