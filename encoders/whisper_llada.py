"""Whisper-LLaDA's speech adapter as released (PAPERS.md section 4), and its checkpoint's keys.

The last Whisper layer (1500 frames for a 30 s window) is cut into windows of 17 frames (0.333 s,
stride 17: 88 windows); in each window 4 learned queries (``speech_query_tokens``) go through a
BLIP-2 Q-Former (``adapter``: BERT-base width 768, 12 heads, 2 layers, cross-attention to the window
in every layer, keys and values read from Whisper's width), and ``linear_proj`` maps the 4 x 88 = 352
query outputs to the LLM width.

The BLIP-2 Q-Former's query path, which is all the adapter runs: the queries are LayerNorm'd (and
dropped out) by the embedding layer, with no position embedding; then per layer post-LN BERT
self-attention over the queries (bidirectional), post-LN cross-attention to the window, and the
query feed-forward (``intermediate_query`` / ``output_query``). The checkpoint also holds the parts
of the BERT model the query path never reads (word and position embeddings, the text feed-forward,
the MLM head ``cls.*``): they are recognised by name and set aside, and anything else unknown,
missing or mis-shaped is an error naming it.

``weights`` names the released ``.pth`` (``{"model": state, ...}``, read with ``weights_only``) or any
file with the same keys: ``adapter.*``, ``speech_query_tokens`` and ``linear_proj.*`` load here; its
peft LoRA keys (``llada.base_model.model.model.transformer.blocks.N.{q,k,v}_proj.lora_{A,B}.default.weight``)
belong to the backbone (multimodal/lora.py, ``train.lora.weights``).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from encoders.audio_adapters import SpeechAdapter
from encoders.base import SequenceFeatures, TokenCount
from encoders.projectors import PROJECTORS
from encoders.weights import load_into, load_state_dict, strip_prefix

# Parts of the BLIP-2 BERT the query path never reads (text embeddings and feed-forward, MLM head)
UNUSED_BY_QUERIES = re.compile(
    r"^(bert\.embeddings\.(word_embeddings|position_embeddings|position_ids)"
    r"|bert\.encoder\.layer\.\d+\.(intermediate|output)\.|cls\.)"
)


class _Attention(nn.Module):
    """BERT attention (``self`` projections + ``output`` dense and post-residual LayerNorm)."""

    def __init__(self, dim: int, heads: int, kv_dim: int, dropout: float, eps: float):
        super().__init__()
        self.self = nn.Module()
        self.self.query, self.self.key, self.self.value = (
            nn.Linear(dim, dim),
            nn.Linear(kv_dim, dim),
            nn.Linear(kv_dim, dim),
        )
        self.output = nn.Module()
        self.output.dense, self.output.LayerNorm = nn.Linear(dim, dim), nn.LayerNorm(dim, eps=eps)
        self.heads, self.dropout = heads, nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        split = lambda t: t.view(b, t.shape[1], self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.self.query(x)), split(self.self.key(memory)), split(self.self.value(memory))
        attn = self.dropout((q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5).softmax(-1))  # (B, h, n, m)
        context = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.output.LayerNorm(self.dropout(self.output.dense(context)) + x)


class _QueryLayer(nn.Module):
    """One Q-Former layer on the query path: self-attention, cross-attention, the query feed-forward."""

    def __init__(self, dim: int, heads: int, encoder_width: int, intermediate: int, dropout: float, eps: float):
        super().__init__()
        self.attention = _Attention(dim, heads, dim, dropout, eps)
        self.crossattention = _Attention(dim, heads, encoder_width, dropout, eps)
        self.intermediate_query = nn.Module()
        self.intermediate_query.dense = nn.Linear(dim, intermediate)
        self.output_query = nn.Module()
        self.output_query.dense, self.output_query.LayerNorm = nn.Linear(intermediate, dim), nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = self.crossattention(self.attention(x, x), memory)
        h = self.dropout(self.output_query.dense(F.gelu(self.intermediate_query.dense(x))))
        return self.output_query.LayerNorm(h + x)


class Blip2QFormer(nn.Module):
    """The BLIP-2 Q-Former's query path with the checkpoint's names (``bert.embeddings.LayerNorm``,
    ``bert.encoder.layer.N.*``)."""

    def __init__(
        self,
        encoder_width: int,
        dim: int = 768,
        layers: int = 2,
        heads: int = 12,
        intermediate: int = 3072,
        dropout: float = 0.1,
        eps: float = 1e-12,
    ):
        super().__init__()
        self.bert = nn.Module()
        self.bert.embeddings = nn.Module()
        self.bert.embeddings.LayerNorm = nn.LayerNorm(dim, eps=eps)
        self.bert.encoder = nn.Module()
        self.bert.encoder.layer = nn.ModuleList(
            _QueryLayer(dim, heads, encoder_width, intermediate, dropout, eps) for _ in range(layers)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, queries: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.bert.embeddings.LayerNorm(queries))  # (B, Q, dim): BLIP-2 normalises its queries
        for layer in self.bert.encoder.layer:
            x = layer(x, memory)
        return x


class WindowQFormer(SpeechAdapter):
    """Whisper-LLaDA's windowed Q-Former adapter (module docstring)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        window: int = 17,
        stride: int | None = None,
        queries: int = 4,
        qformer_layers: int = 2,
        width: int = 768,
        heads: int = 12,
        intermediate_size: int = 3072,
        prompt_vectors: int = 0,
        weights: str | None = None,
    ):
        super().__init__(out_dim, prompt_vectors)
        self.window, self.stride = window, stride or window
        self.speech_query_tokens = nn.Parameter(torch.randn(1, queries, width) * 0.02)
        self.adapter = Blip2QFormer(in_dim, width, qformer_layers, heads, intermediate_size)
        self.linear_proj = nn.Linear(width, out_dim)
        if weights:
            self.load_release(load_state_dict(weights), weights)

    def load_release(self, release: dict[str, torch.Tensor], source: str) -> None:
        adapter = strip_prefix(release, "adapter.")
        if not adapter:
            raise ValueError(f"{source}: no adapter.* keys (is it a Whisper-LLaDA checkpoint?)")
        state = {f"adapter.{k}": v for k, v in adapter.items() if not UNUSED_BY_QUERIES.match(k)}
        state["speech_query_tokens"] = release.get("speech_query_tokens")
        state |= {f"linear_proj.{k}": v for k, v in strip_prefix(release, "linear_proj.").items()}
        load_into(self, {k: v for k, v in state.items() if v is not None}, source)

    def _windows(self, frames: int) -> int:
        return 0 if frames < self.window else (frames - self.window) // self.stride + 1

    def frames_to_tokens(self, frames: TokenCount) -> int:
        return self.speech_query_tokens.shape[1] * self._windows(frames.total)  # windows of the padded input

    def tokens(self, features: SequenceFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        x = features.last  # (B, T, C)
        b, _, c = x.shape
        windows = x.unfold(1, self.window, self.stride)  # (B, n, C, window)
        n = windows.shape[1]
        windows = windows.permute(0, 1, 3, 2).reshape(b * n, self.window, c)  # (B * n, window, C)
        out = self.adapter(self.speech_query_tokens.expand(b * n, -1, -1), windows)  # (B * n, Q, width)
        out = self.linear_proj(out).reshape(b, n * self.speech_query_tokens.shape[1], -1)  # (B, n * Q, D)
        return out, out.new_ones(out.shape[:2], dtype=torch.bool)


PROJECTORS.register("window_qformer", WindowQFormer)
