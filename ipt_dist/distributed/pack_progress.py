"""Moved to `ipt_dist.sweep.progress` (plain Python, no Ray); this re-export is kept for one release."""

from ipt_dist.sweep.progress import (  # noqa: F401
    PackProgressBoard,
    ThrottledProgress,
    describe_packs,
    fmt_secs,
    pack_eta,
    partial_jobs,
)
