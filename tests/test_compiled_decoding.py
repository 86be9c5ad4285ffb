"""SamplerConfig.compile: the step's model call through torch.compile decodes what eager decodes.

The graph-count test runs dynamo with its ``eager`` backend (graph capture, guards and recompiles
are dynamo's; the backend only turns captured graphs into kernels), so it is fast; the Inductor
tests compile for real (some 20 s per shape set on one CPU core) and are marked slow. The CUDA test
(run by benchmarks/gpu.sh) checks that CUDA graphs are used and that no step synchronises.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch._dynamo.utils import counters

from multimodal.backbone import backbone_preset, create_backbone
from multimodal.sampling import SamplerError, SpecialIds, create_sampler, generate, sampler_config_class
from multimodal.sampling import compiled as compiled_module

SPECIAL = SpecialIds(mask_id=255, eos_id=254)
MIXED = [[5, 6, 7, 8, 9, 10, 11], [20, 21, 22, 23], [30, 31, 32, 33, 34, 35, 36, 37, 38, 39]]


def tiny(device="cpu"):
    torch.manual_seed(0)
    return create_backbone(backbone_preset("llada_tiny", max_seq_len=128, init_std=0.2), device=device).eval()


def decode(model, prompts, compile="none", **kw):
    cfg = sampler_config_class("low_confidence")(steps=16, gen_length=16, block_length=4, compile=compile, **kw)
    return generate(model, prompts, create_sampler(cfg), SPECIAL)


def graphs() -> int:
    """Graphs dynamo compiled since the counters were last cleared."""
    return counters["stats"]["unique_graphs"]


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    compiled_module._compiled.cache_clear()
    compiled_module.release_static_caches()
    counters.clear()
    yield
    torch._dynamo.reset()
    compiled_module._compiled.cache_clear()
    compiled_module.release_static_caches()


@pytest.fixture
def dynamo_only(fresh_dynamo, monkeypatch):
    """torch.compile with dynamo's eager backend (same capture and guards, no code generation)."""
    real = torch.compile
    modes = []

    def compile_eager(fn, mode=None, dynamic=None):
        modes.append(mode)
        return real(fn, backend="eager", dynamic=dynamic)

    monkeypatch.setattr(torch, "compile", compile_eager)
    return modes


def same_decoding(a, b) -> bool:
    return torch.equal(a.sequences, b.sequences) and torch.equal(a.commit_step, b.commit_step) and a.nfe == b.nfe


def test_compile_mode_is_validated():
    with pytest.raises(SamplerError, match="compile mode 'fast'"):
        sampler_config_class("low_confidence")(compile="fast")


@pytest.mark.parametrize("cache", ["none", "dual", "block"])
def test_graphs_stay_bounded_across_blocks_and_shapes(dynamo_only, cache):
    """A generation compiles one graph per kind of call whatever its number of blocks; a batch of a new
    shape recompiles at most once per kind, until every size that varies is symbolic: then none."""
    model = tiny()
    kw = {"attention": "block_causal"} if cache == "block" else {}
    kinds = 1 if cache == "none" else 2  # whole canvas; partial (the cache's recomputed positions)
    first = decode(model, MIXED, "default", cache=cache, **kw)
    assert same_decoding(first, decode(model, MIXED, cache=cache, **kw))
    assert graphs() <= kinds and dynamo_only == [None] * len(dynamo_only)  # mode "default" is Inductor's default
    counters.clear()
    decode(model, MIXED, "default", cache=cache, **kw)
    assert graphs() == 0  # the same shapes: no recompilation
    batches = [
        [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [4, 5]],  # a new canvas length and batch size
        [[7, 8, 9], [1, 2, 3, 4, 5], [6] * 11, [9]],
        [[3, 4, 5, 6, 7, 8, 9, 10, 11]],  # one row: no padding
        [[5, 6, 7, 8, 9], [2, 3, 4, 5, 6, 7], [8] * 11],  # from here on, nothing new to specialise
        [[3, 4], [6] * 13],
    ]
    added = []
    for prompts in batches:
        counters.clear()
        out = decode(model, prompts, "default", cache=cache, **kw)
        assert same_decoding(out, decode(model, prompts, cache=cache, **kw))
        added.append(graphs())
    assert max(added) <= kinds and added[-2:] == [0, 0], added
    counters.clear()
    longer = sampler_config_class("low_confidence")(
        steps=32, gen_length=32, block_length=4, compile="default", cache=cache, **kw
    )
    generate(model, [[3, 4, 5], [6, 7, 8, 9, 10, 11]], create_sampler(longer), SPECIAL)  # 8 blocks, a new length
    assert graphs() == 0


