"""`mmdiff plot`: a run's learning and throughput curves from its metrics.jsonl, drawn to one PNG.

Panels, top to bottom, each only when the file has its numbers: the training loss (with masked_ce and
the auxiliary ctc loss), the validation metrics (val/*, one point per validation), and the throughput
(tok_s, with MFU in percent on a second axis). Drawn with matplotlib's object API on an Agg canvas, so
no display and no global pyplot state are involved.
"""

from __future__ import annotations

import json
from pathlib import Path

LOSS_KEYS = ("loss", "masked_ce", "ctc")
# validation bookkeeping, not quality: answer priors, counts, decoding cost
NOT_SCORES = ("prior", "examples", "nfe", "steps", "seconds", "per_second")
PANEL_SIZE = (8.0, 3.0)  # inches per panel (width, height)


def _is_score(key: str, values: list[float]) -> bool:
    """A validation number worth a curve: a fraction (accuracy, WER, exact match, ...) that is not bookkeeping."""
    return bool(values) and not any(w in key for w in NOT_SCORES) and all(0.0 <= v <= 1.5 for v in values)


def metrics_path(path: str | Path) -> Path:
    """`path` itself when it is a file, else RUN_DIR/metrics.jsonl."""
    path = Path(path)
    return path if path.is_file() else path / "metrics.jsonl"


def read_metrics(path: str | Path) -> list[dict]:
    """The rows of a metrics.jsonl file (or of RUN_DIR/metrics.jsonl, see `metrics_path`).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is empty or a line is not a metrics object.
    """
    path = metrics_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} line {number} is not JSON: {err}") from None
        if not isinstance(row, dict) or "step" not in row:
            raise ValueError(f"{path} line {number} is not a metrics object with a 'step'")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no metrics yet")
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that hold a number under `key`."""
    points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [p[0] for p in points], [float(p[1]) for p in points]


def save_curves(
    run_dir: str | Path, out: str | Path | None = None, dpi: int = 100, panel_size: tuple[float, float] = PANEL_SIZE
) -> Path:
    """Draw the curves of RUN_DIR/metrics.jsonl into a PNG (default RUN_DIR/curves.png); returns its path.

    The image is panel_size[0] * dpi pixels wide and panel_size[1] * dpi pixels high per panel.

    Raises:
        FileNotFoundError, ValueError: see `read_metrics`; ValueError also when no row holds a loss or tok_s.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        message = "plotting needs matplotlib: pip install matplotlib (or the mmdiff[observe] extra)"
        raise ModuleNotFoundError(message) from err

    source = metrics_path(run_dir)
    rows = read_metrics(source)
    losses = [k for k in LOSS_KEYS if _series(rows, k)[0]]
    val_keys = sorted({k for r in rows for k in r if k.startswith("val/") and k != "val/step"})
    val_keys = [k for k in val_keys if _is_score(k, _series(rows, k)[1])]
    throughput = bool(_series(rows, "tok_s")[0])
    panels = [name for name, keep in (("loss", losses), ("val", val_keys), ("tok_s", throughput)) if keep]
    if not panels:
        raise ValueError(f"{source} has neither a loss nor tok_s to plot")

    width, height = panel_size
    fig = Figure(figsize=(width, height * len(panels)), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "loss":
            for key in losses:
                ax.plot(*_series(rows, key), label=key)
            ax.set_ylabel("training loss")
        elif panel == "val":
            for key in val_keys:
                ax.plot(*_series(rows, key), marker="o", label=key.removeprefix("val/"))
            ax.set_ylabel("validation")
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", ncol=1 + len(val_keys) // 12)
            ax.grid(alpha=0.3)
            continue
        else:
            ax.plot(*_series(rows, "tok_s"), color="tab:blue", label="tokens/s")
            ax.set_ylabel("tokens / s")
            steps, mfu = _series(rows, "mfu")
            if steps:
                twin = ax.twinx()
                twin.plot(steps, [100 * m for m in mfu], color="tab:orange", label="MFU")
                twin.set_ylabel("MFU (%)")
                twin.legend(loc="lower right")
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    fig.suptitle(source.parent.name)

    target = Path(out) if out is not None else source.parent / "curves.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, format="png")
    return target
