"""How the sweep driver's cost grows with the sweep: PT sweeps of N one-step jobs through `run_sweep`.

    PYTHONPATH=. python bench/sweep_scale.py --out /tmp/sweep_scale --sizes 500 2000 --stores sqlite postgres \
        --pack-size 128 --profile 2000 --json /tmp/sweep_scale.json

Each size is a real PT sweep (stage 0: tasks x data seeds x lrs, `sweep.lrs` of 12 values, 5 seeds: 60 jobs
per task, so 7,200 jobs = 120 tasks, the size of the paper's IST grid) on tiny-t5 with one training step
per job and a few dev / test examples, packed `--pack-size` jobs per Ray task, so the backbone work is
small and the driver dominates. Tasks are copies of the project's demo tasks under new names. One local
Ray of its own (`--slots` CPUs) serves every run, warmed first by an unrecorded sweep of one task (imports,
MLflow's schema code, the workers' cached backbone; `--no-warmup` skips it); each run gets its own output
directory and MLflow store:

  sqlite:   the embedded store, `sqlite:///<run>/mlflow.db` (the default of a sweep without a URI);
  postgres: an `mlflow server` backed by PostgreSQL, the way a team deploys it: the machine's PostgreSQL
            binaries (Debian's `postgresql` package) started by this benchmark in a temporary directory
            (`initdb` + `pg_ctl`, as user `postgres` when run as root), one server for all runs (each run
            is its own experiment in the same database, as on a shared server), torn down at the end.
            Skipped with one line when the binaries or psycopg2 are missing.

Per run it records: driver wall time split as `SweepResult.timings` (prepare / packs / finish), the
driver's own CPU seconds (its process only: the packs run in Ray workers), the driver's peak RSS (sampled
every 20 ms, and its growth over the RSS before the run), MLflow seconds per child (`SweepTracker.log_job`,
first and last tenth of the run's children separately: a per-child cost that grows with the store shows
there), results-file append seconds per job, bytes of `results.jsonl` per 1,000 jobs, and the cost of
re-submitting the finished sweep (0 jobs: re-reads the results and the MLflow children). Flat cost per
job means the `*_per_job` columns do not grow with N. `--profile N` runs one more SQLite sweep of N jobs
under cProfile (the driver process) and prints the top functions by own time and by cumulative time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SEEDS = [11, 12, 13, 14, 15]
LRS = [0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 3.0, 5.0]
JOBS_PER_TASK = len(SEEDS) * len(LRS)


# ----------------------------------------------------------------------------- measurement helpers


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class RssSampler:
    """Peak resident memory of this process while the block runs (sampled; ru_maxrss is per process
    lifetime and cannot be reset between runs)."""

    def __init__(self, every: float = 0.02) -> None:
        self.every, self.peak, self.start = every, 0, 0
        self._stop = threading.Event()

    def __enter__(self) -> Self:
        self.start = self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


class CallTimer:
    """Wall seconds of every call of `owner.name` (the original is called: nothing is replaced)."""

    def __init__(self, owners: list, name: str) -> None:
        self.owners, self.name, self.times = owners, name, []

    def __enter__(self) -> Self:
        self._orig = []
        for owner in self.owners:
            orig = getattr(owner, self.name)
            self._orig.append(orig)

            def timed(*a, _orig=orig, **kw):
                t0 = time.perf_counter()
                try:
                    return _orig(*a, **kw)
                finally:
                    self.times.append(time.perf_counter() - t0)

            setattr(owner, self.name, timed)
        return self

    def __exit__(self, *exc) -> None:
        for owner, orig in zip(self.owners, self._orig):
            setattr(owner, self.name, orig)


def _modules_with(name: str) -> list:
    """Every loaded ipt_dist module that holds `name` (the sweep driver is split into several modules,
    with and without Ray: whichever one calls it is timed)."""
    import ipt_dist.distributed.sweep  # noqa: F401 - load the driver and what it imports

    return [m for n, m in sorted(sys.modules.items())
            if (n == "ipt_dist" or n.startswith("ipt_dist.")) and m is not None and hasattr(m, name)]


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# ----------------------------------------------------------------------------- data and config


def write_tasks(root: Path, n_tasks: int) -> Path:
    """`n_tasks` JSONL tasks: copies of the demo tasks under new names (t0000_demo_sentiment, ...)."""
    from ipt_dist.data.tasks import write_demo_tasks

    base = root / "_demo"
    names = write_demo_tasks(base, n_train=16, n_dev=4, n_test=4)
    infos = {r["name"]: r for r in json.loads((base / "tasks.json").read_text())}
    out = root / f"tasks_{n_tasks}"
    if (out / "tasks.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n_tasks):
        src = names[i % len(names)]
        name = f"t{i:04d}_{src}"
        shutil.copytree(base / src, out / name, dirs_exist_ok=True)
        records.append({**infos[src], "name": name})
    (out / "tasks.json").write_text(json.dumps(records) + "\n")
    return out


def sweep_config(run_dir: Path, data_dir: Path, tasks: list[str], uri: str, experiment: str, pack_size: int,
                 slots: int):
    from ipt_dist.config import load_config

    return load_config(None, [
        f"output_dir={run_dir}", f"data.data_dir={data_dir}", f"data.tasks=[{', '.join(tasks)}]",
        "data.unseen_tasks=[]", f"data.data_seed={SEEDS[0]}", "data.train_size=4", "data.max_examples=4",
        "backbone.name_or_path=tiny-t5", "backbone.dropout=false", "backbone.num_beams=1",
        "backbone.max_new_tokens=2", "backbone.max_input_len=32", "backbone.max_target_len=4",
        "backbone.eval_batch_size=256", "pt.prompt_len=4", "pt.batch_size=2", "pt.steps=1", "pt.eval_every=1",
        f"sweep.data_seeds=[{', '.join(map(str, SEEDS))}]", f"sweep.lrs=[{', '.join(map(str, LRS))}]",
        f"sweep.pack_size={pack_size}", "sweep.num_cpus=1", f"sweep.max_in_flight={slots}",
        "tracking.enabled=true", f"tracking.tracking_uri={uri}", f"tracking.experiment={experiment}",
    ])


# ----------------------------------------------------------------------------- PostgreSQL + mlflow server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bindir() -> Path | None:
    for cand in [shutil.which("pg_config")]:
        if cand:
            try:
                d = Path(subprocess.run([cand, "--bindir"], capture_output=True, text=True, check=True).stdout.strip())
                if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
                    return d
            except (OSError, subprocess.CalledProcessError):
                pass
    for d in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    if shutil.which("initdb") and shutil.which("pg_ctl"):
        return Path(shutil.which("initdb")).resolve().parent
    return None


class PostgresMlflow:
    """PostgreSQL in a temporary directory and an `mlflow server` on it, both started here."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.server, self.uri = tmp, None, ""
        self.pg_started = False

    @staticmethod
    def missing() -> str | None:
        """Why a PostgreSQL run cannot happen here, or None."""
        if _pg_bindir() is None:
            return "no PostgreSQL binaries (initdb, pg_ctl) found; apt-get install -y postgresql"
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            return "psycopg2 is not importable in this Python; pip install psycopg2-binary"
        return None

    def _as_pg(self, cmd: list[str]) -> list[str]:
        if os.geteuid() == 0:  # postgres refuses to run as root
            return ["runuser", "-u", "postgres", "--", *cmd]
        return cmd

    def start(self) -> str:
        bindir = _pg_bindir()
        self.data = self.tmp / "pgdata"
        sock = self.tmp / "pgsock"
        sock.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.tmp, "postgres")
            shutil.chown(sock, "postgres")
        self.port = _free_port()
        subprocess.run(self._as_pg([str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                                    "-E", "UTF8", "--no-sync"]), check=True, capture_output=True)
        opts = f"-p {self.port} -k {sock} -c listen_addresses=127.0.0.1"
        self.pg_ctl = bindir / "pg_ctl"
        subprocess.run(self._as_pg([str(self.pg_ctl), "-D", str(self.data), "-o", opts, "-l",
                                    str(self.tmp / "postgres.log"), "-w", "start"]), check=True, capture_output=True)
        self.pg_started = True
        subprocess.run(self._as_pg([str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U",
                                    "postgres", "mlflow"]), check=True, capture_output=True)
        http = _free_port()
        art = self.tmp / "artifacts"
        art.mkdir(exist_ok=True)
        self.log = open(self.tmp / "mlflow_server.log", "w")  # noqa: SIM115 - the server's, closed in stop()
        self.server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
             f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/mlflow", "--artifacts-destination", art.as_uri(),
             "--host", "127.0.0.1", "--port", str(http), "--workers", "1"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.uri = f"http://127.0.0.1:{http}"
        deadline = time.time() + 300  # first start creates the schema (all migrations)
        while time.time() < deadline:
            if self.server.poll() is not None:
                self.log.flush()
                tail = (self.tmp / "mlflow_server.log").read_text()[-3000:]
                raise RuntimeError(f"mlflow server exited with {self.server.returncode}:\n{tail}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2):
                    return self.uri
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"mlflow server did not answer in 300 s ({self.tmp / 'mlflow_server.log'})")

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, 15)
            try:
                self.server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, 9)
        if self.pg_started:
            subprocess.run(self._as_pg([str(self.pg_ctl), "-D", str(self.data), "-m", "fast", "-w", "stop"]),
                           capture_output=True, check=False)
        if self.server is not None:
            self.log.close()


