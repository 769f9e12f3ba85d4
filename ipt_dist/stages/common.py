"""What every stage driver needs: the console, the device (task selection and data loading live in
`ipt_dist.data.selection` and are re-exported here)."""

from __future__ import annotations

import logging

import torch

# Re-exported for one release: these moved to the component `ipt_dist.data.selection`.
from ipt_dist.data.selection import (  # noqa: F401
    TaskSplit,
    data_dir,
    load_raw,
    load_tokenized,
    resolve_tasks,
    tokenize_raw,
)

log = logging.getLogger(__name__)


def setup_logging(level: int = logging.INFO, verbose: bool = False) -> None:
    """The console of an entry point (see `ipt_dist.console`): quiet unless `verbose`."""
    from ipt_dist import console

    console.setup(verbose=verbose, level=level)


def pick_device(use_gpu: bool | None = None) -> torch.device:
    if use_gpu is None:
        use_gpu = torch.cuda.is_available()
    return torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
