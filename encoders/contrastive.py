"""Contrastive image-text pre-training of an image tower (CLIP, Radford et al. 2021; open_clip).

LLaDA-V starts from a pretrained SigLIP tower; a tower trained from scratch through one-word VQA
answers learns slowly (PAPERS.md section 3). This module pre-trains any `VisionTower` against
captions with open_clip's own contrastive loss (``open_clip.loss.ClipLoss``: symmetric InfoNCE over
the batch with a learned temperature), so that the tower's grid tokens already carry every object's
attributes and place before the diffusion model sees them.

`ContrastiveTowers` = the image tower + an attention-pooling head (one learned query over the
LayerNorm'd grid tokens, as open_clip's attentional pooler and SigLIP's MAP head) + a small text
transformer over caption words (pre-LN, mean-pooled over real tokens). Only the image tower is
kept afterwards (`tower_state`): its state dict loads into a fresh tower of the same arguments
(``conv_small(weights=...)``). The heads exist only to shape the tower's features.

In-batch negatives rarely differ from a caption in one attribute, so plain CLIP learns a bag of
words: on the shapes scenes it retrieves 95 % of 500 validation captions while its captions get
object shapes wrong (measured, benchmarks/RESULTS.md). `negclip_loss` adds NegCLIP's hard negatives
(Yuksekgonul et al. 2023): each image also has to rank its true caption above a copy with one word
changed, so every attribute of every object has to be in the features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from encoders.vision import VisionTower


@dataclass
class ContrastiveConfig:
    """Sizes of the contrastive heads.

    Attributes:
        embed_dim: width of the shared image-text embedding.
        text_width, text_layers, text_heads: the caption transformer.
        pool_heads: heads of the image attention pooler.
        max_text_len: longest caption in words.
        init_logit_scale: initial temperature as its log (open_clip: log(1 / 0.07)); clamped at log(100).
    """

    embed_dim: int = 128
    text_width: int = 128
    text_layers: int = 2
    text_heads: int = 4
    pool_heads: int = 4
    max_text_len: int = 48
    init_logit_scale: float = math.log(1 / 0.07)


class AttentionPool(nn.Module):
    """One learned query attends over the tokens (B, N, C) -> (B, C)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.query = nn.Parameter(torch.randn(1, 1, width) * width**-0.5)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.norm(tokens)
        pooled, _ = self.attn(self.query.expand(x.shape[0], -1, -1), x, x, need_weights=False)  # (B, 1, C)
        return pooled[:, 0]


class TextEncoder(nn.Module):
    """Word ids (B, L) with padding id 0 -> (B, width): pre-LN transformer, mean over real tokens."""

    def __init__(self, vocab_size: int, cfg: ContrastiveConfig):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, cfg.text_width, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(1, cfg.max_text_len, cfg.text_width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.text_width, cfg.text_heads, 4 * cfg.text_width, 0.0, "gelu", batch_first=True, norm_first=True
        )
        self.body = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.text_width)
        self.max_len = cfg.max_text_len

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.shape[1] > self.max_len:
            raise ValueError(f"caption of {ids.shape[1]} words exceeds max_text_len {self.max_len}")
        real = ids != 0  # (B, L)
        x = self.body(self.embed(ids) + self.pos[:, : ids.shape[1]], src_key_padding_mask=~real)
        x = self.norm(x) * real[..., None]
        return x.sum(1) / real.sum(1, keepdim=True).clamp(min=1)  # (B, width)


class ContrastiveTowers(nn.Module):
    """Image tower + pooling head and text encoder, projected to one normalised embedding space."""

    def __init__(self, tower: VisionTower, vocab_size: int, cfg: ContrastiveConfig | None = None):
        super().__init__()
        cfg = cfg or ContrastiveConfig()
        self.tower = tower
        self.pool = AttentionPool(tower.output_dim, cfg.pool_heads)
        self.image_proj = nn.Linear(tower.output_dim, cfg.embed_dim, bias=False)
        self.text = TextEncoder(vocab_size, cfg)
        self.text_proj = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(cfg.init_logit_scale))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> unit vectors (B, embed_dim)."""
        return nn.functional.normalize(self.image_proj(self.pool(self.tower(images))), dim=-1)

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) word ids -> unit vectors (B, embed_dim)."""
        return nn.functional.normalize(self.text_proj(self.text(ids)), dim=-1)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Image features, text features and the temperature, in ClipLoss's argument order."""
        return self.encode_image(images), self.encode_text(ids), self.logit_scale.clamp(max=math.log(100)).exp()

    def tower_state(self) -> dict[str, torch.Tensor]:
        """The image tower's weights alone: what the diffusion model's encoder loads."""
        return {k: v.detach().contiguous() for k, v in self.tower.state_dict().items()}


def negclip_loss(
    image: torch.Tensor, text: torch.Tensor, negatives: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """NegCLIP: symmetric InfoNCE where each image's candidates are every caption of the batch plus every
    hard-negative caption (B, C each, unit vectors); the captions' candidates are the images only."""
    labels = torch.arange(image.shape[0], device=image.device)
    per_image = logit_scale * image @ torch.cat([text, negatives]).T  # (B, 2B)
    per_text = logit_scale * text @ image.T  # (B, B)
    return (nn.functional.cross_entropy(per_image, labels) + nn.functional.cross_entropy(per_text, labels)) / 2
