"""Real photos with an ImageNet class, for smoke-testing pretrained image towers (Debian's opencv-doc).

OpenCV's documentation package ships its sample images; five of them show one object that is an
ImageNet class without doubt. A tower whose checkpoint, key table and preprocessing are right names
them (tests/test_efficientnet_lite.py, tests/test_vision_torchvision.py; `benchmarks/imagenet_photos.py`
prints every tower's top-1 and its probability). Read from the pinned ``.deb`` in place, never installed.
"""

from __future__ import annotations

import io
from functools import cache

from PIL import Image

from multimodal.assets import Asset, read_members, register_asset

FOLDER = "usr/share/doc/opencv-doc/examples/data/"

# file -> ImageNet-1k class index (and its name, for messages)
PHOTOS = {
    "baboon.jpg": (372, "baboon"),
    "orange.jpg": (950, "orange"),
    "apple.jpg": (948, "Granny Smith"),
    "messi5.jpg": (805, "soccer ball"),
    "squirrel_cls.jpg": (335, "fox squirrel"),
}

OPENCV_PHOTOS = register_asset(
    Asset(
        name="opencv_photos",
        source="debian",
        package="opencv-doc",
        version="4.6.0+dfsg-12",
        filename="opencv-doc_4.6.0+dfsg-12_all.deb",
        sha256="4b12681df35878207ac7097dc66184b2ae552e4bf4ddd2af04a0f03ed0b8682a",
        members=tuple(FOLDER + name for name in PHOTOS),
        licence="Apache-2.0 (OpenCV samples)",
        what="sample photos of OpenCV's documentation: baboon, orange, apple, football, squirrel",
    )
)


@cache
def _photo_bytes() -> dict[str, bytes]:
    found = read_members(OPENCV_PHOTOS, [FOLDER + name for name in PHOTOS])  # one pass over the package
    return {name: found[FOLDER + name] for name in PHOTOS}


def photo(name: str) -> Image.Image:
    """One of `PHOTOS` as an RGB image, read from the pinned package."""
    if name not in PHOTOS:
        raise KeyError(f"no photo '{name}' (known: {', '.join(PHOTOS)})")
    return Image.open(io.BytesIO(_photo_bytes()[name])).convert("RGB")
