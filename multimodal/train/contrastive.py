"""`mmdiff pretrain-tower`: CLIP pre-training of an image tower on a task's captions (LLaDA-V's stage 0).

LLaDA-V starts from a SigLIP tower pre-trained on image-text pairs; a laptop run has no such tower,
so this command makes one: the task's caption data (``mode: caption`` layouts: an image and its
description) trains the tower with open_clip's contrastive loss (encoders/contrastive.py), and the
run folder receives ``tower.safetensors`` (the tower's own keys, loadable by the encoder's
``weights`` argument), ``config.yaml`` (the resolved config), ``vocab.json`` (the caption words)
and ``metrics.jsonl`` (loss, temperature, and image->text / text->image recall@1 on the validation
captions every `eval_every` steps).

A plain PyTorch loop rather than Lightning: the model is a few hundred thousand parameters and the
preprocessed images of a small corpus sit in one tensor, so batches are index draws and there is
nothing for a trainer to schedule. Captions that list objects separated by ", " are shuffled object
by object at every draw (`shuffle_parts`), so the text side cannot lean on their order and each
object's own words (position included) must carry its description.

With `hard_negatives` (the default) the loss is NegCLIP's (encoders/contrastive.py): every caption gets a copy with
one word of one part replaced by another word seen at the same place of a part ("large red circle top
left" -> "large red star top left"), which the image must rank below its own caption.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from encoders.contrastive import ContrastiveConfig
from multimodal.config import ConfigError, apply_overrides, dump, from_dict, load_yaml
from multimodal.train.config import CONFIG_ROOT
from multimodal.train.optim import OptimConfig
from tasks import TaskConfig, task_config_class

log = logging.getLogger(__name__)
TOWER_FILE = "tower.safetensors"


@dataclass
class TowerConfig:
    """The image tower being pre-trained: a registered encoder and its builder's arguments."""

    encoder: str = "conv_small"
    encoder_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class ContrastiveTrainConfig(OptimConfig):
    """Optimisation of the contrastive run (`OptimConfig`: AdamW, warm-up + cosine, as the diffusion runs;
    a shorter warm-up and CLIP's betas by default).

    Attributes:
        steps: optimiser steps; batch_size: image-caption pairs per step (the negatives of each other).
        shuffle_parts: shuffle the ", "-separated parts of each caption at every draw.
        hard_negatives: NegCLIP's loss with one word-swapped caption per image (module docstring);
            false: open_clip's ClipLoss on in-batch negatives only.
        eval_every: steps between validation retrieval scores (and at the end); eval_limit: pairs scored.
        threads: CPU threads for torch; log_every: steps between metric lines; output_dir: parent of run folders.
    """

    warmup_steps: int = 50
    betas: tuple[float, float] = (0.9, 0.98)
    steps: int = 600
    batch_size: int = 256
    shuffle_parts: bool = True
    hard_negatives: bool = True
    eval_every: int = 100
    eval_limit: int = 500
    threads: int | None = None
    log_every: int = 50
    output_dir: str = "runs"


@dataclass
class PretrainConfig:
    """Everything a tower pre-training run needs (configs/pretrain/*.yaml)."""

    name: str = "tower"
    seed: int = 0
    task: TaskConfig = field(default_factory=TaskConfig, metadata={"select": task_config_class})
    tower: TowerConfig = field(default_factory=TowerConfig)
    heads: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    train: ContrastiveTrainConfig = field(default_factory=ContrastiveTrainConfig)
    device: Literal["auto", "cpu", "cuda"] = "auto"


