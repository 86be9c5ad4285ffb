"""The denoising-order picture: the prompt's image beside the boxes, each token's step and probability."""

from __future__ import annotations

import math

from PIL import Image, ImageChops

from multimodal.visualize import save_denoising_order


def test_the_picture_shows_the_image_and_the_commit_probabilities(tmp_path):
    red = Image.new("RGB", (40, 40), (255, 0, 0))
    plain = save_denoising_order(tmp_path / "plain.png", ["a", "b"], [0, 1], "q -> ab")
    bare = save_denoising_order(tmp_path / "bare.png", ["a", "b"], [0, 1], "q -> ab", image=red)
    shown = save_denoising_order(
        tmp_path / "p.png", ["a", "b"], [0, 1], "q -> ab", probability=[0.9, math.nan], image=red
    )
    with Image.open(plain) as a, Image.open(bare) as b, Image.open(shown) as c:
        assert b.width == a.width + 128 + 8  # a 128-pixel thumbnail column
        assert b.convert("RGB").getpixel((70, 70)) == (255, 0, 0)  # the image itself
        first, second = (144, 34, 206, 86), (208, 34, 270, 86)  # the two boxes
        diff = ImageChops.difference(b.convert("RGB"), c.convert("RGB"))
        assert diff.crop(first).getbbox() is not None  # "p=0.90" written in the first box
        assert diff.crop(second).getbbox() is None  # no probability for the second: nothing written
