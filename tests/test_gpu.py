"""GPU checks against the CPU reference (skipped without CUDA; run by benchmarks/gpu.sh)."""

from __future__ import annotations

import pytest
import torch

from multimodal.backbone import backbone_preset, create_backbone
from multimodal.diffusion.loss import masked_diffusion_loss
from multimodal.sampling import SpecialIds, create_sampler, generate, sampler_config_class

pytestmark = pytest.mark.gpu
SPECIAL = SpecialIds(mask_id=1, eos_id=2)


def model_pair():
    torch.manual_seed(0)
    cpu = create_backbone(backbone_preset("llada_tiny_gqa", max_seq_len=256, init_std=0.2)).eval()
    gpu = create_backbone(backbone_preset("llada_tiny_gqa", max_seq_len=256, init_std=0.2), device="cuda").eval()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu


@pytest.mark.parametrize("cache", ["none", "prefix", "dual"])
@pytest.mark.parametrize("name", ["low_confidence", "threshold"])
def test_gpu_decoding_matches_cpu(cache, name):
    torch.backends.cuda.matmul.allow_tf32 = False
    cpu, gpu = model_pair()
    prompts = [[5, 6, 7, 8, 9], [20, 21], [30, 31, 32]]
    cfg = sampler_config_class(name)(name=name, steps=32, gen_length=32, block_length=8, cache=cache)
    a = generate(cpu, prompts, create_sampler(cfg), SPECIAL)
    b = generate(gpu, prompts, create_sampler(cfg), SPECIAL)
    agree = (a.generated == b.generated.cpu()).float().mean().item()
    assert agree >= 0.98, agree  # fp32 kernels differ in summation order; near-ties may flip


def test_gpu_loss_matches_cpu():
    cpu, gpu = model_pair()
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(4, 256, (4, 64), generator=g)
    masked = torch.rand(4, 64, generator=g) < 0.5
    maskable = torch.ones(4, 64, dtype=torch.bool)
    weight = torch.tensor([2.0, 1.5, 1.2, 1.1])
    losses = []
    for model in (cpu, gpu):
        dev = model.head_weight.device
        h = model(x0.to(dev), return_logits=False).hidden_states
        out = masked_diffusion_loss(
            h, model.head_weight, x0.to(dev), masked.to(dev), weight.to(dev), maskable.to(dev), "answer", chunk_size=32
        )
        losses.append(out.loss.item())
    assert abs(losses[0] - losses[1]) < 1e-4
