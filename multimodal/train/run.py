"""Runs: build everything an experiment config names, train it, load it back, evaluate and sample.

A run folder (train.output_dir / name) holds ``config.yaml`` (resolved), ``metrics.jsonl``,
``checkpoints/step_XXXXXXX/`` and ``checkpoints/last/`` (safetensors + config + tokenizer, see
multimodal.checkpoint) and ``eval/<split>_{predictions.jsonl,metrics.json}``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from multimodal.backbone import LLaDABackbone, create_backbone
from multimodal.backbone.convert import load_llada_checkpoint
from multimodal.checkpoint import CONFIG, load_weights, save_checkpoint
from multimodal.config import dump
from multimodal.sampling import SamplerConfig, SpecialIds, create_sampler, generate
from multimodal.tokenizer import BuiltinTokenizer, HFTokenizer, build_tokenizer, load_tokenizer
from multimodal.train.config import ExperimentConfig, experiment_from_text
from tasks import Layout, Task, create_task

log = logging.getLogger(__name__)


@dataclass
class Run:
    """A built or loaded experiment: config, task, tokenizer, model and its folder."""

    config: ExperimentConfig
    task: Task
    tokenizer: BuiltinTokenizer | HFTokenizer
    model: LLaDABackbone
    folder: Path

    @property
    def special(self) -> SpecialIds:
        return SpecialIds(self.tokenizer.mask_id, self.tokenizer.eos_id, getattr(self.tokenizer, "eot_id", None))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is available")
    return torch.device(name)


def build_run(config: ExperimentConfig, tokenizer: BuiltinTokenizer | HFTokenizer | None = None) -> Run:
    """Create the task, tokenizer (built from the task's training texts) and a fresh or initialised model."""
    task = create_task(config.task)
    tokenizer = tokenizer or build_tokenizer(config.tokenizer, task.texts())
    if len(tokenizer) > config.backbone.vocab_size:
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but backbone.vocab_size is "
            f"{config.backbone.vocab_size}; set backbone.vocab_size >= {len(tokenizer)}"
        )
    torch.manual_seed(config.seed)  # weight initialisation only
    if config.init_from:
        model = load_pretrained(config.init_from, config)
    else:
        model = create_backbone(config.backbone)
    folder = Path(config.train.output_dir) / config.name
    return Run(config, task, tokenizer, model, folder)


def load_pretrained(path: str, config: ExperimentConfig) -> LLaDABackbone:
    """Initial weights from a released LLaDA folder (config.json) or one of our checkpoints."""
    folder = Path(path)
    if (folder / "config.json").is_file():
        model, _ = load_llada_checkpoint(folder)
        if model.config.vocab_size != config.backbone.vocab_size or model.config.d_model != config.backbone.d_model:
            raise ValueError(
                f"init_from {folder} has shape {model.config} but the experiment asks for {config.backbone}"
            )
        return model
    model = create_backbone(config.backbone)
    load_weights(_checkpoint_folder(folder), model)
    return model


def _checkpoint_folder(path: Path) -> Path:
    """A checkpoint folder, or a run folder whose checkpoints/last is used."""
    if (path / "model.safetensors").is_file():
        return path
    last = path / "checkpoints" / "last"
    if (last / "model.safetensors").is_file():
        return last
    raise FileNotFoundError(f"{path} is neither a checkpoint folder nor a run folder with checkpoints/last")


def _tokenizer_writer(tokenizer: BuiltinTokenizer | HFTokenizer) -> dict[str, Any]:
    if isinstance(tokenizer, BuiltinTokenizer):
        return {"tokenizer.json": tokenizer.save}
    return {"tokenizer": lambda p: (p.mkdir(), tokenizer.save(p))}


def save_run_checkpoint(run: Run, step: int) -> Path:
    text = dump(run.config)
    writers = _tokenizer_writer(run.tokenizer)
    folder = run.folder / "checkpoints"
    save_checkpoint(folder / f"step_{step:07d}", run.model, text, writers)
    return save_checkpoint(folder / "last", run.model, text, writers)


