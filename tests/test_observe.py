"""Training observability: the model-FLOP count against torch's FlopCounterMode, the peak table and MFU,
the TrainingMonitor callback in a short Lightning fit (metrics.jsonl, CSV and TensorBoard loggers)."""

from __future__ import annotations

import csv
import functools
import json
import time
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from multimodal.backbone.config import backbone_preset
from multimodal.backbone.transformer import create_backbone
from multimodal.config import ConfigError
from multimodal.diffusion.objective import DiffusionConfig, diffusion_loss
from multimodal.diffusion.schedule import create_schedule
from multimodal.model import MultimodalDiffusionModel
from multimodal.train.build import build_run
from multimodal.train.callbacks import MetricsJsonl
from multimodal.train.config import TrainConfig, load_experiment
from multimodal.train.flops import PEAK_BF16_FLOPS, forward_flops, mfu, peak_bf16_flops, training_flops
from multimodal.train.module import DiffusionModule
from multimodal.train.observe import (
    FetchTimer,
    TrainingMonitor,
    backbone_config,
    build_loggers,
    expected_mask_rate,
    head_rows,
    sequence_lengths,
)
from multimodal.types import MultimodalBatch


def _addmm_inplace(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def counted(fn) -> int:
    """FLOPs torch counts for fn(), with SDPA on its math backend: FlopCounterMode has no formula for the
    CPU's fused attention kernel (it would count 0), and its formula for the fused GPU kernels' backward
    adds FlashAttention's recomputed scores (7 products instead of the model's 6). It has none for the
    in-place ``addmm_`` either, which the fused head kernel (diffusion/linear_ce.py) accumulates the head's
    gradient with: the out-of-place ``addmm`` formula is added for it."""
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.addmm_: _addmm_inplace})
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return counter.get_total_flops()


@pytest.mark.parametrize(
    "preset,overrides",
    [("llada_tiny", {}), ("llada_tiny_gqa", {"n_layers": 3}), ("llada_tiny", {"tie_embeddings": True})],
)
def test_training_flops_equal_flop_counter(preset, overrides):
    config = backbone_preset(preset, **{"vocab_size": 96, "max_seq_len": 64, "n_layers": 2, **overrides})
    torch.manual_seed(0)
    model = create_backbone(config)
    ids = torch.randint(0, config.vocab_size, (3, 24))

    def step():
        model(ids).logits.float().square().mean().backward()

    assert counted(step) == training_flops(config, [24, 24, 24]) == 3 * forward_flops(config, [24] * 3)


def test_padding_is_counted_by_real_length():
    """SDPA computes every padded position; the model count uses each row's real length."""
    config = backbone_preset("llada_tiny", vocab_size=64, n_layers=2)
    model = create_backbone(config)
    ids = torch.randint(0, 64, (2, 20))
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[1, 12:] = 0

    def step():
        model(ids, attention_mask=mask).logits.sum().backward()

    padded, real = training_flops(config, [20, 20]), training_flops(config, [20, 12])
    assert counted(step) == padded
    assert real < padded


def test_diffusion_loss_counts_the_head_on_masked_tokens_only():
    """The training objective (the fused head + cross-entropy kernel on masked rows) matches the count
    with head_rows = the number of masked tokens."""
    config = backbone_preset("llada_tiny", vocab_size=80, n_layers=2)
    model = create_backbone(config)
    ids = torch.randint(4, 80, (4, 16))
    maskable = torch.zeros(4, 16, dtype=torch.bool)
    maskable[:, 6:] = True
    batch = MultimodalBatch(input_ids=ids, maskable=maskable, attention_mask=torch.ones_like(ids))
    diffusion = DiffusionConfig(chunk_size=7)  # several head chunks
    out = {}

    def step():
        result = diffusion_loss(
            model, batch, diffusion, diffusion.build_schedule(), 3, torch.Generator().manual_seed(1)
        )
        result.loss.backward()
        out["masked"] = result.num_masked

    total = counted(step)
    assert 0 < out["masked"] < 40
    assert total == training_flops(config, [16] * 4, head_rows=out["masked"])


def test_six_n_rule_for_the_8b_shape():
    """One token (no attention context): 6 FLOPs per matrix parameter, norms and the embedding excluded."""
    config = backbone_preset("llada_8b")
    d, layers = config.d_model, config.n_layers
    matrices = config.num_parameters() - config.vocab_size * d - (2 * layers + 1) * d
    attention = 3 * layers * 4 * d  # the 1 x 1 score and value products
    assert training_flops(config, [1]) == 6 * matrices + attention
    with pytest.raises(ValueError, match="lengths"):
        training_flops(config, [3, -1])


