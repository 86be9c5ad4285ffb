"""Training observability: throughput, MFU, peak memory and data-loader wait, plus CSV / TensorBoard loggers.

`TrainingMonitor` logs through `pl_module.log` on every step, each value a mean over the last `window`
steps, so metrics.jsonl (MetricsJsonl, which must come after it in the callback list), the progress bar
and any Lightning logger see the same numbers:

  ``tok_s``           real tokens (padding excluded) per second of wall-clock step time, this process
  ``step_s``          mean wall-clock time per step: from one step's end to the next one's, everything included
  ``data_wait_s``     mean time per step spent fetching the next batch and copying it to the device
  ``data_wait_frac``  data_wait_s / step_s, in [0, 1]
  ``model_tflops``    model TFLOP/s of this process (multimodal.train.flops; LLaDA backbones only)
  ``mfu``             model_tflops over the card's dense BF16 peak (only on a card of the peak table)
  ``peak_mem_mib``    CUDA max_memory_allocated since training started, or the process's peak RSS on the CPU

The wait is measured where Lightning fetches (its profiler actions around ``next(dataloader)`` and
``batch_to_device``) rather than as the gap between two steps, because validation, checkpoints and the
metrics writer also run between steps. It is host time: on a GPU it partly overlaps the previous step's
backward, which runs asynchronously, so it is an upper bound on the time the GPU starves.
"""

from __future__ import annotations

import importlib.util
import resource
import sys
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.profilers import Profiler

from multimodal.backbone.config import BackboneConfig
from multimodal.config import ConfigError
from multimodal.registry import suggest
from multimodal.train.flops import peak_bf16_flops, training_flops

LOGGERS = ("csv", "tensorboard")
_DATA_ACTIONS = (".train_dataloader_next", ".batch_to_device")  # suffixes of Lightning's profiler action names


class FetchTimer(Profiler):
    """Wraps the trainer's profiler and adds up the seconds spent in the training loop's data actions."""

    def __init__(self, inner: Profiler) -> None:
        super().__init__()
        self.inner = inner
        self.total = 0.0
        self._open: dict[str, float] = {}

    def start(self, action_name: str) -> None:
        self.inner.start(action_name)
        if action_name.endswith(_DATA_ACTIONS):
            self._open[action_name] = time.perf_counter()

    def stop(self, action_name: str) -> None:
        began = self._open.pop(action_name, None)
        if began is not None:
            self.total += time.perf_counter() - began
        self.inner.stop(action_name)

    def summary(self) -> str:
        return self.inner.summary()

    def describe(self) -> None:
        self.inner.describe()

    def setup(self, stage: str, local_rank: int | None = None, log_dir: str | None = None) -> None:
        self.inner.setup(stage, local_rank, log_dir)

    def teardown(self, stage: str | None) -> None:
        self.inner.teardown(stage)


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory in MiB: CUDA's max_memory_allocated on a CUDA device, else this process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def backbone_config(model: torch.nn.Module) -> BackboneConfig | None:
    """The LLaDA backbone config of a backbone or multimodal model (None for others, e.g. DSM's ESM2)."""
    config = getattr(model, "config", None)
    return config if isinstance(config, BackboneConfig) else None


def expected_mask_rate(schedule: Any, samples: int = 4096) -> float:
    """Mean mask probability of a MaskSchedule over its time draws (an evenly stratified estimate)."""
    t = schedule.sample_t(samples, antithetic=True, generator=torch.Generator().manual_seed(0))
    return float(schedule.mask_prob(t).mean())


def sequence_lengths(batch: Any) -> list[int]:
    """Tokens of each attention context of a MultimodalBatch, for the attention FLOPs: one per document of
    packed rows (`document_ids`), each row's real length under a (B, L) padding mask, else the full rows
    (other masks, e.g. block-causal ones, are counted at their padded size)."""
    docs = getattr(batch, "document_ids", None)
    if docs is not None:
        return torch.bincount(docs[docs >= 0]).tolist()
    mask = batch.attention_mask
    if mask is not None and mask.dim() == 2:
        return mask.sum(1).tolist()
    rows, length = batch.input_ids.shape
    return [length] * rows


def head_rows(pl_module: Any, batch: Any, mask_rate: float) -> int:
    """Tokens the output head scored in this step: ``pl_module.num_masked`` when the module records it,
    else the batch's maskable tokens times `mask_rate` (see `expected_mask_rate`)."""
    recorded = getattr(pl_module, "num_masked", None)
    return int(recorded) if recorded is not None else round(float(batch.maskable.sum()) * mask_rate)


