"""Tasks turn data sets into prompts, answers and metrics. Importing the package fills TASKS."""

from __future__ import annotations

from tasks import (  # noqa: F401  (register the tasks and their commands)
    asr,
    asr_first_pass,
    deliberation,
    digits,
    easy_vqa,
    peptide_mhc,
    protein,
    tcr_epitope,
    vqa,
)
from tasks.base import TASKS, Layout, PromptBatch, Task, TaskConfig, create_task, list_tasks, task_config_class

__all__ = ["TASKS", "Layout", "PromptBatch", "Task", "TaskConfig", "create_task", "list_tasks", "task_config_class"]
