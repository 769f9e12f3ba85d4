"""Which tasks a config trains and holds out, and their examples loaded and tokenised.

    split = resolve_tasks(cfg)                      # TaskSplit(train=[...], unseen=[...])
    raw = load_raw(cfg, split.all, data_seed=100)   # few-shot draw: data.train_size with that seed
    tok = tokenize_raw(cfg, backbone, raw)          # through the token cache in output_dir

The one place that turns the `data` section of a config into task data, for every stage and
the sweeps. Raises `DataError` (a `UserError`) for every problem in the user's data or lists.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ipt_dist.config import IPTConfig
from ipt_dist.data.batching import TokenizedTask, subsample_task, tokenize_tasks
from ipt_dist.data.hf import load_hf_task
from ipt_dist.data.local import list_tasks, load_tasks
from ipt_dist.data.metadata import load_split
from ipt_dist.data.records import DataError, TaskData
from ipt_dist.paths import data_dir, token_cache_dir

log = logging.getLogger(__name__)

__all__ = ["TaskSplit", "load_raw", "load_tokenized", "resolve_tasks", "tokenize_raw"]


@dataclass
class TaskSplit:
    train: list[str]  # MSF training ("seen") tasks
    unseen: list[str]  # held out: settings 2 and 5

    @property
    def all(self) -> list[str]:
        return self.train + [t for t in self.unseen if t not in self.train]


def resolve_tasks(cfg: IPTConfig) -> TaskSplit:
    """Training and unseen tasks from the split file, or the config lists, or all tasks present.

    Raises:
        DataError: a split naming tasks that do not exist, or no tasks at all.
    """
    if cfg.data.format == "hf":
        if not cfg.data.tasks:
            raise DataError("data.tasks: list the task names to load from the HF dataset source")
        return TaskSplit(list(cfg.data.tasks), list(cfg.data.unseen_tasks))
    root = data_dir(cfg)
    available = list_tasks(root)
    if cfg.data.split_file:
        split = load_split(cfg.data.split_file, available)
        if not split["train"]:
            raise DataError(f"{cfg.data.split_file}: no training tasks ('train' is empty or missing; it lists "
                            f"{len(split['dev'])} dev and {len(split['test'])} test tasks). Fix: list the MSF "
                            "training tasks under 'train'")
        if split["dev"]:
            log.warning("%s: the %d tasks under 'dev' are not used (ipt_dist trains on 'train' and evaluates "
                        "unseen tasks from 'test'): %s", cfg.data.split_file, len(split["dev"]),
                        ", ".join(split["dev"][:5]) + (" ..." if len(split["dev"]) > 5 else ""))
        return TaskSplit(split["train"], split["test"])
    unseen = list(cfg.data.unseen_tasks)
    train = list(cfg.data.tasks) or [t for t in available if t not in unseen]
    missing = [t for t in train + unseen if t not in available]
    if missing:
        raise DataError(f"data.tasks / data.unseen_tasks: no such task in {root}: {', '.join(missing)}. "
                        f"Fix: use names of folders in {root}")
    both = sorted(set(train) & set(unseen))
    if both:
        raise DataError(f"data.tasks and data.unseen_tasks both list {', '.join(both)}: a task is either a "
                        "training task or unseen. Fix: remove it from one of the lists")
    if not train:
        if available:
            raise DataError(f"no training tasks: every task in {root} is listed in data.unseen_tasks. Fix: "
                            "leave some out of data.unseen_tasks, or list the training tasks in data.tasks")
        raise DataError(f"no training tasks: {root} holds no task folders and data.tasks is empty. Fix: point "
                        "data.data_dir at the folder holding the tasks")
    return TaskSplit(train, unseen)


def load_raw(cfg: IPTConfig, names: list[str], data_seed: int | None = None) -> dict[str, TaskData]:
    """Raw examples of `names`, subsampled to `data.train_size` with `data_seed` when set."""
    seed = cfg.data.data_seed if data_seed is None else data_seed
    if cfg.data.format == "hf":
        raw = {n: load_hf_task(cfg.data.data_dir, n, input_column=cfg.data.hf_input_column,
                               output_column=cfg.data.hf_output_column) for n in names}
    else:
        crossfit_seed = seed if cfg.data.k is not None else None
        raw = load_tasks(data_dir(cfg), names, fmt=cfg.data.format, k=cfg.data.k, seed=crossfit_seed,
                         tasks_file=cfg.data.tasks_file, max_examples=cfg.data.max_examples)
    return {n: subsample_task(t, cfg.data.train_size, seed, cfg.data.shots_per_class) for n, t in raw.items()}


def load_tokenized(cfg: IPTConfig, backbone, names: list[str], data_seed: int | None = None
                   ) -> dict[str, TokenizedTask]:
    """Token ids of `names` (`load_raw`, then `tokenize_raw`)."""
    return tokenize_raw(cfg, backbone, load_raw(cfg, names, data_seed))


def tokenize_raw(cfg: IPTConfig, backbone, raw: dict[str, TaskData]) -> dict[str, TokenizedTask]:
    """Token ids of tasks already loaded by `load_raw` (the on-disk token cache in output_dir)."""
    return tokenize_tasks(raw, backbone, prefix=cfg.data.task_prefix,
                          cache_dir=token_cache_dir(cfg))
