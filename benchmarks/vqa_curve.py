"""Tables of VQA runs: test accuracy per question type beside the answer prior (and a control run),
and the validation learning curve, read from the run folders (eval/test_metrics.json, metrics.jsonl).

    python benchmarks/vqa_curve.py runs/shapes_vqa_stage2 --control runs/shapes_vqa_text_only

A pre-training run of `mmdiff pretrain-tower` (a folder with tower.safetensors) prints its retrieval
curve instead.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _rows(folder: Path) -> list[dict]:
    path = folder / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def curve(folder: Path) -> list[str]:
    """Markdown rows: step, elapsed time, and every val/* number logged at that step."""
    rows = [r for r in _rows(folder) if any(k.startswith("val/") and k != "val/step" for k in r)]
    if not rows:
        return [f"{folder}: no validation rows in metrics.jsonl"]
    keys = sorted({k for r in rows for k in r if k.startswith("val/") and k != "val/step" and "/n/" not in k})
    keys = [k for k in keys if not k.startswith("val/prior")]
    out = ["| step | elapsed | " + " | ".join(k[4:] for k in keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for r in rows:
        elapsed = r.get("elapsed_s", r.get("time_s"))
        cells = [f"{100 * r[k]:.1f}" if k in r else "" for k in keys]
        out.append(f"| {r['step']} | {elapsed:.0f} s | " + " | ".join(cells) + " |")
    return out


def per_type(folder: Path, control: Path | None) -> list[str]:
    """Markdown rows: question type, n, accuracy, prior (and the control's accuracy)."""
    metrics = json.loads((folder / "eval" / "test_metrics.json").read_text())
    ctrl = json.loads((control / "eval" / "test_metrics.json").read_text()) if control else {}
    types = sorted(k.split("/", 1)[1] for k in metrics if k.startswith("accuracy/"))
    head = "| type | n | accuracy | answer prior |" + (" text-only control |" if ctrl else "")
    out = [head, "|---" * (5 if ctrl else 4) + "|"]
    for t in [*types, None]:
        acc = metrics[f"accuracy/{t}"] if t else metrics["accuracy"]
        prior = metrics[f"prior/{t}"] if t else metrics["answer_prior"]
        n = metrics[f"n/{t}"] if t else metrics["examples"]
        row = f"| {t or 'all'} | {n} | {100 * acc:.1f} % | {100 * prior:.1f} % |"
        if ctrl:
            row += f" {100 * (ctrl[f'accuracy/{t}'] if t else ctrl['accuracy']):.1f} % |"
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders")
    parser.add_argument("--control", type=Path, default=None, help="a text-only control run of the same task")
    args = parser.parse_args()
    for folder in args.runs:
        print(f"## {folder}\n")
        if (folder / "eval" / "test_metrics.json").is_file():
            print("\n".join(per_type(folder, args.control)) + "\n")
        print("\n".join(curve(folder)) + "\n")


if __name__ == "__main__":
    main()
