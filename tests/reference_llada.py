"""Test oracles: an independent, deliberately naive re-statement of the released LLaDA modelling
code's forward pass and of its `generate` loop at temperature 0, written from their documented
semantics (PAPERS.md section 1). They read the released checkpoint key layout directly, so
comparing them with our backbone also checks the key conversion.
"""

from __future__ import annotations

import math

import torch

P = "model.transformer."


def _rms(x, w, eps):
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return w * x.to(dtype)


def _rotate_half(t):
    half = t.shape[-1] // 2
    return torch.cat((-t[..., half:], t[..., :half]), dim=-1)


def reference_forward(state: dict, cfg: dict, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
    """Logits (B, L, V) of the released architecture, positions 0..L-1, padding keys masked additively."""
    b, n = input_ids.shape
    d, heads = cfg["d_model"], cfg["n_heads"]
    kv_heads = cfg.get("n_kv_heads") or heads
    hd = d // heads
    eps = cfg["rms_norm_eps"]
    inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float) / hd))
    freqs = torch.einsum("i,j->ij", torch.arange(cfg["max_sequence_length"], dtype=torch.float), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    sin, cos = emb.sin()[None, None, :n], emb.cos()[None, None, :n]
    bias = torch.zeros(b, 1, 1, n)
    if attention_mask is not None and bool((attention_mask == 0).any()):
        m = attention_mask.float().view(b, 1, 1, n)
        bias = (1.0 - m) * torch.finfo(torch.float).min
    x = state[P + "wte.weight"][input_ids]
    for i in range(cfg["n_layers"]):
        k_ = f"{P}blocks.{i}."
        h = _rms(x, state[k_ + "attn_norm.weight"], eps)
        q = (h @ state[k_ + "q_proj.weight"].T).view(b, n, heads, hd).transpose(1, 2)
        k = (h @ state[k_ + "k_proj.weight"].T).view(b, n, kv_heads, hd).transpose(1, 2)
        v = (h @ state[k_ + "v_proj.weight"].T).view(b, n, kv_heads, hd).transpose(1, 2)
        if kv_heads != heads:
            k = k.repeat_interleave(heads // kv_heads, dim=1)
            v = v.repeat_interleave(heads // kv_heads, dim=1)
        q = (q.float() * cos + _rotate_half(q.float()) * sin).to(q.dtype)
        k = (k.float() * cos + _rotate_half(k.float()) * sin).to(k.dtype)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd) + bias
        out = att.softmax(-1) @ v
        x = x + out.transpose(1, 2).reshape(b, n, d) @ state[k_ + "attn_out.weight"].T
        h = _rms(x, state[k_ + "ff_norm.weight"], eps)
        gate = torch.nn.functional.silu(h @ state[k_ + "ff_proj.weight"].T)
        x = x + (gate * (h @ state[k_ + "up_proj.weight"].T)) @ state[k_ + "ff_out.weight"].T
    x = _rms(x, state[P + "ln_f.weight"], eps)
    head = state[P + "wte.weight"] if cfg.get("weight_tying") else state[P + "ff_out.weight"]
    return x @ head.T


def reference_generate(
    logits_fn,
    prompt: torch.Tensor,
    steps: int,
    gen_length: int,
    block_length: int,
    mask_id: int,
    cfg_scale: float = 0.0,
):
    """LLaDA's generate at temperature 0 with low-confidence remasking.

    Returns the final canvas (1, P + G) and, per step, the sorted list of canvas positions committed.
    """
    x = torch.full((1, prompt.shape[1] + gen_length), mask_id, dtype=torch.long)
    x[:, : prompt.shape[1]] = prompt
    prompt_index = x != mask_id
    num_blocks = gen_length // block_length
    per_block = steps // num_blocks
    order = []
    for blk in range(num_blocks):
        lo = prompt.shape[1] + blk * block_length
        hi = lo + block_length
        n_masked = int((x[:, lo:hi] == mask_id).sum())
        counts = [n_masked // per_block + (1 if s < n_masked % per_block else 0) for s in range(per_block)]
        for s in range(per_block):
            mask_index = x == mask_id
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[prompt_index] = mask_id
                both = logits_fn(torch.cat([x, un_x]))
                cond, uncond = both[:1], both[1:]
                logits = uncond + (cfg_scale + 1) * (cond - uncond)
            else:
                logits = logits_fn(x)
            x0 = logits.argmax(-1)
            p = torch.softmax(logits.double(), dim=-1)
            x0_p = torch.gather(p, -1, x0[..., None]).squeeze(-1)
            x0_p[:, hi:] = -math.inf
            x0 = torch.where(mask_index, x0, x)
            confidence = torch.where(mask_index, x0_p, torch.tensor(-math.inf, dtype=torch.float64))
            _, idx = torch.topk(confidence[0], k=counts[s])
            x[0, idx] = x0[0, idx]
            order.append(sorted(idx.tolist()))
    return x, order