# ----------------------------------------------------------------------------- one run


def run_one(out: Path, size: int, store: str, uri: str, pack_size: int, slots: int, profile: bool = False) -> dict:
    """One PT sweep of ~size jobs into its own directory (and SQLite DB / experiment); returns its row."""
    from ipt_dist.distributed import sweep_tracking
    from ipt_dist.distributed.sweep import run_sweep

    n_tasks = max(1, round(size / JOBS_PER_TASK))
    data_dir = write_tasks(out / "data", n_tasks)
    tasks = sorted(json.loads((data_dir / "tasks.json").read_text()), key=lambda r: r["name"])
    names = [r["name"] for r in tasks]
    tag = f"{store}_{size}" + ("_profile" if profile else "")
    run_dir = out / tag
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    if store == "sqlite":
        uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    experiment = f"scale-{tag}-{int(time.time())}"
    cfg = sweep_config(run_dir, data_dir, names, uri, experiment, pack_size, slots)
    prof = cProfile.Profile() if profile else None
    cpu0 = _cpu_seconds()
    with RssSampler() as rss, CallTimer([sweep_tracking.SweepTracker], "log_job") as mlf, \
            CallTimer(_modules_with("append_jsonl"), "append_jsonl") as app:
        t0 = time.perf_counter()
        if prof:
            prof.enable()
        res = run_sweep(cfg, "pt")
        if prof:
            prof.disable()
        wall = time.perf_counter() - t0
    cpu = _cpu_seconds() - cpu0
    jobs = res.jobs_total
    assert res.jobs_failed == 0 and res.jobs_started == jobs, f"{tag}: {res.jobs_failed} jobs failed"
    results = res.sweep_dir / "results.jsonl"
    tenth = max(1, len(mlf.times) // 10)
    t1 = time.perf_counter()
    again = run_sweep(cfg, "pt")  # resubmission: reads results.jsonl and MLflow's children, runs nothing
    resume = time.perf_counter() - t1
    assert again.jobs_started == 0, f"{tag}: the re-submission ran {again.jobs_started} jobs"
    row = {
        "store": store, "jobs": jobs, "tasks": n_tasks, "pack_size": pack_size, "slots": slots,
        "profiled": profile, "wall_s": wall, "timings": {k: round(v, 3) for k, v in res.timings.items()},
        "driver_cpu_s": cpu, "driver_cpu_ms_per_job": 1000 * cpu / jobs,
        "wall_ms_per_job": 1000 * wall / jobs,
        "prepare_ms_per_job": 1000 * res.timings["prepare"] / jobs,
        "finish_ms_per_job": 1000 * res.timings["finish"] / jobs,
        "peak_rss_mb": rss.peak / 2**20, "rss_growth_mb": (rss.peak - rss.start) / 2**20,
        "rss_growth_kb_per_job": (rss.peak - rss.start) / 1024 / jobs,
        "children_logged": len(mlf.times),
        "mlflow_ms_per_child": 1000 * sum(mlf.times) / max(1, len(mlf.times)),
        "mlflow_ms_per_child_first_tenth": 1000 * sum(mlf.times[:tenth]) / tenth,
        "mlflow_ms_per_child_last_tenth": 1000 * sum(mlf.times[-tenth:]) / tenth,
        "mlflow_share_of_driver_wall": sum(mlf.times) / wall,
        "append_ms_per_job": 1000 * sum(app.times) / max(1, len(app.times)),
        "results_bytes_per_1000_jobs": results.stat().st_size * 1000 / jobs,
        "params_bytes_per_1000_jobs": sum(p.stat().st_size for p in (res.sweep_dir / "params").iterdir()) * 1000 / jobs,
        "resubmit_s": resume, "resubmit_ms_per_job": 1000 * resume / jobs,
    }
    if store == "sqlite":
        row["sqlite_db_bytes_per_1000_jobs"] = (run_dir / "mlflow.db").stat().st_size * 1000 / jobs
    if prof:
        row["profile"] = _profile_text(prof, run_dir / "driver.prof")
    return row


def _profile_text(prof: cProfile.Profile, path: Path, top: int = 25) -> dict:
    prof.dump_stats(str(path))
    out = {"file": str(path)}
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).strip_dirs().sort_stats(key).print_stats(top)
        out[key] = buf.getvalue()
    return out


