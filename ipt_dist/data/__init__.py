"""Task data: raw examples (`tasks`), and later tokenised batches and samplers.

Importing this package must stay cheap and torch-free for the raw-data layer; `datasets` is
imported lazily by `load_hf_task`.
"""

from .tasks import (
    METRICS,
    SPLITS,
    TASK_TYPES,
    DataError,
    Example,
    TaskData,
    TaskInfo,
    detect_format,
    list_tasks,
    load_hf_task,
    load_split,
    load_task,
    load_task_info,
    load_tasks,
    write_demo_tasks,
)

__all__ = [
    "METRICS",
    "SPLITS",
    "TASK_TYPES",
    "DataError",
    "Example",
    "TaskData",
    "TaskInfo",
    "detect_format",
    "list_tasks",
    "load_hf_task",
    "load_split",
    "load_task",
    "load_task_info",
    "load_tasks",
    "write_demo_tasks",
]

# Tokenisation / batching layer (added by its owner):
# from .batching import ...
