"""Tests of the bench/ scripts (they run from a plain checkout, so bench/ is not a package on the path)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]


def bench_module(name: str) -> ModuleType:
    """`bench.<name>` imported from the repository root (added to sys.path only while importing)."""
    sys.path.insert(0, str(REPO))
    try:
        return importlib.import_module(f"bench.{name}")
    finally:
        sys.path.remove(str(REPO))