def train(config: ExperimentConfig) -> Run:
    """Train the experiment; returns the run (model trained, checkpoint written)."""
    import lightning as L

    from multimodal.train.callbacks import MetricsJsonl, SafetensorsCheckpoint, Throughput
    from multimodal.train.module import DiffusionModule

    cfg = config.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    run = build_run(config)
    run.folder.mkdir(parents=True, exist_ok=True)
    dump(config, run.folder / CONFIG)
    (run.folder / "metrics.jsonl").unlink(missing_ok=True)
    layouts = [run.task.layout(ex) for ex in run.task.examples("train")]
    loader = torch.utils.data.DataLoader(
        layouts,
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=len(layouts) >= cfg.batch_size,
        collate_fn=lambda items: run.task.collate(items, run.tokenizer),
        generator=torch.Generator().manual_seed(config.seed),
    )
    module = DiffusionModule(run.model, config.diffusion, cfg, run.tokenizer.mask_id, config.seed)
    precision = cfg.precision
    if precision == "auto":
        precision = "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    trainer = L.Trainer(
        max_steps=cfg.max_steps,
        max_epochs=-1,
        accelerator=cfg.accelerator,
        devices=1,
        precision=precision,
        gradient_clip_val=cfg.grad_clip or None,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=cfg.log_every,
        default_root_dir=str(run.folder),
        callbacks=[
            Throughput(),
            MetricsJsonl(run.folder / "metrics.jsonl", cfg.log_every),
            SafetensorsCheckpoint(lambda step: save_run_checkpoint(run, step), cfg.checkpoint_every),
        ],
    )
    log.info(
        "training %s: %.2fM parameters, %d training examples",
        config.name,
        sum(p.numel() for p in run.model.parameters()) / 1e6,
        len(layouts),
    )
    trainer.fit(module, loader)
    return run


def load_run(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Run:
    """Load a run or checkpoint folder: config (with --set overrides), tokenizer and weights."""
    folder = _checkpoint_folder(Path(path))
    config = experiment_from_text((folder / CONFIG).read_text(), overrides)
    tok_file = folder / "tokenizer.json"
    tokenizer = load_tokenizer(tok_file if tok_file.is_file() else folder / "tokenizer")
    config = replace(config, init_from=None)
    run = build_run(config, tokenizer)
    load_weights(folder, run.model)
    run.folder = folder.parent.parent if folder.name == "last" or folder.parent.name == "checkpoints" else folder
    return run


def decode_answer(tokenizer: BuiltinTokenizer | HFTokenizer, ids: list[int]) -> str:
    """Answer text of generated ids: everything before the first EOS (EoT), special tokens dropped."""
    stops = {tokenizer.eos_id, getattr(tokenizer, "eot_id", None)}
    for i, tok in enumerate(ids):
        if tok in stops:
            ids = ids[:i]
            break
    return tokenizer.decode([t for t in ids if t != tokenizer.mask_id])


@torch.no_grad()
def answer(
    run: Run,
    prompts: list[str],
    sampler_config: SamplerConfig | None = None,
    generator: torch.Generator | None = None,
    callback=None,
) -> tuple[list[str], Any]:
    """Decode answers for prompt texts; returns the answers and the raw SampleOutput."""
    device = pick_device(run.config.device)
    run.model.to(device).eval()
    sampler = create_sampler(sampler_config or run.config.sampler)
    ids = [run.tokenizer.encode(p) for p in prompts]
    out = generate(
        run.model, ids, sampler, run.special, pad_id=run.tokenizer.pad_id, generator=generator, callback=callback
    )
    texts = [decode_answer(run.tokenizer, row.tolist()) for row in out.generated.cpu()]
    return texts, out


def evaluate(run: Run, split: str = "test", limit: int | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """Decode the split with the run's sampler, score it, write predictions and metrics under eval/."""
    examples = list(run.task.examples(split))[: limit or None]
    layouts: list[Layout] = [run.task.layout(ex) for ex in examples]
    batch_size = batch_size or run.config.train.eval_batch_size
    generator = torch.Generator(device=pick_device(run.config.device)).manual_seed(run.config.seed)
    predictions: list[str] = []
    nfe, gen_tokens, start = 0, 0, time.perf_counter()
    for i in tqdm(range(0, len(layouts), batch_size), desc=f"decoding {split}", unit="batch", leave=False):
        chunk = layouts[i : i + batch_size]
        texts, out = answer(run, [x.prompt for x in chunk], generator=generator)
        predictions += texts
        nfe += out.nfe
        gen_tokens += out.generated.numel()
    elapsed = time.perf_counter() - start
    metrics: dict[str, Any] = dict(run.task.metrics(predictions, layouts))
    metrics.update(
        {
            "split": split,
            "examples": len(layouts),
            "nfe": nfe,
            "decode_seconds": round(elapsed, 3),
            "canvas_tokens_per_second": round(gen_tokens / max(elapsed, 1e-9), 1),
            "sampler": dict(vars(run.config.sampler)),
        }
    )
    out_dir = run.folder / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / f"{split}_predictions.jsonl").open("w") as f:
        for lay, pred in zip(layouts, predictions, strict=True):
            f.write(
                json.dumps(
                    {"id": lay.meta.get("id"), "prompt": lay.prompt, "prediction": pred, "reference": lay.answer}
                )
                + "\n"
            )
    (out_dir / f"{split}_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics
