"""Task data, one module per job:

- `records`: `Example`, `TaskInfo`, `TaskData`, the allowed names (`METRICS`, `FORMATS`, ...), `DataError`
- `local`: tasks in a data directory (JSONL or CrossFit TSV layout)
- `metadata`: ``tasks.json`` (metric per task) and the paper's task split files
- `hf`: tasks from Hugging Face ``datasets``
- `demo`: the synthetic demo tasks
- `batching`: token ids, padded batches and the token cache (torch)
- `sampling`: the mixed-task sampler of MSF (torch)
- `selection`: which tasks a config trains and holds out, loaded and tokenised (torch)

Importing this package stays cheap and torch-free: it re-exports the raw-data layer only;
`datasets` is imported lazily by `load_hf_task`.
"""

from .demo import write_demo_tasks
from .hf import load_hf_task
from .local import detect_format, list_tasks, load_task, load_tasks
from .metadata import load_split, load_task_info
from .records import FORMATS, METRICS, SPLITS, TASK_TYPES, DataError, Example, TaskData, TaskInfo

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
