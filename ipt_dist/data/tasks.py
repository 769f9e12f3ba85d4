"""Former home of the raw-data layer, kept as a re-export for one release.

It now lives in one module per job: `records` (types and record checks), `local` (JSONL / CrossFit
data directories), `metadata` (tasks.json, split files), `hf` (Hugging Face datasets) and `demo`
(the synthetic demo tasks). Import from `ipt_dist.data` (or those modules) in new code.
"""

from ipt_dist.data.demo import write_demo_tasks
from ipt_dist.data.hf import load_hf_task
from ipt_dist.data.local import detect_format, list_tasks, load_task, load_tasks
from ipt_dist.data.metadata import load_split, load_task_info
from ipt_dist.data.records import (
    FORMATS,
    METRICS,
    SPLITS,
    TASK_TYPES,
    DataError,
    Example,
    TaskData,
    TaskInfo,
)

__all__ = [
    "FORMATS",
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
