"""Host synchronisations of the generation loop (generate.py's docstring lists the ones that remain).

On the CPU nothing waits, so the test watches the operators that would make a GPU wait: reading a
tensor's value in Python (``_local_scalar_dense``: ``.item()``, ``bool()``, ``int()``), ``nonzero``,
boolean-mask indexing (its result size is data-dependent), ``equal`` and ``masked_select``. A
dispatch mode counts them; the per-step callback says how many happened during each step.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from multimodal.backbone import backbone_preset, create_backbone
from multimodal.sampling import SpecialIds, create_sampler, generate, infill, sampler_config_class

aten = torch.ops.aten
SYNCING = {aten._local_scalar_dense.default, aten.nonzero.default, aten.equal.default, aten.masked_select.default}
INDEXING = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
SPECIAL = SpecialIds(mask_id=63, eos_id=62)
PROMPTS = [[5, 6, 7, 8, 9], [20, 21], [30, 31, 32]]


class SyncCounter(TorchDispatchMode):
    """Counts operators that synchronise with the device; `at_steps` holds the count after each step."""

    def __init__(self):
        super().__init__()
        self.count, self.at_steps = 0, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNCING:
            self.count += 1
        elif func in INDEXING and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None
        ):
            self.count += 1
        return func(*args, **(kwargs or {}))

    def callback(self, info) -> None:
        self.at_steps.append(self.count)

    def per_step(self) -> list[int]:
        """Syncs during each step after the first (the first also holds the setup checks)."""
        return [b - a for a, b in zip(self.at_steps, self.at_steps[1:], strict=False)]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_backbone(backbone_preset("llada_tiny_gqa", max_seq_len=128, init_std=0.2, vocab_size=64)).eval()


def decode(model, name, run=generate, inputs=PROMPTS, **kw):
    cfg = sampler_config_class(name)(name=name, **kw)
    counter = SyncCounter()
    with counter:
        out = run(model, inputs, create_sampler(cfg), SPECIAL, callback=counter.callback)
    return out, counter


@pytest.mark.parametrize("cache", ["none", "prefix", "dual", "block"])
@pytest.mark.parametrize("name", ["low_confidence", "random", "dilated"])
def test_fixed_schedule_without_eos_stop_never_synchronises(model, name, cache):
    """generate with a fixed schedule: no sync in any step or block, only the setup checks before step 1."""
    kw = {"attention": "block_causal"} if cache == "block" else {}
    out, counter = decode(model, name, steps=16, gen_length=16, block_length=4, cache=cache, temperature=0.5, **kw)
    assert len(counter.at_steps) == out.nfe >= 8
    assert counter.per_step() == [0] * (out.nfe - 1)
    assert counter.count == counter.at_steps[0] <= 2  # prompts hold no mask; the padding check


@pytest.mark.parametrize("cache", ["none", "dual"])
@pytest.mark.parametrize("name,kw", [("threshold", {"threshold": 0.1}), ("entropy_bounded", {"gamma": 3.0})])
def test_adaptive_policies_read_one_value_per_step(model, name, kw, cache):
    """Adaptive policies fill blocks early; the one check per step (is the block filled?) is all they read."""
    out, counter = decode(model, name, steps=16, gen_length=16, block_length=4, cache=cache, **kw)
    assert out.nfe < 16  # blocks did finish early
    assert counter.per_step() == [1] * (out.nfe - 1)


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_eos_stop_reads_one_value_per_step_and_per_block(cache):
    """With the EOS stop: one check per step (steps 1.. of a block) and one per block (step 0)."""
    torch.manual_seed(1)
    small = create_backbone(backbone_preset("llada_tiny_gqa", max_seq_len=128, init_std=0.2, vocab_size=12)).eval()
    special = SpecialIds(mask_id=11, eos_id=10)
    cfg = sampler_config_class("low_confidence")(steps=16, gen_length=16, block_length=4, cache=cache, stop_at_eos=True)
    counter = SyncCounter()
    with counter:
        out = generate(
            small, [[5, 6, 7, 8, 9], [2, 3], [1, 2, 3]], create_sampler(cfg), special, callback=counter.callback
        )
    assert (out.generated == special.eos_id).any()
    assert counter.per_step() == [1] * (out.nfe - 1)
    assert counter.count - counter.at_steps[-1] <= 1  # at most the final all-committed check


def test_infill_checks_each_block_once(model):
    """infill: a block may be given already (skipped after one sync); a fixed schedule needs nothing else."""
    x = torch.randint(4, 60, (2, 16), generator=torch.Generator().manual_seed(0))
    x[:, 0:4] = SPECIAL.mask_id
    x[:, 12:16] = SPECIAL.mask_id  # blocks 1 and 2 are given: skipped
    cfg = sampler_config_class("low_confidence")(steps=8, gen_length=16, block_length=16)
    counter = SyncCounter()
    with counter:
        out = infill(model, x, create_sampler(cfg), SPECIAL, block_length=4, callback=counter.callback)
    assert out.nfe == 4
    assert counter.per_step() == [0, 3, 0]  # one check per block: blocks 1 and 2 skipped, then block 3
