"""A picture of the denoising order: each answer token in a box coloured by the step that committed it,
with the model's probability of the token when it was committed, and the prompt's image if it had one."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any


def save_denoising_order(
    path: str | Path,
    tokens: list[str],
    commit_step: list[int],
    title: str = "",
    probability: list[float] | None = None,
    image: str | Path | bytes | Any | None = None,
) -> Path:
    """Write a PNG: one box per answer position, text = token, colour = commit step (early dark, late light).

    Args:
        path: output PNG file.
        tokens: the decoded token strings, one per answer position.
        commit_step: the step at which each position was committed (-1: given, never masked).
        title: a line written above the boxes (the prompt, say).
        probability: per position, the model's probability of the token when it was committed (NaN: none).
        image: the prompt's image (a path, encoded bytes or a PIL image), drawn at the left.
    """
    from PIL import Image, ImageDraw

    cols, box_w, box_h, pad, thumb = 16, 64, 54, 8, 0
    picture = None
    if image is not None:
        picture = (
            image
            if isinstance(image, Image.Image)
            else Image.open(io.BytesIO(image) if isinstance(image, bytes) else image)
        )
        picture = picture.convert("RGB")
        thumb = 128
        picture = picture.resize((thumb, max(1, round(thumb * picture.height / max(picture.width, 1)))))
    rows = max(1, -(-len(tokens) // cols))
    left = pad + (thumb + pad if picture is not None else 0)
    width = left + cols * box_w + pad
    height = max(pad * 3 + 18 + rows * box_h + 24, pad * 2 + (picture.height if picture is not None else 0) + 24)
    canvas = Image.new("RGB", (width, height), "white")
    if picture is not None:
        canvas.paste(picture, (pad, pad))
    draw = ImageDraw.Draw(canvas)
    draw.text((left, pad), title[:120], fill="black")
    last = max([s for s in commit_step if s >= 0], default=0)
    for i, (tok, step) in enumerate(zip(tokens, commit_step, strict=True)):
        x, y = left + (i % cols) * box_w, pad * 2 + 18 + (i // cols) * box_h
        shade = 200 if step < 0 else int(40 + 180 * step / max(last, 1))
        fill = (shade, shade, 255) if step >= 0 else (220, 220, 220)
        ink = "black" if shade > 110 else "white"
        draw.rectangle([x, y, x + box_w - 2, y + box_h - 2], fill=fill, outline="black")
        draw.text((x + 4, y + 4), tok[:8], fill=ink)
        draw.text((x + 4, y + 20), "-" if step < 0 else f"s{step}", fill=ink)
        p = probability[i] if probability is not None else math.nan
        if not math.isnan(p):
            draw.text((x + 4, y + 36), f"p={p:.2f}", fill=ink)
    legend = f"box = answer position; colour and s<k> = step k that committed it (0..{last})"
    if probability is not None:
        legend += "; p = the model's probability of the token when committed"
    draw.text((pad, height - 20), legend, fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
