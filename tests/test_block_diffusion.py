"""Block diffusion (BD3-LM) training: the [x_t ; x_0] mask, block layout and times, and that the training
forward scores each block exactly as the block-causal sampler computes it."""

from __future__ import annotations

import pytest
import torch

from multimodal.backbone import backbone_preset, create_backbone
from multimodal.cli import main
from multimodal.diffusion.block_diffusion import bd3_attention, block_ids, block_times
from multimodal.diffusion.objective import DiffusionConfig, diffusion_loss
from multimodal.train.build import load_run
from multimodal.types import MultimodalBatch

MASK = 1


def test_blocks_start_at_the_answer_and_the_prompt_is_block_zero():
    maskable = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1], [1] * 9, [0] * 9], dtype=torch.bool)
    assert block_ids(maskable, 4).tolist() == [
        [0, 0, 0, 1, 1, 1, 1, 2, 2],
        [0, 0, 0, 0, 1, 1, 1, 1, 2],  # pre-training: blocks from position 0
        [0] * 9,
    ]


def test_the_mask_is_bd3_lm_s_definition():
    blocks = torch.tensor([[0, 0, 1, 1, 1, 2, 3]])
    keys = torch.tensor([[1, 1, 1, 1, 1, 1, 0]])
    got = bd3_attention(blocks, keys)[0, 0]
    n = 7
    for q in range(2 * n):
        for k in range(2 * n):
            bq, bk = int(blocks[0, q % n]), int(blocks[0, k % n])
            if q < n and k < n:
                want = bq == bk
            elif q < n:
                want = bk < bq
            else:
                want = k >= n and bk <= bq
            assert bool(got[q, k]) == (want and bool(keys[0, k % n])), (q, k)


def test_one_time_per_block_stratified_across_the_batch():
    from multimodal.diffusion.schedule import create_schedule

    blocks = block_ids(torch.ones(8, 12, dtype=torch.bool), 4)
    t = block_times(blocks, create_schedule("llada_linear"), True, torch.Generator().manual_seed(0))
    per_block = t.view(8, 3, 4)
    assert torch.equal(per_block, per_block[..., :1].expand_as(per_block))  # constant within a block
    assert len(set(per_block[..., 0].flatten().tolist())) == 24  # every block its own draw
    # stratified: one draw in each of the 24 equal strata of (0, 1)
    assert sorted((per_block[..., 0].flatten() * 24).floor().long().tolist()) == list(range(24))


def test_training_forward_equals_the_block_causal_sampler_view():
    torch.manual_seed(0)
    model = create_backbone(backbone_preset("llada_tiny", vocab_size=32, max_seq_len=64, init_std=0.1)).eval()
    x0 = torch.randint(4, 32, (2, 14))
    maskable = torch.zeros(2, 14, dtype=torch.bool)
    maskable[0, 5:], maskable[1, 3:] = True, True
    blocks = block_ids(maskable, 3)
    xt = torch.where(maskable & (torch.rand(2, 14) < 0.5), torch.full_like(x0, MASK), x0)
    pos = torch.arange(14).expand(2, 14)
    with torch.no_grad():
        both = model(torch.cat((xt, x0), 1), attention_mask=bd3_attention(blocks, None),
                     position_ids=torch.cat((pos, pos), 1)).logits[:, :14]  # fmt: skip
        for b in range(1, int(blocks.max()) + 1):  # decoding block b: clean past, noisy block, masked future
            canvas = torch.where(blocks < b, x0, torch.where(blocks == b, xt, torch.full_like(x0, MASK)))
            causal = (blocks[:, None, :] <= blocks[:, :, None])[:, None]
            view = model(canvas, attention_mask=causal).logits
            at = blocks == b
            torch.testing.assert_close(both[at], view[at], atol=1e-5, rtol=1e-5)


