"""A picture of the denoising order: each answer token in a box coloured by the step that committed it."""

from __future__ import annotations

from pathlib import Path


def save_denoising_order(path: str | Path, tokens: list[str], commit_step: list[int], title: str = "") -> Path:
    """Write a PNG: one box per answer position, text = token, colour = commit step (early dark, late light).

    Args:
        path: output PNG file.
        tokens: the decoded token strings, one per answer position.
        commit_step: the step at which each position was committed (-1: given, never masked).
        title: a line written above the boxes (the prompt, say).
    """
    from PIL import Image, ImageDraw

    cols, box_w, box_h, pad = 16, 64, 40, 8
    rows = max(1, -(-len(tokens) // cols))
    width, height = pad * 2 + cols * box_w, pad * 3 + 18 + rows * box_h + 24
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((pad, pad), title[:120], fill="black")
    last = max([s for s in commit_step if s >= 0], default=0)
    for i, (tok, step) in enumerate(zip(tokens, commit_step, strict=True)):
        x, y = pad + (i % cols) * box_w, pad * 2 + 18 + (i // cols) * box_h
        shade = 200 if step < 0 else int(40 + 180 * step / max(last, 1))
        fill = (shade, shade, 255) if step >= 0 else (220, 220, 220)
        draw.rectangle([x, y, x + box_w - 2, y + box_h - 2], fill=fill, outline="black")
        draw.text((x + 4, y + 4), tok[:8], fill="black" if shade > 110 else "white")
        draw.text((x + 4, y + 22), "-" if step < 0 else f"s{step}", fill="black" if shade > 110 else "white")
    draw.text(
        (pad, height - 20),
        f"box = answer position; colour and s<k> = step k that committed it (0..{last})",
        fill="black",
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
