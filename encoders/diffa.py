"""DIFFA's speech adapters as released (Zhou et al. 2025, PAPERS.md section 4), and its adapter file.

Both adapters read a Whisper encoder (hidden states indexed as transformers returns them: 0 is the
embedding output, i the output of layer i):

* ``diffa_semantic``: the last layer, frames beyond a multiple of 4 dropped, then Conv1d(C, C, k3)
  -> GELU -> Conv1d(C, 4C, k3, stride 4) -> Linear(4C, C) -> ReLU -> Linear(C, D) -> ReLU ->
  LayerNorm(D): floor(L / 4) tokens for L real encoder frames. DIFFA stage 1 puts its 20 learned
  prompt vectors (``trainable_prompts``) before them.
* ``diffa_acoustic``: per tapped layer (2, 5, 8, 11 of whisper-small) its own 64 learned queries go
  through one shared 2-layer Q-Former, transformers' BERT encoder with cross-attention (post-LN
  BERT layers, bidirectional: no causal mask is ever built, dropout 0.1, intermediate size 3072 as
  BertConfig's defaults, as many heads as the Whisper encoder); the per-layer outputs are mixed by a
  per-query softmax over layers (``layer_weights``, zeros at start), then LayerNorm and Linear: 64
  tokens whatever the duration. The queries attend to the whole padded 30 s window, as released.
* ``diffa_dual`` (stage 2): acoustic tokens, then semantic tokens, and no prompt vectors.

Module names are the release's, so its file loads by stripping a prefix: ``weights`` names DIFFA's
``pytorch_model.bin`` (read with ``weights_only``) or a safetensors / folder holding the same keys;
``semantic_connector.*``, ``acoustic_connector.*`` and ``trainable_prompts.weight`` go to the parts
that use them, strictly (missing, extra and mis-shaped keys named). The Whisper encoder weights in
that file are whisper-small's own (DIFFA freezes it); load them as the tower's.

The prompt DIFFA was trained with (tasks/asr.py, ``prompt_style: diffa``): the system line "You are a
helpful voice assistant.", then the user turn "This is the audio: <audio>. {instruction}" with the
speech embeddings spliced in right after "This is the audio:" and the literal " <audio>." kept after them
(tasks/asr.py: ``audio_in_instruction`` with a placeholder not named ``<audio>``).
"""

from __future__ import annotations

import torch
from torch import nn

from encoders.audio_adapters import SpeechAdapter, _valid
from encoders.base import SequenceFeatures, TokenCount
from encoders.projectors import PROJECTORS
from encoders.weights import load_into, load_state_dict, strip_prefix

DOWNSAMPLE = 4


def _release_part(state: dict[str, torch.Tensor], prefix: str, source: str) -> dict[str, torch.Tensor]:
    part = strip_prefix(state, prefix)
    if not part:
        raise ValueError(f"{source}: no {prefix}* keys (is it DIFFA's adapter file?)")
    return part


class SemanticAdapter(SpeechAdapter):
    """DIFFA's semantic connector (module docstring); names as the release's ``semantic_connector``."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        prompt_vectors: int = 0,
        weights: str | None = None,
        feature_mask: dict | None = None,
    ):
        super().__init__(out_dim, prompt_vectors, feature_mask)
        self.conv = nn.Sequential(
            nn.Conv1d(in_dim, in_dim, 3, padding=1),
            nn.GELU(),
            nn.Conv1d(in_dim, DOWNSAMPLE * in_dim, 3, stride=DOWNSAMPLE, padding=1),
        )
        self.linear_connector = nn.Sequential(
            nn.Linear(DOWNSAMPLE * in_dim, in_dim), nn.ReLU(), nn.Linear(in_dim, out_dim), nn.ReLU()
        )
        self.layernorm = nn.LayerNorm(out_dim)
        if weights:
            self.load_release(load_state_dict(weights), weights)

    def load_release(self, release: dict[str, torch.Tensor], source: str) -> None:
        state = _release_part(release, "semantic_connector.", source)
        if self.prompt.count and "trainable_prompts.weight" in release:
            state["prompt.vectors"] = release["trainable_prompts.weight"]
        load_into(self, state, source)

    def frames_to_tokens(self, frames: TokenCount) -> int:
        return frames.real // DOWNSAMPLE

    def tokens(self, features: SequenceFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        x = features.last  # (B, T, C)
        x = x[:, : x.shape[1] // DOWNSAMPLE * DOWNSAMPLE]  # drop frames beyond a multiple of 4
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)  # (B, T / 4, 4C)
        x = self.layernorm(self.linear_connector(x))  # (B, T / 4, D)
        return x, _valid(torch.div(features.lengths, DOWNSAMPLE, rounding_mode="floor"), x.shape[1])


def bert_qformer(dim: int, layers: int, heads: int, intermediate: int) -> nn.Module:
    """transformers' BERT encoder with cross-attention layers, as DIFFA builds its Q-Former."""
    from transformers import BertConfig
    from transformers.models.bert.modeling_bert import BertEncoder

    config = BertConfig(
        hidden_size=dim,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        add_cross_attention=True,
        is_decoder=True,
    )
    config._attn_implementation = "eager"  # standalone BERT modules need one named
    return BertEncoder(config)