def resolve_pretrain_path(name_or_path: str) -> Path:
    """A path as given, or the name of a file in configs/pretrain/ (with or without .yaml)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    folder = CONFIG_ROOT / "pretrain"
    for candidate in (folder / name_or_path, folder / f"{name_or_path}.yaml"):
        if candidate.is_file():
            return candidate
    known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
    raise ConfigError(
        f"config '{name_or_path}' is neither a file nor a pre-training config in configs/pretrain ({known})"
    )


def load_pretrain_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """Read a tower pre-training YAML (path or configs/pretrain name) with --set overrides."""
    import encoders  # noqa: F401  (fills the encoder registry)
    from encoders import ENCODERS
    from multimodal.registry import suggest

    config = from_dict(PretrainConfig, apply_overrides(load_yaml(resolve_pretrain_path(name_or_path)), overrides))
    if (name := config.tower.encoder) not in ENCODERS:
        raise ConfigError(f"tower.encoder: unknown encoder '{name}'{suggest(name, ENCODERS.names())}")
    if config.train.steps <= 0 or config.train.batch_size < 2:
        raise ConfigError("train.steps must be positive and train.batch_size at least 2 (in-batch negatives)")
    return config


class CaptionVocab:
    """Whitespace words of the training captions; id 0 pads, id 1 stands for a word never seen."""

    def __init__(self, captions: list[str]):
        words = sorted({w for c in captions for w in c.split()})
        self.index = {w: i + 2 for i, w in enumerate(words)}

    def __len__(self) -> int:
        return len(self.index) + 2

    def encode(self, captions: list[str], max_len: int) -> torch.Tensor:
        """(B, L) ids, zero-padded; a caption longer than `max_len` words is an error naming it."""
        rows = [[self.index.get(w, 1) for w in c.split()] for c in captions]
        if (longest := max(map(len, rows))) > max_len:
            raise ValueError(f"a caption has {longest} words, more than heads.max_text_len {max_len}")
        out = torch.zeros(len(rows), longest, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row)
        return out


def _pairs(task: Any, split: str, tower: Any) -> tuple[torch.Tensor, list[str]]:
    """Preprocessed images (N, 3, H, W) and their captions, for the caption layouts of one split."""
    from tqdm import tqdm

    layouts = task.layouts(split, "each", "caption")
    images = [lay.media["image"][0] for lay in layouts]
    pixels = torch.stack([tower.preprocess(im) for im in tqdm(images, desc=f"images ({split})", leave=False)])
    return pixels, [lay.answer for lay in layouts]


def _shuffle(caption: str, rng: random.Random) -> str:
    parts = caption.split(", ")
    rng.shuffle(parts)
    return ", ".join(parts)


def slot_words(captions: list[str]) -> dict[int, list[str]]:
    """Words seen at each position of a caption's ", "-separated parts (0: size, 1: colour, ...)."""
    slots: dict[int, set[str]] = {}
    for caption in captions:
        for part in caption.split(", "):
            for i, word in enumerate(part.split()):
                slots.setdefault(i, set()).add(word)
    return {i: sorted(words) for i, words in slots.items() if len(words) > 1}


def hard_negative(caption: str, slots: dict[int, list[str]], rng: random.Random) -> str:
    """The caption with one word of one part replaced by another word of the same slot."""
    parts = [part.split() for part in caption.split(", ")]
    part = rng.choice(parts)
    places = [i for i in range(len(part)) if i in slots]
    if not places:
        return caption
    i = rng.choice(places)
    part[i] = rng.choice([w for w in slots[i] if w != part[i]])
    return ", ".join(" ".join(p) for p in parts)


@torch.no_grad()
def retrieval_recall(
    model: Any, pixels: torch.Tensor, ids: torch.Tensor, negative_ids: torch.Tensor, batch: int = 250
) -> dict[str, float]:
    """Recall@1 of image->text and text->image retrieval among the given pairs (chance: 1/N), and how
    often an image prefers its caption to that caption with one word changed (chance: 0.5)."""
    was_training = model.training
    model.eval()
    image = torch.cat([model.encode_image(pixels[i : i + batch]) for i in range(0, len(pixels), batch)])
    text = torch.cat([model.encode_text(ids[i : i + batch]) for i in range(0, len(ids), batch)])
    negative = torch.cat([model.encode_text(negative_ids[i : i + batch]) for i in range(0, len(ids), batch)])
    sim = image @ text.T  # (N, N)
    target = torch.arange(len(sim), device=sim.device)
    model.train(was_training)
    return {
        "i2t_r1": (sim.argmax(1) == target).float().mean().item(),
        "t2i_r1": (sim.argmax(0) == target).float().mean().item(),
        "hard_negative_acc": ((image * text).sum(-1) > (image * negative).sum(-1)).float().mean().item(),
    }