def test_prefix_cache_compiles_one_dynamic_graph_not_one_per_block(dynamo_only):
    """The prefix cache's query length shrinks every block: a static graph, then one with a symbolic length."""
    model = tiny()
    cfg = sampler_config_class("low_confidence")(steps=32, gen_length=32, block_length=4, cache="prefix")
    ref = generate(model, MIXED, create_sampler(cfg), SPECIAL)
    cfg.compile = "default"
    out = generate(model, MIXED, create_sampler(cfg), SPECIAL)
    assert same_decoding(out, ref)
    assert graphs() <= 3  # whole canvas + two partial graphs, for 8 blocks


@pytest.mark.slow
def test_inductor_decodes_the_eager_tokens(fresh_dynamo):
    """compile="default" on a padded batch, without cache and with the dual cache: the same tokens, commit
    steps and NFE as eager, with at most two compiled graphs for four blocks."""
    model = tiny()
    for cache, kinds in (("dual", 2), ("none", 1)):
        counters.clear()
        out = decode(model, MIXED, "default", cache=cache)
        assert same_decoding(out, decode(model, MIXED, cache=cache))
        assert 1 <= graphs() <= kinds


@pytest.mark.slow
def test_reduce_overhead_keeps_the_cache_for_the_next_generation(fresh_dynamo):
    """reduce-overhead (CUDA graphs on CUDA; Inductor alone on the CPU): the KV cache is kept at a fixed
    address and reused by the next generation of the same shape, which compiles nothing new."""
    model = tiny()
    ref = decode(model, MIXED, cache="dual")
    out = decode(model, MIXED, "reduce-overhead", cache="dual")
    kept = compiled_module._STATIC_CACHES.get(model)
    assert same_decoding(out, ref) and kept is not None and kept.keys[0].shape[0] == len(MIXED)
    counters.clear()
    again = decode(model, MIXED, "reduce-overhead", cache="dual")
    assert same_decoding(again, ref) and graphs() == 0
    assert compiled_module._STATIC_CACHES.get(model) is kept
    compiled_module.release_static_caches(model)
    assert compiled_module._STATIC_CACHES.get(model) is None


@pytest.mark.gpu
@pytest.mark.parametrize("cache", ["none", "dual"])
@pytest.mark.parametrize("mode", ["none", "reduce-overhead"])
def test_cuda_decoding_runs_without_synchronising(fresh_dynamo, mode, cache):
    """On CUDA, a generation after the first runs every step without a host synchronisation, eager or
    with reduce-overhead; the latter replays CUDA graphs (no skips) and decodes (nearly) the eager tokens."""
    torch.backends.cuda.matmul.allow_tf32 = False
    model = tiny("cuda")
    eager = decode(model, MIXED, cache=cache)
    decode(model, MIXED, mode, cache=cache)  # compile and record CUDA graphs
    counters.clear()

    def strict(info):  # from the first step on, any synchronising CUDA call raises
        torch.cuda.set_sync_debug_mode("error")

    cfg = sampler_config_class("low_confidence")(steps=16, gen_length=16, block_length=4, compile=mode, cache=cache)
    try:
        out = generate(model, MIXED, create_sampler(cfg), SPECIAL, callback=strict)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    assert counters["inductor"]["cudagraph_skips"] == 0 and graphs() == 0
    agree = (out.generated == eager.generated).float().mean().item()
    assert agree >= 0.98, agree  # fused kernels reduce in another order; near-ties may flip


def test_media_ride_through_compiled_calls_without_recompiles(dynamo_only):
    """A multimodal generation: the encoded features go to every call as one typed argument, and a second
    generation with new features of the same shape reuses the graph."""
    from multimodal.model import MultimodalDiffusionModel
    from multimodal.types import MediaFeatures
    from tests.test_model import Fake

    torch.manual_seed(0)
    model = MultimodalDiffusionModel(tiny(), {"image": Fake()}, {"image": 7}).eval()
    prompts = [[5, 7, 7, 9], [7, 7, 6]]
    cfg = sampler_config_class("low_confidence")(steps=8, gen_length=8, block_length=4, forbid_ids=[7])
    compiled = replace(cfg, compile="default")  # the placeholder is never a candidate (its count must hold)
    for seed in (1, 2):
        feats, valid, _ = model.encode(
            {"image": torch.randn(2, 1, 2, 3, generator=torch.Generator().manual_seed(seed))}
        )
        media = MediaFeatures(feats, valid)
        counters.clear()
        out = generate(model, prompts, create_sampler(compiled), SPECIAL, media=media)
        assert same_decoding(out, generate(model, prompts, create_sampler(cfg), SPECIAL, media=media))
        # the first: the call's graph in two parts (splice's placeholder-count check is data dependent, a graph
        # break, as it was when media rode as keyword dicts); the second: nothing recompiled
        assert graphs() == (2 if seed == 1 else 0)
