"""``mmdiff first-pass``: a real autoregressive recogniser's hypotheses, the input of ``mmdiff deliberate``.

Whisper-LLaDA deliberates over the first pass of a trained autoregressive recogniser. This command runs
Moonshine Base English (encoders/moonshine_recogniser.py: the pinned release, greedy, KV cache) over a
split of a speech run's task and writes ``eval/first_pass_moonshine_<split>.jsonl``: per utterance its
id, the recogniser's own text (``raw``), the ``hypothesis`` written as the task's transcripts are, so
that the run's word tokenizer reads it, and the reference. Transcripts here are spoken forms: lower case,
words only (punctuation and hyphens become spaces) and numbers in words, so a number the recogniser
writes in digits is verbalised as the embedded corpus writes numbers (`number_words`: 205 -> "two hundred
and five"; a group of digits with a leading zero or more than four of them is read digit by digit, as a
code). It prints the corpus WER of the raw text and of the hypotheses (Whisper's English normalisation,
as every WER here, which writes numbers in digits on both sides) and the real-time factor. The run
supplies only the task's data; its model is not used.
"""

from __future__ import annotations

import argparse
import json
import re
import time

from tqdm.auto import tqdm

from tasks.asr_metrics import wer_report
from tasks.commands import CommandContext, CommandOutput, TaskCommand, register_command
from tasks.synthetic.spoken import ONES, number_words

_NOT_WORD = re.compile(r"[^a-z0-9' ]+")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}\b)")


def _spoken_number(digits: str) -> str:
    if len(digits) > 4 or (len(digits) > 1 and digits.startswith("0")):
        return " ".join(ONES[int(d)] for d in digits)
    return number_words(int(digits))


def transcript_style(text: str) -> str:
    """The recogniser's text as the corpus writes transcripts (module docstring): "9,923." -> "nine thousand
    nine hundred and twenty three", "861-029" -> "eight hundred and sixty one zero two nine"."""
    words = _NOT_WORD.sub(" ", _THOUSANDS.sub("", text.lower())).split()
    return " ".join(_spoken_number(w) if w.isdigit() else w for w in words)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--split", default="test", help="task split to transcribe")
    p.add_argument("--limit", type=int, default=None, help="first N utterances only")


def first_pass_command(args: argparse.Namespace, context: CommandContext) -> CommandOutput:
    """Transcribe a split with Moonshine; the hypothesis file and its WER."""
    import torch

    from encoders.moonshine_recogniser import MoonshineRecogniser

    layouts = context.task.eval_layouts(args.split)[: args.limit or None]
    if not layouts:
        raise ValueError(f"split '{args.split}' has no utterances")
    recogniser = MoonshineRecogniser(threads=torch.get_num_threads())
    rows, start = [], time.perf_counter()
    for layout in tqdm(layouts, desc=f"moonshine {args.split}", unit="utt", leave=False):
        (audio,) = layout.media["audio"]
        try:
            raw = recogniser.transcribe(audio)
        except ValueError as err:  # bad audio: one error naming the utterance, not "audio bytes"
            raise ValueError(f"utterance {layout.meta.get('id', '?')} of split '{args.split}': {err}") from None
        rows.append(
            {"id": layout.meta.get("id"), "hypothesis": transcript_style(raw), "raw": raw, "reference": layout.answer}
        )
    elapsed = time.perf_counter() - start
    references, ids = [r["reference"] for r in rows], [r["id"] for r in rows]
    report = wer_report([r["hypothesis"] for r in rows], references, ids)
    raw = wer_report([r["raw"] for r in rows], references, ids)
    audio_seconds = sum(lay.meta.get("duration_s", 0.0) for lay in layouts)
    metrics = {
        "recogniser": "moonshine_base_en (greedy)",
        "split": args.split,
        "utterances": len(rows),
        **{k: report[k] for k in ("wer", "S", "D", "I", "N")},
        "wer_raw_text": raw["wer"],
        "seconds": round(elapsed, 2),
    }
    if audio_seconds:
        metrics["real_time_factor"] = round(elapsed / audio_seconds, 4)
    name = f"eval/first_pass_moonshine_{args.split}"
    return CommandOutput(
        metrics=metrics,
        files={
            f"{name}.jsonl": "".join(json.dumps(r) + "\n" for r in rows),
            f"{name}_metrics.json": json.dumps(metrics, indent=2),
        },
    )


register_command(
    TaskCommand(
        "first-pass",
        "transcribe a split with Moonshine Base English (a real first pass for deliberate)",
        ("asr",),
        _add_arguments,
        first_pass_command,
    )
)