# ----------------------------------------------------------------------------- main


def print_table(rows: list[dict]) -> None:
    print("\n| store | jobs | wall (s) | prepare / packs / finish (s) | driver CPU (ms/job) | wall (ms/job) "
          "| peak RSS (MB) | RSS growth (KB/job) | MLflow ms/child (all / first 10% / last 10%) | append (ms/job) "
          "| results.jsonl (KB/1k jobs) | re-submit (s) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["timings"]
        print(f"| {r['store']}{' (cProfile)' if r['profiled'] else ''} | {r['jobs']} | {r['wall_s']:.1f} | "
              f"{t['prepare']:.1f} / {t['packs']:.1f} / {t['finish']:.1f} | {r['driver_cpu_ms_per_job']:.1f} | "
              f"{r['wall_ms_per_job']:.1f} | {r['peak_rss_mb']:.0f} | {r['rss_growth_kb_per_job']:.1f} | "
              f"{r['mlflow_ms_per_child']:.1f} / {r['mlflow_ms_per_child_first_tenth']:.1f} / "
              f"{r['mlflow_ms_per_child_last_tenth']:.1f} | {r['append_ms_per_job']:.2f} | "
              f"{r['results_bytes_per_1000_jobs'] / 1024:.0f} | {r['resubmit_s']:.1f} |")


def main() -> None:
    import logging

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="work directory (default: a temporary one, removed at the end)")
    p.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    p.add_argument("--stores", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    p.add_argument("--pack-size", type=int, default=128)
    p.add_argument("--slots", type=int, default=2, help="Ray CPUs = packs in flight")
    p.add_argument("--profile", type=int, nargs="*", default=[],
                   help="sizes to run once more on SQLite under cProfile")
    p.add_argument("--json", help="write {'rows': [...]} here")
    p.add_argument("--keep", action="store_true", help="keep the run directories")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the unrecorded warm-up sweep (imports, MLflow schema code, Ray workers' backbone)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [x for x in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if x])  # the workers import this checkout
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    out = Path(args.out).resolve() if args.out else Path(tempfile.mkdtemp(prefix="sweep_scale_"))
    out.mkdir(parents=True, exist_ok=True)
    progress = logging.FileHandler(out / "driver.log")  # the sweeps' progress lines: jobs done vs elapsed
    progress.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    logging.getLogger("ipt_dist").addHandler(progress)
    logging.getLogger("ipt_dist").setLevel(logging.INFO)
    import ray

    ray.init(address="local", num_cpus=args.slots, log_to_driver=False, include_dashboard=False)  # a Ray of its own
    pg = None
    rows: list[dict] = []
    try:
        if "postgres" in args.stores:
            why = PostgresMlflow.missing()
            if why:
                print(f"postgres: skipped ({why})", flush=True)
            else:
                pg = PostgresMlflow(Path(tempfile.mkdtemp(prefix="sweep_scale_pg_")))
                pg.start()
                print(f"postgres: mlflow server {pg.uri} on PostgreSQL port {pg.port} ({pg.tmp})", flush=True)
        if not args.no_warmup:  # first-use costs (imports, workers loading the backbone) stay out of the rows
            run_one(out, JOBS_PER_TASK, "sqlite", "", args.pack_size, args.slots)
        for size in sorted(args.sizes):
            for store in args.stores:
                if store == "postgres" and pg is None:
                    continue
                rows.append(run_one(out, size, store, pg.uri if store == "postgres" else "", args.pack_size,
                                    args.slots))
                print(json.dumps({k: v for k, v in rows[-1].items() if k != "profile"}), flush=True)
        for size in args.profile:
            rows.append(run_one(out, size, "sqlite", "", args.pack_size, args.slots, profile=True))
            prof = rows[-1]["profile"]
            print(f"\n# cProfile of the driver, {rows[-1]['jobs']} jobs (SQLite): top by own time\n{prof['tottime']}"
                  f"\n# top by cumulative time\n{prof['cumulative']}", flush=True)
    finally:
        if pg is not None:
            pg.stop()
            shutil.rmtree(pg.tmp, ignore_errors=True)
        ray.shutdown()
        if not args.keep and not args.out:
            shutil.rmtree(out, ignore_errors=True)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "command": sys.argv, "cpus": os.cpu_count(),
                                               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
                                              indent=1, default=str))


if __name__ == "__main__":
    main()