@pytest.mark.parametrize(
    "device,entry",
    [
        ("NVIDIA H100 80GB HBM3", "H100"),
        ("NVIDIA H100 PCIe", "H100 PCIe"),
        ("NVIDIA H200", "H200"),
        ("NVIDIA GH200 480GB", "GH200"),
        ("NVIDIA A100-SXM4-40GB", "A100"),
        ("NVIDIA A100 80GB PCIe", "A100"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA GeForce RTX 4090", "RTX 4090"),
    ],
)
def test_peak_table_lookup(device, entry):
    peak = dict(PEAK_BF16_FLOPS)[entry]
    assert peak_bf16_flops(device) == peak
    assert mfu(peak / 4, device) == pytest.approx(0.25)


@pytest.mark.parametrize("device", [None, "", "cpu", "NVIDIA A10G", "Tesla V100-SXM2-16GB"])
def test_unknown_cards_have_no_mfu(device):
    assert peak_bf16_flops(device) is None and mfu(1e12, device) is None


@pytest.mark.parametrize("schedule,eps,rate", [("llada_linear", 1e-3, 0.5005), ("constant", 1e-3, 0.3)])
def test_head_rows_recorded_or_expected(schedule, eps, rate):
    """llada_linear: p = (1 - eps) t + eps with t ~ U(0, 1) has mean (1 + eps) / 2; constant: its mask_rate."""
    sched = create_schedule(schedule, eps, None, None, 0.3)
    assert expected_mask_rate(sched) == pytest.approx(rate, abs=1e-3)
    maskable = torch.zeros(2, 10, dtype=torch.bool)
    maskable[:, 4:] = True
    batch = MultimodalBatch(input_ids=torch.zeros(2, 10, dtype=torch.long), maskable=maskable)
    assert head_rows(SimpleNamespace(num_masked=5), batch, 0.5) == 5
    assert head_rows(SimpleNamespace(), batch, 0.25) == 3  # 12 maskable tokens x 0.25


def test_sequence_lengths():
    ids = torch.zeros(2, 6, dtype=torch.long)
    maskable = torch.zeros(2, 6, dtype=torch.bool)
    assert sequence_lengths(MultimodalBatch(ids, maskable)) == [6, 6]
    padding = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    assert sequence_lengths(MultimodalBatch(ids, maskable, attention_mask=padding)) == [4, 6]
    docs = torch.tensor([[0, 0, 0, 1, 1, -1], [2, 2, 2, 2, -1, -1]])  # packed: three documents
    packed = MultimodalBatch(ids, maskable, attention_mask=docs[:, :, None] == docs[:, None, :], document_ids=docs)
    assert sequence_lengths(packed) == [3, 2, 4]


def test_backbone_config_of_models():
    config = backbone_preset("llada_tiny", n_layers=1)
    backbone = create_backbone(config)
    assert backbone_config(backbone) is config
    assert backbone_config(MultimodalDiffusionModel(backbone, {}, {})) is config
    assert backbone_config(torch.nn.Linear(2, 2)) is None  # e.g. DSM's ESM2: no LLaDA FLOP count


class SlowCollate:
    """The task's collate plus a fixed delay, so the data-loader wait has a known lower bound."""

    def __init__(self, collate, delay: float) -> None:
        self.collate, self.delay = collate, delay

    def __call__(self, layouts):
        time.sleep(self.delay)
        return self.collate(layouts)


def test_monitor_logs_to_metrics_jsonl_csv_and_tensorboard(tmp_path):
    sets = ["train.batch_size=4", "task.train_size=32", "task.test_size=4", "task.validation_size=4"]
    config = load_experiment("digits_reverse", [f"train.output_dir={tmp_path}", *sets])
    run = build_run(config)
    train_cfg = TrainConfig(max_steps=4, warmup_steps=1)
    module = DiffusionModule(run.model, config.diffusion, train_cfg, run.tokenizer.mask_id)
    collate = functools.partial(run.task.collate, tokenizer=run.tokenizer, modalities=run.modalities)
    delay = 0.05
    loader = torch.utils.data.DataLoader(run.task.train_layouts(), batch_size=4, collate_fn=SlowCollate(collate, delay))
    card = "NVIDIA H100 80GB HBM3"  # the CPU has no peak: name a card to exercise the MFU path
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        logger=build_loggers(["csv", "tensorboard", "csv"], run.folder),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        default_root_dir=str(run.folder),
        callbacks=[TrainingMonitor(window=2, device_name=card), MetricsJsonl(run.folder / "metrics.jsonl", 1)],
    )
    trainer.fit(module, loader)
    assert not isinstance(trainer.profiler, FetchTimer)  # handed back at teardown

    rows = [json.loads(x) for x in (run.folder / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        assert r["tok_s"] > 0 and r["model_tflops"] > 0 and r["peak_mem_mib"] > 0
        assert delay <= r["data_wait_s"] <= r["step_s"]
        assert 0 < r["data_wait_frac"] <= 1
        assert r["mfu"] == pytest.approx(r["model_tflops"] * 1e12 / peak_bf16_flops(card), rel=1e-5)

    with (run.folder / "csv" / "metrics.csv").open() as f:
        logged = [r for r in csv.DictReader(f) if r.get("tok_s")]
    assert len(logged) == 4 and {"mfu", "data_wait_frac", "peak_mem_mib", "loss"} <= set(logged[0])
    assert float(logged[-1]["tok_s"]) == pytest.approx(rows[-1]["tok_s"], rel=1e-5)
    assert list((run.folder / "tensorboard" / "version_0").glob("events.out.tfevents.*"))


def test_logger_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="did you mean 'tensorboard'"):
        build_loggers(["tensorbord"], tmp_path)
    assert build_loggers([], tmp_path) == []
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match="tensorboard package is not installed"):
        build_loggers(["csv", "tensorboard"], tmp_path)


def test_cli_train_writes_observability(tmp_path):
    from multimodal.cli import main

    sets = [
        f"train.output_dir={tmp_path}",
        "train.max_steps=3",
        "train.batch_size=4",
        "train.log_every=1",
        "train.threads=1",
        "train.eval_at_end=false",
        "task.train_size=32",
        "task.test_size=4",
        "task.validation_size=4",
        "train.loggers=[csv]",
    ]
    assert main(["train", "-c", "digits_reverse", *[a for s in sets for a in ("--set", s)]]) == 0
    run = tmp_path / "digits_reverse"
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["tok_s"] > 0 and 0 <= r["data_wait_frac"] <= 1 and r["peak_mem_mib"] > 0 for r in rows)
    assert (run / "csv" / "metrics.csv").is_file()
