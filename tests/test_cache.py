"""The backbone's key/value cache contract: fill, overwrite a slice, attend over the whole canvas."""

from __future__ import annotations

import pytest
import torch

from multimodal.backbone import KVCache, backbone_preset, create_backbone


@pytest.fixture
def model():
    torch.manual_seed(0)
    return create_backbone(backbone_preset("llada_tiny_gqa", max_seq_len=64, init_std=0.1)).eval()


def test_filling_forward_equals_uncached(model):
    ids = torch.randint(4, 256, (2, 20))
    cache = KVCache()
    out = model(ids, cache=cache)
    torch.testing.assert_close(out.logits, model(ids).logits)
    assert cache.filled and cache.length == 20 and len(cache.keys) == 4
    assert cache.keys[0].shape == (2, 2, 20, 32)  # (B, H_kv, L, head_dim)


@pytest.mark.parametrize("start,end", [(8, 20), (8, 12), (0, 5)])
def test_partial_forward_on_an_unchanged_canvas_is_exact(model, start, end):
    ids = torch.randint(4, 256, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, :3] = 0
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    full = model(ids, attention_mask=mask, position_ids=pos).logits
    cache = KVCache()
    model(ids, attention_mask=mask, position_ids=pos, cache=cache)
    part = model(ids[:, start:end], attention_mask=mask, position_ids=pos[:, start:end], cache=cache, cache_start=start)
    torch.testing.assert_close(part.logits, full[:, start:end], atol=1e-5, rtol=1e-5)


def test_partial_forward_overwrites_its_slice_only(model):
    ids = torch.randint(4, 256, (1, 16))
    cache = KVCache()
    model(ids, cache=cache)
    before = [k.clone() for k in cache.keys]
    changed = ids.clone()
    changed[0, 10:14] = 5
    model(changed[:, 10:14], cache=cache, cache_start=10)
    for old, new in zip(before, cache.keys, strict=True):
        torch.testing.assert_close(new[:, :, :10], old[:, :, :10])
        torch.testing.assert_close(new[:, :, 14:], old[:, :, 14:])
        assert not torch.allclose(new[:, :, 10:14], old[:, :, 10:14])
    # stale keys elsewhere make the cached result approximate, but the slice itself is recomputed
    fresh = KVCache()
    model(changed, cache=fresh)
    torch.testing.assert_close(fresh.keys[0][:, :, 10:14], cache.keys[0][:, :, 10:14])


def test_block_causal_cache_is_exact(model):
    ids = torch.randint(4, 256, (1, 12))
    blocks = torch.arange(12) // 4
    causal = (blocks[None, :] <= blocks[:, None])[None]  # (1, L, L)
    full = model(ids, attention_mask=causal).logits
    cache = KVCache()
    model(ids[:, :8], attention_mask=causal[:, :8, :8], cache=cache)  # fill with the first two blocks
    cache.keys = [torch.cat([k, torch.zeros_like(k[:, :, :4])], 2) for k in cache.keys]  # room for block 3
    cache.values = [torch.cat([v, torch.zeros_like(v[:, :, :4])], 2) for v in cache.values]
    part = model(ids[:, 8:], attention_mask=causal[:, 8:], cache=cache, cache_start=8)
    torch.testing.assert_close(part.logits, full[:, 8:], atol=1e-5, rtol=1e-5)


def test_cache_errors(model):
    with pytest.raises(ValueError, match="needs a filled cache"):
        model(torch.ones(1, 4, dtype=torch.long), cache_start=2)
    cache = KVCache()
    model(torch.ones(1, 8, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="outside the cached canvas"):
        model(torch.ones(1, 4, dtype=torch.long), cache=cache, cache_start=6)


def test_indexed_partial_forward_on_an_unchanged_canvas_is_exact(model):
    ids = torch.randint(4, 256, (2, 20))
    full = model(ids).logits
    cache = KVCache()
    model(ids, cache=cache)
    positions = torch.tensor([[3, 7, 8, 15, 15], [0, 2, 19, 19, 19]])  # repeated positions are allowed
    part = model(ids.gather(1, positions), cache=cache, cache_start=positions)
    torch.testing.assert_close(part.logits, full[torch.arange(2)[:, None], positions], atol=1e-5, rtol=1e-5)
