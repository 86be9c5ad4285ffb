"""Exact resume: training states that a run killed at any moment (SIGKILL included) continues from.

A training state is a folder ``checkpoints/state_XXXXXXX`` (the step) holding

    model.safetensors   the LightningModule's weights (safetensors, like every weight file here)
    trainer_state.pt    everything else Lightning checkpoints: optimiser moments, the LR scheduler,
                        the loops' progress (global step), callback states, plus our data position
                        (samples of the training stream consumed) and the RNG states; plain tensors,
                        numbers and strings only, read back with ``torch.load(weights_only=True)``
    position.json       the step and data position alone, so resuming can place the data stream
                        without loading the optimiser state twice

Under FSDP (run.py) a training state is sharded instead: Lightning writes each rank's shards with
torch.distributed.checkpoint and everything else to ``meta.pt`` (``SHARDED_STATE_FILE``), never
gathering the full optimiser state on one rank (not run here: it needs CUDA).

Every state is written under a temporary name and renamed into place once complete (`TrainingState`),
so a crash leaves the previous states intact and at worst a ``.state_*.tmp`` folder that resuming
ignores. `train.resume` picks the newest complete state; Lightning restores model, optimiser, scheduler and
step from it (``trainer.fit(ckpt_path=...)``), and run.py starts the training stream at the stored
position (multimodal/train/sampler.py). The masking noise of a step is seeded by (seed, step, rank)
(module.py), so the resumed run draws the same masks and follows the same loss curve as an
uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import CheckpointIO

from multimodal.checkpoint import read_weights, write_weights

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"
POSITION_FILE = "position.json"
SHARDED_STATE_FILE = "meta.pt"  # Lightning's FSDP sharded checkpoints
WEIGHTS_FILE = "model.safetensors"
_STATE = re.compile(r"state_(\d{7})")


class StateCheckpointIO(CheckpointIO):
    """Lightning's checkpoint dict as a folder: weights in safetensors, the rest in a weights-only torch file.

    Lightning also hands plain state dicts through here (ddp_spawn returns the trained weights to the
    calling process that way): those become a single safetensors file.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if "state_dict" not in checkpoint:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            write_weights(path, checkpoint)
            return
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        rest = dict(checkpoint)
        write_weights(folder / WEIGHTS_FILE, rest.pop("state_dict"))
        position = {"global_step": rest["global_step"], **rest.get("data_position", {})}
        (folder / POSITION_FILE).write_text(json.dumps(position))
        torch.save(rest, folder / STATE_FILE)  # last: its presence marks the folder complete

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict:
        folder = Path(path)
        if folder.is_file():
            return read_weights(folder)
        for name in (STATE_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"training state {folder} has no {name}")
        checkpoint = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=True)
        checkpoint["state_dict"] = read_weights(folder / WEIGHTS_FILE)
        return checkpoint

    def remove_checkpoint(self, path: str | Path) -> None:
        if Path(path).is_file():
            Path(path).unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)


def latest_state(run_folder: Path, check: bool = False) -> Path | None:
    """The newest complete training state of a run (None if there is none).

    With `check`, a state whose files cannot be read (a disk fault, a file edited or cut) is skipped with a
    warning naming it and the next older one is taken; if every state is unreadable, one error names them.
    """
    folder = Path(run_folder) / "checkpoints"
    states = sorted(p for p in folder.glob("state_*") if _STATE.fullmatch(p.name) and _state_file(p).is_file())
    if not check:
        return states[-1] if states else None
    bad = []
    for state in reversed(states):
        problem = unreadable(state)
        if problem is None:
            if bad:
                log.warning("resuming from the older training state %s", state)
            return state
        log.warning("training state %s is unreadable (%s); trying an older one", state, problem)
        bad.append(state.name)
    if bad:
        raise ValueError(
            f"no readable training state in {folder} ({', '.join(bad)} are corrupt); train.resume=false starts over"
        )
    return None


def unreadable(state: Path) -> str | None:
    """Why a training state cannot be resumed from (None when its files read back)."""
    from multimodal.safeio import safetensors_keys

    try:
        read_position(state)
        if (state / STATE_FILE).is_file():
            torch.load(state / STATE_FILE, map_location="cpu", weights_only=True, mmap=True)
        if (state / WEIGHTS_FILE).is_file():
            safetensors_keys(state / WEIGHTS_FILE)
    except Exception as err:  # noqa: BLE001  (any read failure makes the state unusable; the message says which)
        return str(err).splitlines()[0][:160] if str(err) else type(err).__name__
    return None


def _state_file(state: Path) -> Path:
    sharded = state / SHARDED_STATE_FILE
    return sharded if sharded.is_file() else state / STATE_FILE


def read_position(state: Path) -> dict[str, int]:
    """A training state's global step and data position: ``global_step``, ``samples`` (of the training
    stream, all ranks together), ``step``, ``batch_size`` (per process) and ``world_size``."""
    file = Path(state) / POSITION_FILE
    if file.is_file():
        return json.loads(file.read_text())
    checkpoint = torch.load(_state_file(Path(state)), map_location="cpu", weights_only=True)  # sharded states
    return {"global_step": checkpoint["global_step"], **checkpoint["data_position"]}


def rng_states() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, Python, NumPy) as plain tensors and numbers."""
    import random

    import numpy as np

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what `rng_states` returned."""
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


class TrainingState(L.Callback):
    """Writes a training state every `every` steps (if > 0) and at the end, keeping the newest `keep`.

    Every rank calls trainer.save_checkpoint (FSDP gathers or writes shards collectively); rank 0 then
    renames the finished temporary folder into place and deletes the oldest states.
    """

    def __init__(self, folder: Path, every: int, keep: int = 2) -> None:
        self.folder, self.every, self.keep = Path(folder), every, max(1, keep)

    def _save(self, trainer: L.Trainer) -> None:
        step = trainer.global_step
        final = self.folder / f"state_{step:07d}"
        tmp = self.folder / f".state_{step:07d}.tmp-{uuid.uuid4().hex[:8]}"
        tmp = Path(trainer.strategy.broadcast(str(tmp)))  # one name on every rank
        trainer.save_checkpoint(tmp, weights_only=False)
        trainer.strategy.barrier("training_state")
        if not trainer.is_global_zero:
            return
        if final.exists():  # the same step saved twice (the end of a run that had just saved it)
            shutil.rmtree(final)
        tmp.rename(final)
        states = sorted(p for p in self.folder.glob("state_*") if _STATE.fullmatch(p.name))
        for old in states[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        log.info("saved training state %s", final)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every > 0 and step % self.every == 0 and step < trainer.max_steps:
            self._save(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._save(trainer)


class StopOnInterrupt(L.Callback):
    """Ctrl-C (SIGINT) ends training at the next step boundary instead of mid-step, so the training state
    TrainingState writes at the end is a consistent one to resume from; a second Ctrl-C aborts at once.

    Only in a single-process run, from the main thread (signal handlers live there); `stopped_at` is the
    step training stopped at, None when it ran to the end.
    """

    def __init__(self) -> None:
        self.requested = False
        self.stopped_at: int | None = None
        self._previous: Any = None

    def on_train_start(self, trainer, pl_module) -> None:
        import signal
        import threading

        if trainer.world_size != 1 or threading.current_thread() is not threading.main_thread():
            return

        def request(signum, frame) -> None:
            self.requested = True
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C raises at once
            log.warning("interrupted: stopping after this step and saving a training state (Ctrl-C again to abort)")

        self._previous = signal.signal(signal.SIGINT, request)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.requested and not trainer.should_stop:
            trainer.should_stop = True
            self.stopped_at = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
