"""The sweep driver on Ray: `run_sweep` plans (`ipt_dist.sweep.plan`), skips finished jobs, fans the
packs out with at most `sweep.max_in_flight` in flight, and stores each result as it arrives.

    python ray_jobs/ist_sweep.py --smoke-test --out /tmp/ipt_smoke
    python ray_jobs/ist_sweep.py --config configs/ist_sweep.yaml --out /abs/path/runs/ist
    ray job submit --working-dir . -- python ray_jobs/ist_sweep.py --config configs/ist_sweep.yaml --out /abs/..

Packs go to one of two pools behind the same submit / done interface: `TaskPool` (CPU: plain Ray
tasks, whose reused workers keep their backbone cached) or `ActorPool` (GPU: one long-lived
`PackRunner` actor per task slot). `Fanout` adds what a pack is given (`PackInputs`, each frozen
model part put into the object store once) and the progress board; the loop in `_fan_out` knows
neither. The driver alone writes params, results and MLflow (`SweepTracker`).

Output layout (`<output_dir>/<stage>_sweep/`): `results.jsonl` (source of truth, one line per
finished job), `params/<job_id>.safetensors` (learned z, prompt, or Enc(P_i)), `jobs.jsonl`
(the expanded plan), `failures.jsonl`, `summary.{md,csv,json}`, `summary_settings.csv`.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, deque
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ipt_dist.artifacts import ensure_writable_dir, read_jsonl
from ipt_dist.config import IPTConfig, config_to_dict, save_config
from ipt_dist.distributed.cluster import check_resources, init_ray, task_slots
from ipt_dist.distributed.sweep_tracking import make_sweep_tracker
from ipt_dist.summary import pt_scores_by_draw
from ipt_dist.sweep.grid import expand_ipt_pt_jobs
from ipt_dist.sweep.inputs import PackInputs
from ipt_dist.sweep.jobs import JobSpec, SweepPlan
from ipt_dist.sweep.packing import describe_sizes, group_packs, pack_cost
from ipt_dist.sweep.plan import plan_sweep, refuse_stale_results
from ipt_dist.sweep.progress import PackProgressBoard, SweepProgress, describe_packs, fmt_secs, partial_jobs
from ipt_dist.sweep.results import SweepResult, record_failure, repair_torn_line, store_result, write_summary
from ipt_dist.sweep.smoke import prepare_smoke
from ipt_dist.sweep.worker import PackRunner, run_pack
from ipt_dist.testing.faults import sweep_crash_request

__all__ = ["ActorPool", "Fanout", "TaskPool", "run_sweep"]

log = logging.getLogger(__name__)

HEARTBEAT_S = 60.0  # the driver's progress line while no pack finishes (with each running pack's steps)
WAIT_S = 30.0  # the driver wakes at least this often to check the heartbeat


class TaskPool:
    """CPU packs as plain Ray tasks: Ray reuses their worker processes, which keep their backbone
    cached; a task whose worker died is retried by Ray up to sweep.max_retries times."""

    def __init__(self, ray, sw) -> None:
        self.ray = ray
        self.remote = ray.remote(run_pack).options(num_cpus=sw.num_cpus, num_gpus=0, max_retries=sw.max_retries,
                                                   retry_exceptions=False)

    def can_submit(self) -> bool:
        return True

    def submit(self, args: tuple):
        return self.remote.remote(*args)

    def done(self, ref, exc: Exception | None) -> bool:
        """A pack finished or failed; True would mean "run it again elsewhere" (never: Ray retried it)."""
        return False

    def close(self, cancel: list) -> None:
        for ref in cancel:
            self.ray.cancel(ref, force=True)


class ActorPool:
    """GPU packs on at most `slots` long-lived `PackRunner` actors, each holding its GPU(s) and its
    cached backbone for the whole fan-out (a reused Ray task worker would keep the CUDA device it
    first initialised). A dead actor is restarted (no limit) and its call retried up to
    sweep.max_retries times; an actor gone for good (e.g. with its node) is replaced where it fits."""

    def __init__(self, ray, sw, slots: int) -> None:
        self.ray, self.sw, self.slots = ray, sw, slots
        self.actor_cls = ray.remote(PackRunner).options(num_cpus=sw.num_cpus, num_gpus=sw.num_gpus,
                                                        max_restarts=-1, max_task_retries=sw.max_retries)
        self.idle: deque = deque()
        self.busy: dict[Any, Any] = {}  # ObjectRef -> actor
        self.n_actors = 0

    def can_submit(self) -> bool:
        if self.idle:
            return True
        if self.n_actors >= self.slots:
            return False
        # A new actor replaces one lost with its node only where it fits now: while other actors
        # live, a pack waits for one of them rather than for a node that may never come back.
        return self.n_actors == 0 or self._fits_one_more()

    def _fits_one_more(self) -> bool:
        free = self.ray.available_resources()
        return free.get("GPU", 0) >= self.sw.num_gpus and free.get("CPU", 0) >= self.sw.num_cpus

    def submit(self, args: tuple):
        if self.idle:
            actor = self.idle.popleft()
        else:
            actor = self.actor_cls.remote()
            self.n_actors += 1
        ref = actor.run.remote(*args)
        self.busy[ref] = actor
        return ref

    def done(self, ref, exc: Exception | None) -> bool:
        """A pack finished (or failed): its actor takes the next one, unless it died for good.
        Returns True when the actor was lost (the pack may run again on another one)."""
        actor = self.busy.pop(ref)
        if isinstance(exc, self.ray.exceptions.RayActorError):
            self.ray.kill(actor, no_restart=True)
            self.n_actors -= 1  # the next submit starts a fresh one
            return True
        self.idle.append(actor)
        return False

    def close(self, cancel: list) -> None:
        """Release the actors (and their GPUs); killing a busy actor cancels its pack."""
        for actor in [*self.idle, *self.busy.values()]:
            self.ray.kill(actor, no_restart=True)
        self.idle.clear()
        self.busy.clear()
        self.n_actors = 0


class Fanout:
    """Packs onto a pool (`TaskPool` on CPUs, `ActorPool` on GPUs) with their inputs: the config and
    each frozen model part put into the object store once, the IPT initial prompts, the progress board."""

    def __init__(self, plan: SweepPlan, ray, slots: int) -> None:
        self.plan, self.ray = plan, ray
        sw = plan.cfg.sweep
        self.pool = ActorPool(ray, sw, slots) if sw.num_gpus > 0 else TaskPool(ray, sw)
        self.inputs = PackInputs(plan)
        self.crash = sweep_crash_request()  # None unless a test asks a worker to die
        self.cfg_ref = ray.put(config_to_dict(plan.cfg))
        self.refs: dict[tuple, Any] = {}  # shared key -> ObjectRef, each put once
        # ObjectRef -> (pack id, label, jobs) of the packs in flight only: a ref kept after its pack is
        # done pins the pack's result (every job's record and tensor) in the object store until the end
        self.packs: dict[Any, tuple[int, str, int]] = {}
        self.submitted = 0
        try:  # steps of the running packs for the heartbeat; best effort, as everything about progress
            self.board = ray.remote(PackProgressBoard).options(num_cpus=0).remote()
        except Exception as exc:  # noqa: BLE001
            log.warning("no progress inside packs (the progress board did not start: %s)", exc)
            self.board = None

    def can_submit(self) -> bool:
        return self.pool.can_submit()

    def submit(self, pack: list[JobSpec]):
        self.submitted += 1
        pack_id = self.submitted
        progress = (self.board, pack_id) if self.board is not None and pack[0].kind != "msf_eval" else None
        args = (self.cfg_ref, [asdict(j) for j in pack], self.shared_ref(pack[0]), self.inputs.inits(pack),
                self.crash, progress)
        ref = self.pool.submit(args)
        self.packs[ref] = (pack_id, f"{pack[0].kind} x{len(pack)}", len(pack))
        return ref

    def shared_ref(self, job: JobSpec):
        key = self.inputs.shared_key(job)
        if key is None:
            return None
        if key not in self.refs:  # once per (kind, d, decoder): workers share it
            self.refs[key] = self.ray.put(self.inputs.shared_part(job))
        return self.refs[key]

    def pack_progress(self, refs: list) -> tuple[float, str]:
        """(jobs' worth of steps done inside the packs `refs`, their steps / ETA for the log line)."""
        if self.board is None:
            return 0.0, ""
        try:
            snapshot = self.ray.get(self.board.snapshot.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - a slow or lost board only costs the step counts
            return 0.0, ""
        mine = [self.packs[r] for r in refs if r in self.packs]
        running = {pid: snapshot[pid] for pid, _, _ in mine if pid in snapshot}
        return (partial_jobs(running, {pid: n for pid, _, n in mine}),
                describe_packs(running, {pid: label for pid, label, _ in mine}))

    def done(self, ref, exc: Exception | None = None) -> bool:
        """A pack finished (or failed): its ref is released. True: its actor was lost for good (run the
        pack again)."""
        self.packs.pop(ref, None)
        return self.pool.done(ref, exc)

    def close(self, cancel: list | None = None) -> None:
        """Cancel what is in flight and release the pool's workers and the progress board."""
        if self.board is not None:
            self.ray.kill(self.board, no_restart=True)
            self.board = None
        self.pool.close(cancel or [])


def run_sweep(cfg: IPTConfig, stage: str = "ist", smoke_test: bool = False) -> SweepResult:
    """Run (or resume) a PT or IST sweep on Ray; returns counts and the summary.

    Re-running with the same output_dir skips every job in `results.jsonl` and creates no
    duplicate MLflow runs; MLflow is first caught up from the results file.

    Raises:
        ConfigError / DataError: see `plan_sweep` (raised before Ray starts).
    """
    if smoke_test:
        cfg = prepare_smoke(cfg, stage, run_sweep)
    t_start = time.perf_counter()
    timings = {"prepare": 0.0, "packs": 0.0, "finish": 0.0}
    plan = plan_sweep(cfg, stage)
    cfg = plan.cfg
    sdir = ensure_writable_dir(plan.sweep_dir)
    for w in plan.warnings:
        log.warning("%s", w)
    results_file = sdir / "results.jsonl"
    repair_torn_line(results_file)
    done = {r["job_id"]: r for r in read_jsonl(results_file)}
    refuse_stale_results(plan, done, sdir)
    (sdir / "jobs.jsonl").write_text("".join(json.dumps(asdict(j)) + "\n" for j in plan.jobs))
    save_config(cfg, sdir / "config.yaml")
    tracker = make_sweep_tracker(cfg, stage, sdir)
    tracker.use_train_digests(cfg, plan.train_digests)
    tracker.start(cfg)
    pt_records = plan.pt_records
    pt_scores = pt_scores_by_draw(pt_records)  # (task, draw) -> PT test: each child's `relative`
    tracker.catch_up(list(done.values()), sdir / "params", pt_scores)

    total = len(plan.jobs) + plan.expected_ipt_pt
    todo = [j for j in plan.jobs if j.job_id not in done]
    progress = SweepProgress(stage, total, skipped=len(plan.jobs) - len(todo))
    failed: list[str] = []
    started = 0
    status = "FAILED"
    ray = None
    timings["prepare"] = time.perf_counter() - t_start
    try:
        for phase in (1, 2):
            if phase == 2:  # IPT-initialised PT starts from Dec(z*): it needs the IST results
                if stage != "ist" or not cfg.sweep.ipt_init_pt:
                    break
                extra = expand_ipt_pt_jobs(plan, list(done.values()))
                if len(extra) < plan.expected_ipt_pt:
                    log.warning("IPT-initialised PT: %d of %d jobs can run (the others lack IST results)",
                                len(extra), plan.expected_ipt_pt)
                with open(sdir / "jobs.jsonl", "a") as f:
                    f.write("".join(json.dumps(asdict(j)) + "\n" for j in extra))
                todo = [j for j in extra if j.job_id not in done]
                progress.total = len(plan.jobs) + len(extra)
                progress.skipped += len(extra) - len(todo)
            if todo:
                if ray is None:
                    t_ray = time.perf_counter()
                    ray = init_ray(cfg)
                    timings["prepare"] += time.perf_counter() - t_ray
                log.info("%s sweep: %d jobs to run in %s (%d already done); pack_size %d, max_in_flight %d",
                         stage, len(todo), sdir, progress.skipped + progress.done, cfg.sweep.pack_size,
                         cfg.sweep.max_in_flight)
                started += len(todo)
                t_packs = time.perf_counter()
                _fan_out(plan, ray, todo, done, results_file, tracker, progress, failed, pt_scores)
                timings["packs"] += time.perf_counter() - t_packs
        total = progress.total
        status = "FINISHED" if not failed else "FAILED"
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        log.warning("%s sweep interrupted: in-flight packs cancelled; re-submit to resume", stage)
        raise
    finally:
        t_finish = time.perf_counter()
        records = list(done.values())
        try:
            summary = write_summary(plan, records, pt_records)
        except OSError as exc:  # e.g. the disk filled up: keep the error that stopped the sweep visible
            log.error("%s sweep: summary not written (%s); `ipt report` or a re-run writes it", stage, exc)
            summary = None
        counts = {"jobs_total": total, "jobs_done": progress.skipped + progress.done, "jobs_failed": len(failed),
                  "jobs_started": started}
        tracker.finish(status, summary, sdir, counts)
        timings["finish"] = time.perf_counter() - t_finish
        timings["total"] = time.perf_counter() - t_start
    if not started:
        progress.report(0)
    log.info("%s sweep: %d jobs run in %s (prepare %s, packs %s, summary and tracking %s)", stage, started,
             fmt_secs(timings["total"]), fmt_secs(timings["prepare"]), fmt_secs(timings["packs"]),
             fmt_secs(timings["finish"]))
    return SweepResult(stage=stage, sweep_dir=sdir, jobs_total=total, jobs_started=started,
                       jobs_skipped=progress.skipped, jobs_failed=len(failed), failed_job_ids=failed,
                       summary=summary, parent_run_id=tracker.parent_run_id, timings=timings)


def _fan_out(plan: SweepPlan, ray, todo: list[JobSpec], done: dict, results_file: Path, tracker,
             progress: SweepProgress, failed: list[str], pt_scores: dict) -> None:
    """Submit packs with at most max_in_flight in flight; store each result as it arrives."""
    sw = plan.cfg.sweep
    check_resources(ray, sw)
    slots = task_slots(ray, sw)
    fan = Fanout(plan, ray, slots)
    pending = deque(group_packs(todo, sw.pack_size, slots, pack_cost(plan.cfg)))
    in_flight: dict[Any, list[JobSpec]] = {}
    lost: Counter = Counter()  # first job id -> times its pack's actor was lost
    log.info("%s sweep: %d packs (sizes %s) on %d task slots", plan.stage, len(pending),
             describe_sizes(pending), slots)
    last_report = time.time()

    def refill() -> None:
        while pending and len(in_flight) < sw.max_in_flight and fan.can_submit():
            pack = pending.popleft()
            in_flight[fan.submit(pack)] = pack

    try:
        refill()
        while in_flight:
            if time.time() - last_report > HEARTBEAT_S:  # heartbeat while nothing finishes
                progress.report(len(in_flight), *fan.pack_progress(list(in_flight)))
                last_report = time.time()
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=WAIT_S)
            finished = []
            for ref in ready:
                try:
                    outs, exc = ray.get(ref), None
                except Exception as err:  # noqa: BLE001 - a failed pack must not stop the sweep
                    outs, exc = None, err
                actor_lost = fan.done(ref, exc)
                pack = in_flight.pop(ref)
                if actor_lost and lost[pack[0].job_id] < sw.max_retries:
                    # Its actor is gone for good (e.g. with its node: Ray's own call retries are used
                    # up while the node is only "unavailable"): run the pack again on another actor.
                    lost[pack[0].job_id] += 1
                    log.warning("%s sweep: the actor of a pack of %d jobs (%s) was lost (%s); running it "
                                "again", plan.stage, len(pack), pack[0].job_id, type(exc).__name__)
                    pending.appendleft(pack)
                    continue
                finished.append((pack, outs, exc))
            refill()  # first: a freed slot must not wait for the driver's bookkeeping (files, MLflow)
            for pack, outs, exc in finished:
                if exc is not None:
                    record_failure(plan, pack, exc, failed, progress)
                    continue
                for out in outs:
                    store_result(plan, out, done, results_file, tracker, pt_scores)
                progress.done += len(outs)
            if ready:
                tracker.retry_pending()
                tracker.log_progress(progress.skipped + progress.done, progress.failed, progress.total)
                progress.report(len(in_flight))
                last_report = time.time()
    except BaseException:
        fan.close(cancel=list(in_flight))  # do not leave orphaned work behind on Ctrl-C or a driver error
        raise
    fan.close()