def test_the_loss_takes_block_times_and_refuses_what_it_cannot_train():
    torch.manual_seed(0)
    model = create_backbone(backbone_preset("llada_tiny", vocab_size=32, max_seq_len=64))
    ids = torch.randint(4, 32, (4, 16))
    maskable = torch.zeros(4, 16, dtype=torch.bool)
    maskable[:, 6:] = True
    batch = MultimodalBatch(input_ids=ids, maskable=maskable, attention_mask=torch.ones_like(ids))
    cfg = DiffusionConfig(block_size=4)
    out = diffusion_loss(model, batch, cfg, cfg.build_schedule(), MASK, torch.Generator().manual_seed(0))
    assert out.loss.requires_grad and out.num_masked > 0
    packed = MultimodalBatch(input_ids=ids, maskable=maskable, document_ids=torch.zeros_like(ids))
    with pytest.raises(ValueError, match="packed rows"):
        diffusion_loss(model, packed, cfg, cfg.build_schedule(), MASK)
    with pytest.raises(ValueError, match="block_size"):
        DiffusionConfig(block_size=0)


def test_a_block_diffusion_run_trains_and_decodes_with_the_exact_block_cache(tmp_path, capsys):
    sets = ["backbone.vocab_size=16", f"train.output_dir={tmp_path}", "train.max_steps=3", "train.batch_size=4",
            "train.threads=1", "task.train_size=40", "task.test_size=4", "task.validation_size=4"]  # fmt: skip
    assert main(["train", "-c", "digits_reverse_block", *[a for s in sets for a in ("--set", s)]]) == 0
    run = load_run(tmp_path / "digits_reverse_block")
    assert run.config.diffusion.block_size == 4 and run.config.sampler.cache == "block"
    assert "exact_match" in capsys.readouterr().out


def test_complementary_masking_masks_each_answer_token_once_per_pair():
    torch.manual_seed(0)
    seen = {}

    class Recorder(torch.nn.Module):
        """Records the corrupted rows it is given; a linear head over embeddings."""

        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(32, 8)
            self.head_weight = torch.nn.Parameter(torch.randn(32, 8))

        def forward(self, xt, **kw):
            from multimodal.types import BackboneOutput

            seen["xt"] = xt.clone()
            return BackboneOutput(logits=None, hidden_states=self.emb(xt))

        def head(self, h):
            return h @ self.head_weight.T

    ids = torch.randint(4, 32, (3, 10))
    maskable = torch.zeros(3, 10, dtype=torch.bool)
    maskable[:, 4:] = True
    batch = MultimodalBatch(input_ids=ids, maskable=maskable, attention_mask=torch.ones_like(ids))
    cfg = DiffusionConfig(complementary=True)
    out = diffusion_loss(Recorder(), batch, cfg, cfg.build_schedule(), MASK, torch.Generator().manual_seed(1))
    first, second = seen["xt"][:3] == MASK, seen["xt"][3:] == MASK
    assert torch.equal(first ^ second, maskable) and not (first & second).any()  # each token once per pair
    assert out.num_masked == int(maskable.sum())


def test_the_block_size_schedule():
    from multimodal.diffusion.objective import block_size_at

    schedule = [[0, 0], [100, 8], [250, 4]]  # full masked diffusion, then blocks of 8, then 4
    assert [block_size_at(schedule, s) for s in (0, 99, 100, 249, 250, 10_000)] == [None, None, 8, 8, 4, 4]
    with pytest.raises(ValueError, match="block_schedule"):
        DiffusionConfig(block_schedule=[[10]])


def test_the_llada2_conversion_config_runs_from_a_masked_diffusion_run(tmp_path, capsys):
    common = ["backbone.vocab_size=16", f"train.output_dir={tmp_path}", "train.batch_size=4", "train.threads=1",
              "task.train_size=40", "task.test_size=4", "task.validation_size=4"]  # fmt: skip
    assert (
        main(["train", "-c", "digits_reverse", *[a for s in [*common, "train.max_steps=2"] for a in ("--set", s)]]) == 0
    )
    sets = [*common, "train.max_steps=3", f"init_from={tmp_path / 'digits_reverse'}",
            "diffusion.block_schedule=[[0, 0], [1, 8], [2, 4]]"]  # fmt: skip
    assert main(["train", "-c", "digits_reverse_llada2", *[a for s in sets for a in ("--set", s)]]) == 0
    run = load_run(tmp_path / "digits_reverse_llada2")
    assert run.config.diffusion.complementary and run.config.diffusion.block_schedule[-1] == [2, 4]
    assert "exact_match" in capsys.readouterr().out