class AcousticAdapter(SpeechAdapter):
    """DIFFA's acoustic connector (module docstring); names as the release's ``acoustic_connector``."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        layers: tuple[int, ...] | list[int] = (2, 5, 8, 11),
        queries: int = 64,
        qformer_layers: int = 2,
        heads: int | None = None,
        intermediate_size: int = 3072,
        prompt_vectors: int = 0,
        weights: str | None = None,
    ):
        super().__init__(out_dim, prompt_vectors)
        heads = heads or max(1, in_dim // 64)  # Whisper's encoder heads: d_model / 64 at every size
        self.layers = tuple(layers)
        self.layer_prompts = nn.ParameterList(nn.Parameter(torch.randn(1, queries, in_dim)) for _ in self.layers)
        self.layer_weights = nn.Parameter(torch.zeros(queries, len(self.layers)))  # per-query logits over layers
        self.qformer = bert_qformer(in_dim, qformer_layers, heads, intermediate_size)
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim))
        if weights:
            self.load_release(load_state_dict(weights), weights)

    def load_release(self, release: dict[str, torch.Tensor], source: str) -> None:
        load_into(self, _release_part(release, "acoustic_connector.", source), source)

    def frames_to_tokens(self, frames: TokenCount) -> int:
        return self.layer_weights.shape[0]

    def tokens(self, features: SequenceFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        states = features.hidden_states
        if max(self.layers) >= len(states):
            raise ValueError(
                f"acoustic adapter reads layer {max(self.layers)} but the encoder has {len(states)} outputs"
            )
        b = states[0].shape[0]
        per_layer = [
            self.qformer(hidden_states=prompt.expand(b, -1, -1), encoder_hidden_states=states[layer]).last_hidden_state
            for prompt, layer in zip(self.layer_prompts, self.layers, strict=True)
        ]  # each (B, Q, C)
        stacked = torch.stack(per_layer, dim=2)  # (B, Q, n_layers, C)
        weights = self.layer_weights.softmax(-1)[None, :, :, None]  # (1, Q, n_layers, 1)
        out = self.proj((stacked * weights).sum(2))  # (B, Q, D)
        return out, out.new_ones(out.shape[:2], dtype=torch.bool)


class DualAdapter(SpeechAdapter):
    """DIFFA stage 2: acoustic tokens followed by semantic tokens."""

    def __init__(self, in_dim: int, out_dim: int, prompt_vectors: int = 0, weights: str | None = None, **acoustic):
        super().__init__(out_dim, prompt_vectors)
        self.acoustic = AcousticAdapter(in_dim, out_dim, **acoustic)
        self.semantic = SemanticAdapter(in_dim, out_dim)
        if weights:
            release = load_state_dict(weights)  # read once: the file holds the Whisper encoder too
            self.acoustic.load_release(release, weights)
            self.semantic.load_release(release, weights)

    def frames_to_tokens(self, frames: TokenCount) -> int:
        return self.acoustic.frames_to_tokens(frames) + self.semantic.frames_to_tokens(frames)

    def tokens(self, features: SequenceFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        a, av = self.acoustic.tokens(features)
        s, sv = self.semantic.tokens(features)
        return torch.cat([a, s], 1), torch.cat([av, sv], 1)


PROJECTORS.register("diffa_semantic", SemanticAdapter)
PROJECTORS.register("diffa_acoustic", AcousticAdapter)
PROJECTORS.register("diffa_dual", DualAdapter)
