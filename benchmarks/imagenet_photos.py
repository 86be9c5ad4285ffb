"""ImageNet top-1 of the pinned image towers on real photos (Debian opencv-doc's samples, encoders/imagenet_photos.py).

Each tower's classifier with its pinned ImageNet checkpoint and its own evaluation transform:
torchvision's MobileNetV2 (IMAGENET1K_V1), timm's tf_efficientnet_lite0 / lite1 with the
EfficientNet-PyTorch checkpoints through the key table, and, as the check on the padding variant, the
same Lite0 weights in timm's efficientnet_lite0 (symmetric padding, BatchNorm eps 1e-5).

    python benchmarks/imagenet_photos.py
"""

from __future__ import annotations

import torch

from encoders.imagenet_photos import PHOTOS, photo
from encoders.vision_efficientnet_lite import lite_key_table, lite_weights
from encoders.vision_torchvision import mobilenet_v2_weights
from encoders.weights import load_state_dict


def classifiers():
    """(name, model, transform) of every tower checked."""
    import timm
    import torchvision

    mobilenet = torchvision.models.mobilenet_v2()
    mobilenet.load_state_dict(load_state_dict(mobilenet_v2_weights()))
    yield "torchvision mobilenet_v2", mobilenet, torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.transforms()
    for arch, variant in (("tf_efficientnet_lite0", "lite0"), ("tf_efficientnet_lite1", "lite1"),
                          ("efficientnet_lite0", "lite0")):  # fmt: skip
        model = timm.create_model(arch, pretrained=False)
        model.load_state_dict(lite_key_table(load_state_dict(lite_weights(variant)), [len(s) for s in model.blocks]))
        yield f"timm {arch}", model, timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))


def main() -> None:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    names = list(PHOTOS)
    print("| tower | " + " | ".join(f"{n} ({PHOTOS[n][1]})" for n in names) + " | right |")
    print("|---" * (len(names) + 2) + "|")
    for name, model, transform in classifiers():
        model.eval()
        cells, right = [], 0
        for n in names:
            with torch.no_grad():
                p = model(transform(photo(n))[None]).softmax(-1)[0]
            top = int(p.argmax())
            right += top == PHOTOS[n][0]
            cells.append(f"{info.index_to_description(top).split(',')[0]} {float(p[top]):.2f}")
        print(f"| {name} | " + " | ".join(cells) + f" | {right}/{len(names)} |")


if __name__ == "__main__":
    main()