def pretrain_tower(config: PretrainConfig) -> Path:
    """Train the tower contrastively and write the run folder (module docstring). Returns the folder."""
    from open_clip.loss import ClipLoss
    from tqdm import tqdm

    from encoders import create_encoder
    from encoders.contrastive import ContrastiveTowers, negclip_loss
    from multimodal.checkpoint import write_weights
    from multimodal.train.optim import build_optimizer
    from multimodal.train.run import claim_folder
    from tasks import create_task

    cfg = config.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if cuda else "cpu")
    torch.manual_seed(config.seed)
    task = create_task(replace(config.task, mode="caption"))
    tower = create_encoder(config.tower.encoder, **config.tower.encoder_args)
    train_pixels, train_captions = _pairs(task, "train", tower)
    val_pixels, val_captions = _pairs(task, "validation", tower)
    val_pixels, val_captions = val_pixels[: cfg.eval_limit].to(device), val_captions[: cfg.eval_limit]
    vocab = CaptionVocab(train_captions)
    slots = slot_words(train_captions)
    val_ids = vocab.encode(val_captions, config.heads.max_text_len).to(device)
    fixed = random.Random(config.seed + 1)
    val_negative_ids = vocab.encode([hard_negative(c, slots, fixed) for c in val_captions], config.heads.max_text_len)
    val_negative_ids = val_negative_ids.to(device)
    model = ContrastiveTowers(tower, len(vocab), config.heads).to(device)
    optimizer, scheduler = build_optimizer(model, cfg, cfg.steps)
    loss_fn = ClipLoss()
    folder = claim_folder(Path(cfg.output_dir) / config.name, resume=False)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(dump(config))
    (folder / "vocab.json").write_text(json.dumps(vocab.index, indent=0))
    log.info("pre-training %s contrastively on %d captions into %s", config.tower.encoder, len(train_captions), folder)
    generator = torch.Generator().manual_seed(config.seed)
    rng = random.Random(config.seed)
    started, metrics = time.perf_counter(), folder / "metrics.jsonl"
    with metrics.open("w") as out, tqdm(total=cfg.steps, desc="pre-training tower") as bar:
        for step in range(1, cfg.steps + 1):
            idx = torch.randperm(len(train_captions), generator=generator)[: cfg.batch_size]
            captions = [train_captions[i] for i in idx.tolist()]
            if cfg.shuffle_parts:
                captions = [_shuffle(c, rng) for c in captions]
            ids = vocab.encode(captions, config.heads.max_text_len).to(device)
            image, text, scale = model(train_pixels[idx].to(device), ids)
            if cfg.hard_negatives:
                negatives = [hard_negative(c, slots, rng) for c in captions]
                neg = model.encode_text(vocab.encode(negatives, config.heads.max_text_len).to(device))
                loss = negclip_loss(image, text, neg, scale)
            else:
                loss = loss_fn(image, text, scale)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            bar.update()
            row: dict[str, Any] = {}
            if step % cfg.log_every == 0 or step == cfg.steps:
                row = {"loss": loss.item(), "logit_scale": model.logit_scale.exp().item()}
                row["lr"] = scheduler.get_last_lr()[0]
            if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                row.update(
                    {f"val/{k}": v for k, v in retrieval_recall(model, val_pixels, val_ids, val_negative_ids).items()}
                )
                log.info("step %d: loss %.3f, image->text recall@1 %.3f", step, loss.item(), row["val/i2t_r1"])
            if row:
                elapsed = round(time.perf_counter() - started, 1)
                out.write(json.dumps({"step": step, "elapsed_s": elapsed, **row}) + "\n")
                out.flush()
    write_weights(folder / TOWER_FILE, model.tower_state())
    return folder