class TrainingMonitor(L.Callback):
    """Logs throughput, model FLOP/s, MFU, peak memory and data-loader wait (module docstring) every step.

    Args:
        window: steps each logged value averages over (use train.log_every: each metrics line then
            summarises the steps since the previous one).
        device_name: card name looked up in the peak table (default: torch.cuda.get_device_name of the
            module's device; none on the CPU, so no MFU there).

    The output head's FLOPs count the masked tokens of each batch: read from ``pl_module.num_masked``
    when the module records it, else estimated as the maskable tokens times the schedule's mean mask rate.
    """

    def __init__(self, window: int = 20, device_name: str | None = None) -> None:
        self.window = max(1, int(window))
        self.device_name = device_name
        self._timer: FetchTimer | None = None
        self._replaced: Profiler | None = None
        self._steps: deque[tuple[float, float, int, int]] = deque(maxlen=self.window)  # step_s, wait_s, tokens, flops
        self._config: BackboneConfig | None = None
        self._peak: float | None = None
        self._mask_rate = 1.0
        self._last_end = self._fetched = 0.0

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._timer is None:
            self._replaced = trainer.profiler
            self._timer = trainer.profiler = FetchTimer(trainer.profiler)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._timer is not None and trainer.profiler is self._timer:
            trainer.profiler = self._replaced
        self._timer = self._replaced = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.device_name = self.device_name or torch.cuda.get_device_name(device)
        self._peak = peak_bf16_flops(self.device_name)
        self._config = backbone_config(getattr(pl_module, "model", pl_module))
        schedule = getattr(pl_module, "schedule", None)
        self._mask_rate = 1.0 if schedule is None else expected_mask_rate(schedule)
        self._steps.clear()
        self._last_end = time.perf_counter()
        self._fetched = self._timer.total if self._timer is not None else 0.0

    def _step_flops(self, pl_module: L.LightningModule, batch: Any) -> int:
        if self._config is None:
            return 0
        return training_flops(self._config, sequence_lengths(batch), head_rows(pl_module, batch, self._mask_rate))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        now = time.perf_counter()
        fetched = self._timer.total if self._timer is not None else 0.0
        step_s, wait_s = now - self._last_end, fetched - self._fetched
        self._last_end, self._fetched = now, fetched
        # a post-training stage says what its backward pass ran on (masked copies, prompt-masked rollouts)
        batch = getattr(pl_module, "trained_batch", None) or batch
        self._steps.append((step_s, wait_s, batch.num_tokens, self._step_flops(pl_module, batch)))

        seconds = max(sum(s[0] for s in self._steps), 1e-9)
        n = len(self._steps)
        values = {
            "tok_s": sum(s[2] for s in self._steps) / seconds,
            "step_s": seconds / n,
            "data_wait_s": sum(s[1] for s in self._steps) / n,
            "data_wait_frac": min(1.0, sum(s[1] for s in self._steps) / seconds),
            "peak_mem_mib": peak_memory_mib(pl_module.device),
        }
        if self._config is not None:
            flops_s = sum(s[3] for s in self._steps) / seconds
            values["model_tflops"] = flops_s / 1e12
            if self._peak is not None:
                values["mfu"] = flops_s / self._peak
        size = batch.input_ids.shape[0]
        for key, value in values.items():
            pl_module.log(key, value, prog_bar=key == "tok_s", batch_size=size)


def build_loggers(names: Sequence[str], folder: str | Path) -> list[Any]:
    """Lightning loggers writing under the run folder: ``csv`` -> folder/csv/metrics.csv (replaced by each
    training), ``tensorboard`` -> folder/tensorboard/version_N/ (one TensorBoard run per training).

    Raises:
        ConfigError: an unknown name, or ``tensorboard`` without the tensorboard package installed.
    """
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers: list[Any] = []
    for name in dict.fromkeys(names):  # in order, once each
        if name == "csv":
            loggers.append(CSVLogger(save_dir=str(folder), name="csv", version=""))
        elif name == "tensorboard":
            if importlib.util.find_spec("tensorboard") is None:
                raise ConfigError(
                    "train.loggers names 'tensorboard' but the tensorboard package is not installed "
                    "(pip install tensorboard, or the mmdiff[observe] extra)"
                )
            loggers.append(TensorBoardLogger(save_dir=str(folder), name="tensorboard", default_hp_metric=False))
        else:
            known = ", ".join(LOGGERS)
            raise ConfigError(f"unknown logger '{name}' in train.loggers{suggest(name, LOGGERS)}; known: {known}")
    return loggers
