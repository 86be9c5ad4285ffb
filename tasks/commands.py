"""Commands that belong to a task: ``mmdiff <command> --run RUN_DIR ...`` on runs of that task.

A task module registers its commands here (ASR: ``deliberate``; protein: ``generate``). The CLI adds
each one as a subcommand with ``--run`` and ``--set``, loads the run, refuses a run of another task
with one line, and calls the command with a `CommandContext`: the run's decoding engine, its task
and its folder. The command returns what to print and what to write (`CommandOutput`), so a task
does no printing and a new task with commands of its own touches only tasks/ and its encoder.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multimodal.registry import new_registry

if TYPE_CHECKING:
    from multimodal.sampling.engine import Engine
    from tasks.base import Task

TASK_COMMANDS = new_registry("command", "task command")


@dataclass(frozen=True)
class CommandContext:
    """What a command works with: the run's engine (model, tokenizer, sampler, seed), task and folder."""

    engine: Engine
    task: Task
    folder: Path


@dataclass
class CommandOutput:
    """Attributes: lines printed as they are, metrics printed as JSON, files (path -> text; a relative
    path is under the run folder) written by the CLI, which prints where."""

    lines: list[str] = field(default_factory=list)
    metrics: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskCommand:
    """Attributes: name (the subcommand), help, tasks (registered task names it serves), add_arguments
    (its own options), run(args, context) -> CommandOutput."""

    name: str
    help: str
    tasks: tuple[str, ...]
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, CommandContext], CommandOutput]


def register_command(command: TaskCommand) -> TaskCommand:
    TASK_COMMANDS.register(command.name, command)
    return command


def list_commands(pattern: str = "*") -> list[str]:
    return TASK_COMMANDS.names(pattern)
