"""The "anyres_max_N" image layout of LLaVA-OneVision, as LLaDA-V releases use it.

Pixels: an image of size (W, H) is fitted to the best of a list of grid resolutions (multiples of the
tower's crop size, written ``(1x1),...,(6x6)`` or as a list of [width, height]); it is resized to fill
that resolution keeping its ratio, centred on black, and cut into crop-size tiles, row by row. The
whole image squashed to one crop (the "base" view) comes first. Resizing uses PIL's default filter, as
the release does.

Features: after the tower and the projector, the tiles' p x p features are put back on one grid
(rows x cols tiles), the rows or columns that show only the black padding are cut away
(``spatial_unpad``), the grid is shrunk bilinearly when it holds more than N tiles' worth of features
(by the factor sqrt(h w / (N p^2)), only when that exceeds 1.1), one ``image_newline`` embedding ends
every row, and the base view's p^2 features go first. `packed_grid` computes the final grid from the
sizes alone, so a prompt's placeholder is expanded to the right count before any feature exists.

One item travels as one tensor (`pack_crops`): slot 0 carries the image's width, height and tile count,
slots 1.. the base view and the tiles, so items with different tile counts stack with zero padding.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F


def grid_resolutions(pinpoints: str | Sequence[Sequence[int]], crop: int) -> list[tuple[int, int]]:
    """Candidate (width, height) resolutions: ``"(1x1),...,(6x6)"`` spans every (i x j) between the first
    and the last pair, times the crop size; a list is taken as given."""
    if isinstance(pinpoints, str):
        pairs = re.findall(r"\((\d+)x(\d+)\)", pinpoints)
        if not pairs:
            raise ValueError(f"image_grid_pinpoints {pinpoints!r}: expected the form '(1x1),...,(6x6)'")
        (a0, b0), (a1, b1) = (tuple(map(int, p)) for p in (pairs[0], pairs[-1]))
        return [(i * crop, j * crop) for i in range(a0, a1 + 1) for j in range(b0, b1 + 1)]
    out = [(int(w), int(h)) for w, h in pinpoints]
    if not out:
        raise ValueError("image_grid_pinpoints is empty")
    return out


def select_best_resolution(size: tuple[int, int], resolutions: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The resolution that keeps the most of the image's pixels once fitted, then wastes the fewest."""
    width, height = size
    best, most, least_waste = resolutions[0], -1, math.inf
    for w, h in resolutions:
        scale = min(w / width, h / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = w * h - effective
        if effective > most or (effective == most and waste < least_waste):
            best, most, least_waste = (w, h), effective, waste
    return best


def resize_and_pad(image: Any, target: tuple[int, int]) -> Any:
    """`image` resized to fill `target` (width, height) keeping its ratio, centred on black."""
    from PIL import Image

    width, height = image.size
    tw, th = target
    if tw / width < th / height:
        nw, nh = tw, min(math.ceil(height * tw / width), th)
    else:
        nw, nh = min(math.ceil(width * th / height), tw), th
    canvas = Image.new("RGB", (tw, th), (0, 0, 0))
    canvas.paste(image.resize((nw, nh)), ((tw - nw) // 2, (th - nh) // 2))
    return canvas


def crops(image: Any, resolutions: Sequence[tuple[int, int]], crop: int) -> list[Any]:
    """The base view then the tiles (row-major) of one PIL image."""
    padded = resize_and_pad(image, select_best_resolution(image.size, resolutions))
    w, h = padded.size
    tiles = [padded.crop((x, y, x + crop, y + crop)) for y in range(0, h, crop) for x in range(0, w, crop)]
    return [image.resize((crop, crop)), *tiles]


def pack_crops(views: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(1 + n, 3, S, S) views of an image of `size` -> (2 + n, 3, S, S): slot 0 holds width, height, n."""
    header = views.new_zeros(1, *views.shape[1:])
    header[0, 0, 0, :3] = torch.tensor([size[0], size[1], views.shape[0] - 1], dtype=views.dtype)
    return torch.cat([header, views])


def unpack_crops(item: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Inverse of `pack_crops` on one (possibly zero-padded) item: the real views and the image size."""
    width, height, tiles = (int(v) for v in item[0, 0, 0, :3].round().tolist())
    return item[1 : 2 + tiles], (width, height)


def unpadded_shape(rows: int, cols: int, size: tuple[int, int]) -> tuple[int, int]:
    """The (rows, cols) left of a rows x cols feature grid once the padding around an image of `size` is cut."""
    width, height = size
    if width / height > cols / rows:  # padded above and below
        pad = (rows - int(height * (cols / width))) // 2
        return rows - 2 * pad, cols
    pad = (cols - int(width * (rows / height))) // 2
    return rows, cols - 2 * pad


def packed_grid(
    size: tuple[int, int], resolutions: Sequence[tuple[int, int]], crop: int, side: int, max_tiles: int
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int] | None]:
    """For an image of `size`: its tile grid (cols, rows), the unpadded feature grid (h, w) and the size it
    is shrunk to (None: kept), with `side` features per tile side."""
    bw, bh = select_best_resolution(size, resolutions)
    cols, rows = bw // crop, bh // crop
    h, w = unpadded_shape(rows * side, cols * side, size)
    times = math.sqrt(h * w / (max_tiles * side**2))
    shrunk = (int(h // times), int(w // times)) if times > 1.1 else None
    return (cols, rows), (h, w), shrunk


def token_count(
    size: tuple[int, int], resolutions: Sequence[tuple[int, int]], crop: int, side: int, max_tiles: int
) -> int:
    """Embeddings an image of `size` becomes: the base view's side^2, then h rows of w features + a newline."""
    _, (h, w), shrunk = packed_grid(size, resolutions, crop, side, max_tiles)
    h, w = shrunk or (h, w)
    return side * side + h * (w + 1)


def arrange(
    views: torch.Tensor,
    newline: torch.Tensor,
    size: tuple[int, int],
    resolutions: Sequence[tuple[int, int]],
    crop: int,
    max_tiles: int,
) -> torch.Tensor:
    """(1 + n, side^2, D) projected features of the base view and the tiles -> (N, D) in prompt order."""
    side = math.isqrt(views.shape[1])
    (cols, rows), (h, w), shrunk = packed_grid(size, resolutions, crop, side, max_tiles)
    if views.shape[0] != 1 + rows * cols:
        raise ValueError(f"an image of size {size} has {rows * cols} tiles, got {views.shape[0] - 1}")
    d = views.shape[-1]
    grid = views[1:].reshape(rows, cols, side, side, d).permute(4, 0, 2, 1, 3).reshape(d, rows * side, cols * side)
    top, left = (rows * side - h) // 2, (cols * side - w) // 2
    grid = grid[:, top : top + h, left : left + w]
    if shrunk is not None:
        grid = F.interpolate(grid[None], list(shrunk), mode="bilinear")[0]
    grid = torch.cat([grid, newline.to(grid.dtype)[:, None, None].expand(d, grid.shape[1], 1)], dim=2)
    return torch.cat([views[0], grid.flatten(1).T])
