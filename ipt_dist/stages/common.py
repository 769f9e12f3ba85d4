"""What every stage driver needs: the console, and (re-exported from their components) the device,
resolved task lists and loaded + tokenised data (`ipt_dist.data.selection`), the data directory
(`ipt_dist.paths`)."""

from __future__ import annotations

import logging

from ipt_dist.data.selection import TaskSplit, load_raw, load_tokenized, resolve_tasks, tokenize_raw
from ipt_dist.modeling.backbone import pick_device
from ipt_dist.paths import data_dir

__all__ = ["TaskSplit", "data_dir", "load_raw", "load_tokenized", "pick_device", "resolve_tasks", "setup_logging",
           "tokenize_raw"]


def setup_logging(level: int = logging.INFO, verbose: bool = False) -> None:
    """The console of an entry point (see `ipt_dist.console`): quiet unless `verbose`."""
    from ipt_dist import console

    console.setup(verbose=verbose, level=level)

