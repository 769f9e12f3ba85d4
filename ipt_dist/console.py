"""What a person sees on the console, and where the rest goes: one setup for every entry point.

    from ipt_dist import console
    console.setup(verbose=args.verbose)          # first thing an entry point does
    console.log_to(Path(cfg.output_dir))         # once the run directory is known: <out>/logs/ipt.log

The console shows this project's own messages (stage, jobs done / total and ETA, failures,
where the results are) and any library ERROR. Everything else (library INFO and warnings, Python
warnings such as torch deprecations) goes only to `<out>/logs/ipt.log`. Ray workers are not
forwarded to the driver's console (`ray_init_options`): a failing pack or MSF worker still
reaches it through the exception the driver gets (one line per failed pack, the full error in
failures.jsonl); the workers' Python logging and warnings go to `<out>/logs/workers.log`
(`setup_worker`), their raw output stays in Ray's session logs. `--verbose` (or IPT_VERBOSE=1)
restores everything: all loggers on the console, worker output forwarded by Ray.

Pure Python (no ray): entry points, the pipeline and the Ray workers all use it.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

__all__ = ["LOG_DIR_ENV", "VERBOSE_ENV", "adopt_loggers", "is_verbose", "log_to", "ray_init_options", "setup", "setup_worker",
           "verbose_requested", "worker_env"]

VERBOSE_ENV = "IPT_VERBOSE"
LOG_DIR_ENV = "IPT_LOG_DIR"  # where Ray workers append workers.log (set for them by `worker_env`)
PROJECT = "ipt_dist"
_FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_state = {"verbose": False, "log_dir": None, "console": None, "file": None, "worker": None}


def verbose_requested(flag: bool = False) -> bool:
    """`--verbose` given, or IPT_VERBOSE set to anything but '', '0', 'false', 'no'."""
    return flag or os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def is_verbose() -> bool:
    return _state["verbose"]


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (a redirected or captured stream), as
    logging's own last-resort handler does, not to the one of the moment it was made."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


class _ConsoleFilter(logging.Filter):
    """Quiet console: this project's records (INFO and up) and other libraries' errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name == PROJECT or record.name.startswith(PROJECT + ".")
        return record.levelno >= (logging.INFO if own else logging.ERROR)


class _ConsoleFormatter(logging.Formatter):
    """`08:23:11 pt sweep: 22/44 jobs done ...`; warnings and errors say so."""

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        return f"{self.formatTime(record, '%H:%M:%S')} {level}{msg}"


def setup(verbose: bool = False, level: int = logging.INFO) -> None:
    """Configure the root logger for an entry point (idempotent: a second call replaces the first).

    Quiet (default): the console gets this project's records at `level` and up and other
    libraries' errors; Python warnings are captured into logging (so they reach the log file,
    not the console). Verbose: every logger at `level` on the console, as Python's basicConfig.
    """
    verbose = verbose_requested(verbose)
    _state["verbose"] = verbose
    root = logging.getLogger()
    if _state["console"] is not None:
        root.removeHandler(_state["console"])
    handler = _StderrHandler()
    if verbose:
        handler.setFormatter(logging.Formatter(_FILE_FORMAT, datefmt="%H:%M:%S"))
    else:
        handler.setFormatter(_ConsoleFormatter("%(message)s"))
        handler.addFilter(_ConsoleFilter())
    handler.setLevel(level)
    root.addHandler(handler)
    root.setLevel(min(level, logging.INFO))  # the log file takes INFO whatever the console shows
    _state["console"] = handler
    logging.captureWarnings(not verbose)
    if not verbose:
        _quiet_libraries()


def adopt_loggers(*names: str) -> None:
    """Quiet mode: libraries that print through handlers of their own (ray, mlflow) send their
    records through the root logger instead, so the console filter and the log file apply to them.
    Nothing changes with --verbose."""
    if _state["verbose"]:
        return
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def _quiet_libraries() -> None:
    """Library output through our handlers (so it lands in the log file, not on the console), and
    progress bars off. Nothing is dropped: a library's warnings are in the log file, its errors on
    the console."""
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")  # its INFO lines ("Creating ... tables") -> log file
    # With an http(s) tracking URI, MLflow prints "View run <name> at: <url>" and "View experiment
    # at: <url>" to stdout for every run it terminates (2 lines per sweep child) after fetching the
    # run once more from the server. Quiet mode turns that off: the pipeline and each sweep log the
    # UI's link once, and a single-stage run logs its own run's link (`tracking.MLflowTracker`).
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if "mlflow" in sys.modules:
        adopt_loggers("mlflow")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_default_handler()  # its warnings (at its own WARNING level) -> our handlers
    hf_logging.enable_propagation()
    hf_logging.disable_progress_bar()  # the weight-loading (and hub download) bars of every worker


def log_to(run_dir: str | os.PathLike) -> Path | None:
    """Also write every record (all loggers, INFO and up, Python warnings) to `<run_dir>/logs/ipt.log`;
    returns its path (None when the directory cannot be written: the console still works)."""
    log_dir = Path(run_dir).expanduser().resolve() / "logs"
    root = logging.getLogger()
    if _state["file"] is not None:
        if _state["log_dir"] == log_dir:
            return log_dir / "ipt.log"
        root.removeHandler(_state["file"])
        _state["file"].close()
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_dir / "ipt.log", encoding="utf-8")
    except OSError:
        return None  # an unwritable --out is reported by the driver's own check, with its fix
    handler.setFormatter(logging.Formatter(_FILE_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    _state["file"], _state["log_dir"] = handler, log_dir
    return log_dir / "ipt.log"


def worker_env() -> dict[str, str]:
    """Environment variables of the Ray workers of this driver (a job-level runtime_env): the log
    directory and the verbosity, which `setup_worker` reads. A variable already in this process's
    environment is left out: the workers get it from there (a local Ray inherits it, a submitted
    job's runtime_env sets it), and Ray refuses a job whose runtime_env and ray.init's both set a key."""
    env = {VERBOSE_ENV: "1" if _state["verbose"] else "0"}
    if _state["log_dir"] is not None:
        env[LOG_DIR_ENV] = str(_state["log_dir"])
    return {k: v for k, v in env.items() if k not in os.environ}


def ray_init_options() -> dict:
    """Keyword arguments of `ray.init` for this console: worker output forwarded only when verbose."""
    return {"log_to_driver": _state["verbose"], "runtime_env": {"env_vars": worker_env()}}


def setup_worker() -> None:
    """In a Ray worker process (a pack task, a PackRunner, an MSF worker), once per process: its
    Python logging and warnings also go to `<IPT_LOG_DIR>/workers.log` (pid-tagged), and when not
    verbose, known-harmless library output is switched off. Without IPT_LOG_DIR (a Ray started by
    someone else, tests) it does nothing."""
    log_dir = os.environ.get(LOG_DIR_ENV)
    if not log_dir or _state["worker"] == log_dir:
        return
    verbose = verbose_requested()
    root = logging.getLogger()
    try:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(Path(log_dir) / "workers.log", encoding="utf-8")
    except OSError:
        return
    handler.setFormatter(logging.Formatter("%(asctime)s pid %(process)d %(levelname)s %(name)s: %(message)s",
                                           datefmt="%Y-%m-%d %H:%M:%S"))
    handler.setLevel(logging.INFO)
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    if not verbose:
        _quiet_libraries()
    _state["worker"] = log_dir
