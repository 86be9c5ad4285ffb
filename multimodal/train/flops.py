"""Model FLOPs of a training step of the LLaDA backbone, and model FLOPs utilisation (MFU).

Counted from the config, not by a profiler, following the PaLM paper's MFU (Chowdhery et al. 2022,
appendix B): only matrix products count (a multiply-add is 2 FLOPs; norms, rotary, softmax and SiLU
are left out), the backward pass costs twice the forward (x3 in all), and work an implementation adds
(recomputation under activation checkpointing, FlashAttention's recomputed scores) is not model work.

Per layer and token of a row of n real tokens, forward: q and output projections 2 * 2 D^2, k and v
projections 2 * 2 D * kv (kv = n_kv_heads * head_dim), SwiGLU 3 * 2 D * mlp_hidden; per row, the
bidirectional attention's score and value products 2 * 2 n^2 D (full n x n: no causal halving).

Lengths are each row's *real* length (padding excluded), so MFU counts the useful work and padding
shows up as lost utilisation; pass padded lengths to count what the kernels compute instead. The
output head runs only where the loss needs it: the diffusion loss scores masked positions only
(multimodal.diffusion.loss), so `head_rows` is the number of masked tokens (default: every token, as
in a forward that returns logits). Modality encoders and projectors, LoRA adapters and the (free)
embedding lookup are not counted.

Peak throughputs are the datasheets' dense BF16 tensor-core figures (half the "with sparsity" ones).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from multimodal.backbone.config import BackboneConfig

# (name fragment, dense BF16 FLOP/s). A fragment matches a whole word run of torch.cuda.get_device_name()
# ("A10" does not match "A100" or "A10G"); the first match wins, so specific names come first.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.5e12),  # H100 PCIe: 1513 TFLOPS with sparsity
    ("H100 NVL", 835.5e12),  # H100 NVL: 1671 with sparsity
    ("H100", 989.5e12),  # H100 SXM5 ("NVIDIA H100 80GB HBM3"): 1979 with sparsity
    ("H200 NVL", 835.5e12),
    ("GH200", 989.5e12),
    ("H200", 989.5e12),  # H200 SXM: 1979 with sparsity
    ("A100", 312e12),  # A100 40GB and 80GB, SXM4 and PCIe
    ("L40S", 362.05e12),
    ("L40", 181.05e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("RTX 4090", 165.2e12),  # GeForce: BF16 with FP32 accumulation (Ada whitepaper)
    ("RTX 3090", 71e12),  # GA102 whitepaper, FP32 accumulation
    ("MI300X", 1307.4e12),  # AMD Instinct (ROCm builds report these names)
    ("MI250X", 383e12),
)


def _lengths(lengths: Sequence[int]) -> list[int]:
    out = [int(n) for n in lengths]
    if any(n < 0 for n in out):
        raise ValueError(f"sequence lengths must be >= 0, got {out}")
    return out


def forward_flops(config: BackboneConfig, lengths: Sequence[int], head_rows: int | None = None) -> int:
    """Matrix-product FLOPs of one backbone forward over a batch.

    Args:
        config: the backbone shape.
        lengths: tokens in each row of the batch (real lengths, or the padded length for every row).
        head_rows: positions the output head is applied to (default: all tokens, sum(lengths)).

    Returns:
        FLOPs (2 per multiply-add) of the projections, the attention products, the MLP and the head.
    """
    lengths = _lengths(lengths)
    tokens = sum(lengths)
    head_rows = tokens if head_rows is None else int(head_rows)
    if head_rows < 0:
        raise ValueError(f"head_rows must be >= 0, got {head_rows}")
    d, kv = config.d_model, config.kv_heads * config.head_dim
    per_token = 2 * (2 * d * d + 2 * d * kv) + config.mlp_flops_per_token()  # q, out, k, v; MLP or experts
    attention = 4 * d * sum(n * n for n in lengths)  # Q K^T and P V: 2 n^2 (n_heads * head_dim) FLOPs each
    return config.n_layers * (tokens * per_token + attention) + head_rows * 2 * d * config.vocab_size


def training_flops(config: BackboneConfig, lengths: Sequence[int], head_rows: int | None = None) -> int:
    """Model FLOPs of one training step (forward + backward = 3 x forward); arguments as `forward_flops`."""
    return 3 * forward_flops(config, lengths, head_rows)


def peak_bf16_flops(device_name: str | None) -> float | None:
    """Dense BF16 peak FLOP/s of the card `device_name` (torch.cuda.get_device_name()), None if unknown."""
    if not device_name:
        return None
    for fragment, peak in PEAK_BF16_FLOPS:
        if re.search(rf"(?<![A-Za-z0-9]){re.escape(fragment)}(?![A-Za-z0-9])", device_name, re.IGNORECASE):
            return peak
    return None


def mfu(flops_per_s: float, device_name: str | None) -> float | None:
    """Model FLOPs utilisation: achieved model FLOP/s over the card's dense BF16 peak (None: unknown card, CPU)."""
    peak = peak_bf16_flops(device_name)
    return None if peak is None else flops_per_s / peak
