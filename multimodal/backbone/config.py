"""Backbone config and the registered presets (`llada_tiny` ... `llada_8b`).

The shapes of `llada_8b` are those of the released LLaDA-8B (PAPERS.md section 1); `llada_1b` is
the 1.65B LLaDA-architecture model used for the throughput figures (section 6). Presets live in
code rather than in configs/backbone/*.yaml so that tests can iterate over the registry and an
experiment YAML can say ``backbone: {preset: llada_tiny, n_layers: 2}``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from multimodal.registry import new_registry


@dataclass(frozen=True)
class BackboneConfig:
    """Architecture of a LLaDA-style bidirectional transformer.

    Attributes:
        name: preset name (informational; written into resolved configs).
        d_model: model width D.
        n_layers: number of transformer blocks.
        n_heads: query heads.
        n_kv_heads: key/value heads (grouped-query attention when < n_heads); None means n_heads.
        mlp_hidden: SwiGLU hidden width.
        vocab_size: rows of the embedding and the output head.
        max_seq_len: context length; longer inputs are refused.
        rope_theta: rotary base.
        rms_norm_eps: RMSNorm epsilon.
        tie_embeddings: share the input embedding with the output head (LLaDA: false).
        init_std: std of the normal initialisation of fresh weights.
    """

    name: str = "custom"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    mlp_hidden: int = 384
    vocab_size: int = 256
    max_seq_len: int = 4096
    rope_theta: float = 500000.0
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = False
    init_std: float = 0.02

    def __post_init__(self) -> None:
        for key in ("d_model", "n_layers", "n_heads", "mlp_hidden", "vocab_size", "max_seq_len"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be positive, got {getattr(self, key)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head dimension {self.d_model // self.n_heads} must be even for rotary embeddings")
        if self.n_heads % self.kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.kv_heads}")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def rotary_dim(self) -> int:
        """Leading dimensions of each head that rotary rotates (all of them here; LLaDA2: a fraction)."""
        return self.head_dim

    def mlp_flops_per_token(self) -> int:
        """Matrix-product FLOPs of one token through one block's feed-forward part (SwiGLU: 3 matrices)."""
        return 2 * 3 * self.d_model * self.mlp_hidden

    def num_parameters(self) -> int:
        """Parameter count computed from the shapes alone."""
        d, f, kv = self.d_model, self.mlp_hidden, self.kv_heads * self.head_dim
        per_block = d * d * 2 + d * kv * 2 + 3 * d * f + 2 * d  # q, out, k, v, swiglu, two norms
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.n_layers * per_block + d + head


BACKBONE_PRESETS = new_registry("backbone", "backbone preset")

for _preset in (
    # Tests and CPU smoke runs: about 1M parameters.
    BackboneConfig(
        name="llada_tiny", d_model=128, n_layers=4, n_heads=4, mlp_hidden=384, vocab_size=256, max_seq_len=1024
    ),
    # Grouped-query variant of the tiny shape, so GQA is exercised by the registry tests.
    BackboneConfig(
        name="llada_tiny_gqa",
        d_model=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        mlp_hidden=384,
        vocab_size=256,
        max_seq_len=1024,
    ),
    # CPU demos that visibly learn in minutes (3-10M parameters).
    BackboneConfig(
        name="llada_small", d_model=256, n_layers=6, n_heads=8, mlp_hidden=704, vocab_size=4096, max_seq_len=2048
    ),
    # The 1.65B LLaDA-architecture model of PAPERS.md section 6.
    BackboneConfig(
        name="llada_1b", d_model=2048, n_layers=22, n_heads=32, mlp_hidden=5632, vocab_size=126464, max_seq_len=4096
    ),
    # The released LLaDA-8B shape.
    BackboneConfig(
        name="llada_8b",
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=32,
        mlp_hidden=12288,
        vocab_size=126464,
        max_seq_len=4096,
    ),
):
    BACKBONE_PRESETS.register(_preset.name, _preset)


def backbone_preset(name: str, **overrides: object) -> BackboneConfig:
    """The registered preset `name`, with field overrides."""
    return replace(BACKBONE_PRESETS.get(name), **overrides)


def list_backbones(pattern: str = "*") -> list[str]:
    return BACKBONE_PRESETS.names(pattern)
