"""Every path the project derives from a config, and the one way a user's path is made absolute.

    out = absolutize(cfg)            # a copy whose user-given paths are absolute (cwd-relative)
    msf_prompts_dir(out)             # <output_dir>/prompts unless msf.prompts_dir says otherwise

User paths are relative to the current directory, except `sweep.dims` values, which are relative
to `output_dir` (where `--smoke-test` and the pipeline train them). Paths that are not given are
left unset by `absolutize` and derived here from the (then absolute) `output_dir`, so a derived
path never needs its own absolutising. Plain Python (`data_dir` writes the demo tasks on first use).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ipt_dist.config import IPTConfig

log = logging.getLogger(__name__)

__all__ = ["absolute", "absolute_uri", "absolutize", "build_once", "cache_root", "data_dir", "demo_data_dir",
           "msf_checkpoint_dir", "msf_dist_dir", "msf_prompts_dir", "pipeline_msf_dir", "pt_prompts_dir", "ray_storage_path",
           "stage_dir", "sweep_dir", "token_cache_dir"]

_SQLITE = "sqlite:///"


# ----------------------------------------------------------------------------- making paths absolute


def absolute(path: str | Path, base: str | Path | None = None) -> Path:
    """`path` with `~` expanded, taken relative to `base` (default: the current directory), resolved."""
    p = Path(path).expanduser()
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return p.resolve()


def absolute_uri(uri: str) -> str:
    """A storage or tracking location made absolute: ``sqlite:///rel.db`` -> ``sqlite:////abs/rel.db``,
    a plain path -> an absolute path; other URIs (``s3://``, ``http://``, an absolute SQLite path,
    ``sqlite:///:memory:``) unchanged."""
    if uri.startswith(_SQLITE):
        rest = uri[len(_SQLITE):]
        return uri if rest.startswith("/") or rest == ":memory:" else _SQLITE + str(absolute(rest))
    return uri if "://" in uri else str(absolute(uri))


def absolutize(cfg: IPTConfig) -> IPTConfig:
    """A copy whose user-given paths are absolute, so that workers (other cwd, other nodes) and later
    runs see the same files.

    Made absolute against the current directory: `output_dir`, `data.data_dir` (not for format
    "hf": there it may be a hub name), `data.tasks_file`, `data.split_file`, `msf.prompts_dir`,
    `backbone.cache_dir`, `distributed.storage_path` and `tracking.tracking_uri` (see
    `absolute_uri`); `sweep.dims` values against `output_dir`. Unset paths stay unset (the
    functions below derive them from the absolute `output_dir`). `ray job submit` runs a driver in a
    temporary copy of the working dir, which is why the docs ask for an absolute `--out` there.
    """

    def opt(path: str | None) -> str | None:
        return None if path is None else str(absolute(path))

    out = str(absolute(cfg.output_dir))
    d = cfg.data
    data = replace(d, data_dir=d.data_dir if d.format == "hf" else opt(d.data_dir),
                   tasks_file=opt(d.tasks_file), split_file=opt(d.split_file))
    storage, uri = cfg.distributed.storage_path, cfg.tracking.tracking_uri
    return replace(
        cfg, output_dir=out, data=data,
        msf=replace(cfg.msf, prompts_dir=opt(cfg.msf.prompts_dir)),
        backbone=replace(cfg.backbone, cache_dir=opt(cfg.backbone.cache_dir)),
        distributed=replace(cfg.distributed, storage_path=absolute_uri(storage) if storage else storage),
        tracking=replace(cfg.tracking, tracking_uri=absolute_uri(uri) if uri else uri),
        sweep=replace(cfg.sweep, dims={int(k): str(absolute(p, out)) for k, p in cfg.sweep.dims.items()}),
    )


# ----------------------------------------------------------------------------- derived paths


def demo_data_dir(cfg: IPTConfig) -> Path:
    """`<output_dir>/demo_data`: the project's own demo tasks when no `data.data_dir` is given."""
    return Path(cfg.output_dir) / "demo_data"


def data_dir(cfg: IPTConfig) -> Path:
    """The configured data directory, or the demo tasks (written on first use)."""
    if cfg.data.data_dir:
        return Path(cfg.data.data_dir).expanduser()
    demo = demo_data_dir(cfg)
    if not (demo / "tasks.json").is_file():
        from ipt_dist.data.demo import write_demo_tasks

        write_demo_tasks(demo)
        log.info("no data.data_dir given: wrote the demo tasks to %s", demo)
    return demo


def token_cache_dir(cfg: IPTConfig) -> Path:
    """`<output_dir>/cache/tokens`: the on-disk token cache (`data.batching.tokenize_tasks`)."""
    return Path(cfg.output_dir) / "cache" / "tokens"


def stage_dir(cfg: IPTConfig, stage: str) -> Path:
    """`<output_dir>/<stage>`: results of a single-process stage ("pt", "msf", "ist", "msf.partial")."""
    return Path(cfg.output_dir) / stage


def pt_prompts_dir(cfg: IPTConfig) -> Path:
    """`<output_dir>/prompts`: where `ipt pt` and `ipt quickstart` write the stage-0 prompts."""
    return Path(cfg.output_dir) / "prompts"


def msf_prompts_dir(cfg: IPTConfig) -> Path:
    """The stage-0 prompts MSF trains from: `msf.prompts_dir`, else `pt_prompts_dir`."""
    return Path(cfg.msf.prompts_dir) if cfg.msf.prompts_dir else pt_prompts_dir(cfg)


def msf_checkpoint_dir(cfg: IPTConfig) -> Path:
    """The MSF decoder IST reads: `ist.msf_checkpoint`, else `<output_dir>/msf`."""
    return Path(cfg.ist.msf_checkpoint) if cfg.ist.msf_checkpoint else stage_dir(cfg, "msf")


def msf_dist_dir(cfg: IPTConfig) -> Path:
    """`<output_dir>/msf_dist`: run record, history and summary of distributed MSF."""
    return Path(cfg.output_dir) / "msf_dist"


def ray_storage_path(cfg: IPTConfig) -> str:
    """Ray Train's storage: `distributed.storage_path`, else `<output_dir>/ray_results`."""
    return cfg.distributed.storage_path or str(Path(cfg.output_dir) / "ray_results")


def sweep_dir(cfg: IPTConfig, stage: str) -> Path:
    """`<output_dir>/<stage>_sweep`: jobs, results and summary of a PT or IST sweep."""
    return Path(cfg.output_dir) / f"{stage}_sweep"


def pipeline_msf_dir(cfg: IPTConfig, d: int) -> Path:
    """`<output_dir>/msf_d<d>`: the pipeline's MSF run for intrinsic dimension `d`."""
    return Path(cfg.output_dir) / f"msf_d{d}"


# ----------------------------------------------------------------------------- the model cache


def cache_root(cache_dir: str | None = None) -> Path:
    """Where built backbones are cached: `cache_dir`, else $IPT_CACHE_DIR, else ~/.cache/ipt_dist."""
    return Path(cache_dir or os.environ.get("IPT_CACHE_DIR") or Path.home() / ".cache" / "ipt_dist")


def build_once(final: Path, build: Callable[[Path], object], what: str, marker: str = "config.json") -> Path:
    """`final`, building it on first use (logged as `what`): `build(tmp)` fills a private temporary directory beside it,
    which is then renamed to `final` in one step. Concurrent builders (the first jobs of a sweep,
    each in its own process) race harmlessly: the first rename wins, a loser finds `final/marker`
    and discards its copy. A half-built directory never appears under the final name."""
    if (final / marker).is_file():
        return final
    if final.exists() and any(final.iterdir()):
        raise FileExistsError(f"{final} exists but holds no {marker}: not a finished build (an interrupted copy "
                              f"or another program's files). Fix: delete {final}; it is rebuilt on first use")
    final.parent.mkdir(parents=True, exist_ok=True)
    log.info("%s into %s (once)", what, final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}-"))
    try:
        build(tmp)
        try:
            tmp.rename(final)
        except OSError:
            if not (final / marker).is_file():
                raise  # not a lost race: something else is in the way
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
