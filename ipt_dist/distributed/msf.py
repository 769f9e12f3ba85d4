"""Distributed MSF: Ray Train workers, each driving a DeepSpeed engine over the prompt autoencoder.

    python ray_jobs/msf.py --config configs/msf.yaml            # local Ray, started on demand
    python ray_jobs/msf.py --smoke-test --out /tmp/msf_smoke    # tiny CPU run, 2 workers

The driver (`run_distributed_msf`) checks every input before any worker starts, creates the
one MLflow run, and launches a `TorchTrainer`; each worker (`train_func`) rebuilds the typed
config from its dict, builds the frozen backbone (sharded at creation under ZeRO-3) and the
trainable autoencoder, and trains with the same `MSFModel`, sampler and metrics as the
single-process driver `ipt_dist.stages.msf.run_msf`.

Layout of `<output_dir>`:
    msf/                 best mean-dev autoencoder, the artifact IST consumes (save_msf_checkpoint)
    msf_dist/run.json    Ray run name + MLflow run id (what `--resume` continues)
    msf_dist/history.jsonl   per-step metrics written by rank 0 (`resumed_from` marks restarts)
    msf_dist/summary.json
    ray_results/<run>/   Ray Train checkpoints (distributed.storage_path)

This is an orchestration module: it may import ray at module level; deepspeed is imported
inside functions so that DS_ACCELERATOR can be set first.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from ipt_dist.artifacts import (
    ArtifactError,
    append_jsonl,
    ensure_writable_dir,
    atomic_write_bytes,
    load_task_prompts,
    save_msf_checkpoint,
)
from ipt_dist.config import IPTConfig, config_from_dict, config_to_dict, flatten_config, save_config
from ipt_dist.distributed.deepspeed_config import (
    DeepSpeedConfigError,
    batch_sizes,
    build_ds_config,
    zero_stage,
)
from ipt_dist.errors import UserError
from ipt_dist.provenance import backbone_name, check_msf_prompts, msf_provenance

log = logging.getLogger(__name__)

RUN_FILE = "run.json"
BEST_DIR = "best"  # inside every Ray checkpoint: the best autoencoder so far, in the export format
CRASH_MARKER = "crash_injected"


class MSFInputError(UserError):
    """Inputs of a distributed MSF run are unusable; the message lists every problem and its fix."""


class DistributedMSFError(RuntimeError):
    """The Ray Train run failed after it started (the cause is chained)."""


# ==================================================================================== paths


def dist_dir(cfg: IPTConfig) -> Path:
    """`<output_dir>/msf_dist`: run record, history and summary of distributed MSF."""
    return Path(cfg.output_dir) / "msf_dist"


def _abs(path: str | None) -> str | None:
    return None if path is None else str(Path(path).expanduser().resolve())


def _abs_storage(path: str) -> str:
    """Ray Train's storage_path: a URI (s3://, gs://, ...) unchanged, a local path made absolute."""
    return path if "://" in path else _abs(path)


def _abs_sqlite(uri: str) -> str:
    """sqlite:///relative.db -> sqlite:////abs/relative.db; other URIs unchanged."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    return uri


def absolutize(cfg: IPTConfig) -> IPTConfig:
    """A copy whose paths are absolute, so that workers (other cwd, other nodes) see the same files.

    `ray job submit` runs the driver in a temporary copy of the working dir: relative paths are
    resolved there, which is why the docs ask for absolute `--out` and tracking URIs.
    """
    from ipt_dist.modeling.backbone import resolve_auto_dtype
    from ipt_dist.tracking import resolve_tracking_uri

    cfg = resolve_auto_dtype(cfg, "cuda" if cfg.distributed.use_gpu else "cpu")  # where the workers run
    out = _abs(cfg.output_dir)
    storage = cfg.distributed.storage_path or str(Path(out) / "ray_results")
    data_dir = cfg.data.data_dir if cfg.data.format == "hf" else _abs(cfg.data.data_dir)  # hf: a dataset name
    cfg = replace(
        cfg,
        output_dir=out,
        data=replace(cfg.data, data_dir=data_dir, tasks_file=_abs(cfg.data.tasks_file),
                     split_file=_abs(cfg.data.split_file)),
        msf=replace(cfg.msf, prompts_dir=_abs(cfg.msf.prompts_dir or str(Path(out) / "prompts"))),
        distributed=replace(cfg.distributed, storage_path=_abs_storage(storage)),
        backbone=replace(cfg.backbone, cache_dir=_abs(cfg.backbone.cache_dir)),
    )
    if cfg.tracking.enabled:
        uri = _abs_sqlite(resolve_tracking_uri(cfg))
        cfg = replace(cfg, tracking=replace(cfg.tracking, tracking_uri=uri))
    return cfg


# ==================================================================================== checks


def expected_backbone_name(cfg: IPTConfig) -> str:
    """The name `build_backbone` gives this backbone (what prompt files record)."""
    return backbone_name(cfg.backbone)


def backbone_hidden_size(cfg: IPTConfig) -> int | None:
    """Hidden size H of the configured backbone without loading its weights (None: unknown here)."""
    from ipt_dist.modeling import tiny

    b = cfg.backbone
    if b.arch:
        c = tiny.arch_config(b.arch)
    elif b.name_or_path in tiny.TINY_KINDS or b.name_or_path in getattr(tiny, "DEMO_KINDS", {}):
        kind = getattr(tiny, "DEMO_KINDS", {}).get(b.name_or_path, b.name_or_path)
        c = tiny.tiny_config(kind, vocab_size=8)  # the hidden size does not depend on the vocabulary
    elif b.name_or_path.lower().startswith("smollm2-135m"):
        c = tiny.arch_config("smollm2-135m")
    else:
        try:
            from transformers import AutoConfig

            c = AutoConfig.from_pretrained(b.name_or_path)
        except Exception:  # noqa: BLE001 - the workers load it and fail with the loader's own error
            return None
    return int(getattr(c, "d_model", None) or getattr(c, "hidden_size", None) or c.n_embd)


def check_inputs(cfg: IPTConfig, *, resume: bool = False) -> dict[str, Any]:
    """Everything a run needs, checked in the driver before any worker starts.

    Checks the config, the DeepSpeed config and the batch invariant, that the tasks exist and
    their data loads, that every training task has a stage-0 prompt file of shape (L, H) for
    this backbone, that d fits the prompt, and (with `resume`) that there is a run to continue.

    Returns:
        {"tasks": TaskSplit, "ds_config": resolved dict, "hidden": H or None,
         "sizes": {task: number of training examples}, "provenance": see `msf_provenance`}.
    Raises:
        MSFInputError: listing every problem at once.
    """
    from ipt_dist.data.tasks import DataError
    from ipt_dist.stages.common import load_raw, resolve_tasks

    problems: list[str] = list(cfg.problems())
    out: dict[str, Any] = {"tasks": None, "ds_config": None, "hidden": None, "sizes": {}, "provenance": None}
    try:
        out["ds_config"] = build_ds_config(cfg)
    except (FileNotFoundError, DeepSpeedConfigError) as exc:
        problems.append(str(exc))
    if cfg.distributed.use_gpu and cfg.distributed.resources_per_worker.get("GPU", 1) <= 0:
        problems.append("distributed.resources_per_worker.GPU: must be > 0 when distributed.use_gpu is true")
    try:
        split = resolve_tasks(cfg)
        out["tasks"] = split
    except DataError as exc:
        problems.append(str(exc))
        split = None
    hidden = backbone_hidden_size(cfg)
    out["hidden"] = hidden
    L = cfg.pt.prompt_len
    if hidden is not None and cfg.msf.d > L * hidden:
        problems.append(f"msf.d: the intrinsic dimension ({cfg.msf.d}) exceeds the prompt size "
                        f"L*H = {L}*{hidden}; choose a smaller d")
    if split is not None:
        try:
            raw = load_raw(cfg, split.train)
            for name, task in raw.items():
                out["sizes"][name] = len(task.train)
                if not task.train:
                    problems.append(f"task {name}: no training examples")
                if not task.dev:
                    problems.append(f"task {name}: no dev examples; dev scores select the best checkpoint")
        except (DataError, FileNotFoundError) as exc:
            problems.append(str(exc))
        if hidden is not None:
            try:
                load_task_prompts(cfg.msf.prompts_dir, split.train, L, hidden, expected_backbone_name(cfg))
            except ArtifactError as exc:
                problems.append(str(exc) + "\n    Fix: run stage 0 first (ipt pt --config ...), or point "
                                "msf.prompts_dir at the prompt files")
        if not problems:  # the prompts' own provenance, then what the checkpoint will record (msf.json)
            try:
                problem, unrecorded = check_msf_prompts(cfg, raw, cfg.data.data_seed, cfg.msf.prompts_dir)
                if problem:
                    problems.append(problem)
                elif unrecorded:
                    log.warning("%d stage-0 prompt files record no provenance (%s): their draw and backbone are "
                                "not checked", len(unrecorded), ", ".join(unrecorded[:5]))
                out["provenance"] = msf_provenance(cfg, raw, cfg.data.data_seed, cfg.msf.prompts_dir)
            except (FileNotFoundError, ArtifactError) as exc:  # unchecked above when H is unknown here
                problems.append(str(exc))
    if resume:
        record = dist_dir(cfg) / RUN_FILE
        if not record.is_file():
            problems.append(f"--resume: {record} does not exist, so there is no run to continue in "
                            f"{cfg.output_dir}. Fix: drop --resume to start a new run, or give the "
                            "output_dir of the stopped run")
    if problems:
        raise MSFInputError(f"distributed MSF cannot start: {len(problems)} problem(s):\n  - "
                            + "\n  - ".join(problems))
    return out


# ==================================================================================== helpers


def _split_name(cfg: IPTConfig) -> str:
    if cfg.data.split_file:
        return Path(cfg.data.split_file).stem
    return "custom" if cfg.data.tasks else "all"


@contextlib.contextmanager
def gathered(params, enabled: bool, modifier_rank: int | None = None):
    """Gather ZeRO-3-partitioned parameters for the block; a no-op unless `enabled` (PEFT style)."""
    if not enabled:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(params), modifier_rank=modifier_rank):
        yield


def full_fp32_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full fp32 weights of `module`'s trainable parameters, on CPU. Collective: call on every rank.

    Reads DeepSpeed's fp32 master copy (ZeRO 1/2/3, bf16/fp16), so a mixed-precision run exports
    fp32 weights, not their bf16 shadow.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    state = {}
    for name, p in module.named_parameters():
        full = safe_get_full_fp32_param(p)
        state[name] = (p.detach() if full is None else full).float().cpu().clone()
    return state


def _export(out_dir: Path, state: dict[str, torch.Tensor], shape: dict, meta: dict) -> None:
    from ipt_dist.modeling.autoencoder import PromptAutoencoder

    ae = PromptAutoencoder(shape["d"], shape["prompt_len"], shape["hidden"], shape["mid_dim"])
    ae.load_state_dict(state)
    save_msf_checkpoint(out_dir, ae, meta)


# ==================================================================================== worker


class MSFWorker:
    """One Ray Train worker: backbone, autoencoder, DeepSpeed engine, sampler, evaluation, checkpoints."""

    def __init__(self, config: dict) -> None:
        self.cfg = config_from_dict(config["cfg"], "train_loop_config.cfg")
        self.ds_config: dict = config["ds_config"]
        self.run: dict = config["run"]
        from ipt_dist import console

        console.setup_worker()  # this worker's logging and warnings -> <out>/logs/workers.log
        if not self.cfg.distributed.use_gpu:
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
        import deepspeed
        import ray.train
        import torch.distributed as dist

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        self.dist = dist
        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.local_rank = ctx.get_local_rank()
        # Ray Train has set up torch.distributed (gloo on CPU, nccl on GPU); DeepSpeed reuses it.
        deepspeed.init_distributed(dist_backend=dist.get_backend(), dist_init_required=False, verbose=False)
        if self.cfg.distributed.use_gpu:
            import ray.train.torch

            self.device = ray.train.torch.get_device()
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.stage = zero_stage(self.ds_config)
        self.sizes = batch_sizes(self.cfg, self.world)
        self.tracker = self._tracker()
        self._build(deepspeed)

    # ------------------------------------------------------------------ setup
    def _tracker(self):
        from ipt_dist.tracking import MLflowTracker, NullTracker

        if self.rank != 0 or not self.run.get("mlflow_run_id"):
            return NullTracker()
        return MLflowTracker(self.cfg.tracking.tracking_uri, self.cfg.tracking.experiment,
                             run_id=self.run["mlflow_run_id"])

    def _build(self, deepspeed) -> None:
        from ipt_dist.data.sampling import TaskBalancedSampler
        from ipt_dist.modeling.backbone import build_backbone
        from ipt_dist.stages.common import load_tokenized, resolve_tasks
        from ipt_dist.stages.msf import build_autoencoder
        from ipt_dist.train.optim import linear_warmup_decay, warmup_steps_for
        from ipt_dist.train.steps import MSFModel

        cfg, m = self.cfg, self.cfg.msf
        self.hf_ds_config = None
        if self.stage == 3:
            # While this object lives, transformers builds models under deepspeed.zero.Init (each rank
            # holds only its shard of the frozen backbone from the start: from_pretrained loads the
            # weights into the shards) and generate() keeps ranks in lock-step (synced_gpus), since
            # every forward all-gathers parameters.
            from transformers.integrations import HfDeepSpeedConfig

            from ipt_dist.modeling.tiny import TINY_KINDS

            if cfg.backbone.name_or_path in TINY_KINDS and not cfg.backbone.arch:
                # Random tiny test backbones: zero.Init initialises weights in another order, which
                # would give a different random model than the one stage 0 trained its prompts on.
                # They are tiny, so build them whole; deepspeed.initialize partitions them below.
                self.backbone = build_backbone(cfg.backbone, self.device)
                self.hf_ds_config = HfDeepSpeedConfig(self.ds_config)
            else:
                self.hf_ds_config = HfDeepSpeedConfig(self.ds_config)
                self.backbone = build_backbone(cfg.backbone)
        else:
            # ZeRO-0/1/2: every worker holds the whole frozen backbone (ZeRO-1/2 shard the AE's state).
            self.backbone = build_backbone(cfg.backbone, self.device)
        H = self.backbone.hidden_size
        self.tasks = resolve_tasks(cfg).train
        self.prompts = load_task_prompts(cfg.msf.prompts_dir, self.tasks, cfg.pt.prompt_len, H,
                                         self.backbone.name).to(self.device)
        # Local rank 0 of each node tokenises first (it writes the token cache); the others then read it.
        if self.local_rank != 0:
            self.dist.barrier()
        tok = load_tokenized(cfg, self.backbone, self.tasks)
        if self.local_rank == 0:
            self.dist.barrier()
        self.data = [tok[t] for t in self.tasks]
        if self.stage == 3:
            with deepspeed.zero.Init(config_dict_or_path=self.ds_config):
                ae = build_autoencoder(cfg, H)  # same seeded init as the single-process driver
        else:
            ae = build_autoencoder(cfg, H).to(self.device)
        self.ae_shape = ae.shape_dict()
        model = MSFModel(self.backbone, ae, self.prompts, m.alpha, m.lm_reduction)
        warmup = warmup_steps_for(m.steps, m.warmup_ratio)
        steps = m.steps

        def schedule(optimizer):
            # Our schedule, identical to run_msf: linear warmup then linear decay (transformers' shape).
            return torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                     lambda s: linear_warmup_decay(s, steps, warmup))

        params = list(self.backbone.model.parameters())
        self.backbone_info = {
            "zero_stage": self.stage,
            "backbone_parameters": sum(getattr(p, "ds_numel", p.numel()) for p in params),
            "partitioned_at_creation": all(hasattr(p, "ds_id") for p in params),
        }
        self.engine, _, _, self.scheduler = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=self.ds_config, lr_scheduler=schedule, dist_init_required=False)
        self.model, self.ae = model, ae
        # What this rank holds of the frozen backbone: 1/world of it under ZeRO-3, all of it otherwise.
        self.backbone_info["backbone_parameters_on_rank"] = sum(
            p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel() for p in params)
        if self.rank == 0:
            atomic_write_bytes(Path(self.run["dir"]) / "backbone_rank0.json",
                               json.dumps(self.backbone_info, indent=2).encode())
        log.info("rank %d: backbone %s", self.rank, self.backbone_info)
        self.sampler = TaskBalancedSampler([len(d.train) for d in self.data], m.batch_size,
                                           temperature=m.temperature, seed=m.seed, rank=self.rank,
                                           world_size=self.world)
        self.step = 0
        self.best, self.best_step, self.best_state = -math.inf, 0, None
        self.resumed_from = 0

    # ------------------------------------------------------------------ collectives
    def _all_reduce(self, values: list[float]) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        self.dist.all_reduce(t)
        return t.tolist()

    # ------------------------------------------------------------------ training
    def train_step(self) -> dict[str, float]:
        """One optimiser step over this rank's share of the global batch (accum micro-batches)."""
        from ipt_dist.stages.msf import collate_msf

        b = self.sizes
        t0 = time.perf_counter()
        self.backbone.set_train_mode(True)
        lr = self.scheduler.get_last_lr()[0]  # the lr this step applies
        pairs = self.sampler.next_batch()  # (micro * accum) rows of this rank
        micro_batches = [collate_msf(self.backbone, self.data, pairs[i * b.micro:(i + 1) * b.micro])
                         for i in range(b.accum)]
        # Counted on the CPU tensors of the collated batches: no device sync.
        tgt = sum(int((mb["labels"] != -100).sum()) for mb in micro_batches)
        inp = sum(int(mb["attention_mask"].sum()) for mb in micro_batches)
        # DeepSpeed averages gradients over ranks and over the accum micro-batches of a step (1/accum in
        # engine.backward). MSFModel multiplies each micro-batch's LM token sum by replicas = world * accum
        # to undo that average, so the step's gradient is that of the global batch's objective, as one
        # process computes it (msf_step): with "sum", the token sum over the whole global batch; with
        # "mean", additionally divided by the global target-token count, which must then be known before
        # the first backward (one extra all-reduce). The reconstruction MSE is a mean over rows and every
        # micro-batch has `micro` rows, so the average of the micro-batch means is the global mean.
        replicas = b.world * b.accum
        global_tgt = self._all_reduce([float(tgt)])[0] if self.model.lm_reduction == "mean" else None
        lm_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        rec_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for mb in micro_batches:
            mb = {k: v.to(self.device) for k, v in mb.items()}
            loss, lm, rec = self.engine(mb, replicas=replicas, global_tokens=global_tgt)
            self.engine.backward(loss)
            self.engine.step()
            lm_sum += lm  # stays on the device: one host sync per step, below
            rec_sum += rec
        totals = torch.stack([lm_sum, rec_sum, torch.tensor(float(tgt), dtype=torch.float64, device=self.device),
                              torch.tensor(float(inp), dtype=torch.float64, device=self.device)])
        self.dist.all_reduce(totals)
        lm_total, rec_total, global_tgt, global_inp = totals.tolist()
        self.step += 1
        rec_loss = rec_total / replicas
        row = {"loss": self.model.objective(lm_total, global_tgt, rec_loss),  # as optimised
               "lm_loss": lm_total / max(global_tgt, 1.0),  # token-mean under either reduction
               "rec_loss": rec_loss, "target_tokens": global_tgt, "lr": lr}
        grad_norm = self.engine.get_global_grad_norm()  # before clipping; None with ZeRO-0 in fp32
        if grad_norm is not None:
            row["grad_norm"] = float(grad_norm)
        dt = time.perf_counter() - t0
        row.update({"step_time": dt, "samples_per_second": b.global_batch / dt,
                    "tokens_per_second": (global_tgt + global_inp) / dt})  # input + target tokens, all ranks
        return row

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> list[float]:
        """Dev score of every training task with its reconstructed prompt; generation sharded over ranks."""
        from ipt_dist.metrics import compute_metric
        from ipt_dist.train.steps import EvalItem, predict

        cap = self.cfg.msf.eval_max_examples
        items = [(t, i) for t, d in enumerate(self.data)
                 for i in range(len(d.dev) if cap is None else min(len(d.dev), cap))]  # (task, dev example)
        with gathered(self.ae.parameters(), self.stage == 3):
            ae_dtype = self.ae.encoder.weight.dtype
            recon = self.ae(self.prompts.to(ae_dtype)).detach().clone()  # (T, L, H)
        # Every rank runs the same number of generate batches: under ZeRO-3 each forward is a
        # collective, so the shards are padded to equal length (padding rows are dropped).
        mine = list(range(self.rank, len(items), self.world))
        per_rank = math.ceil(len(items) / self.world)
        padded = mine + [mine[0] if mine else 0] * (per_rank - len(mine))
        eval_items = [EvalItem(items[j][0], self.data[items[j][0]].dev.inputs[items[j][1]]) for j in padded]
        bs = self.cfg.backbone.eval_batch_size
        preds = predict(self.backbone, recon, eval_items, bs) if eval_items else []
        shards: list = [None] * self.world
        self.dist.all_gather_object(shards, list(zip(mine, preds[:len(mine)], strict=True)))
        by_item: dict[int, str] = {j: p for shard in shards for j, p in shard}
        scores = []
        for t, d in enumerate(self.data):
            idx = [j for j, (tt, _) in enumerate(items) if tt == t]
            refs = [d.dev.references[items[j][1]] for j in idx]
            preds_t = [by_item[j] for j in idx]
            scores.append(compute_metric(d.info.metric, preds_t, refs) if idx else float("nan"))
        return scores

    # ------------------------------------------------------------------ checkpoints
    def _meta(self) -> dict:
        return {"backbone": self.backbone.name, "tasks": self.tasks, "alpha": self.cfg.msf.alpha,
                "lm_reduction": self.cfg.msf.lm_reduction,
                "best_dev": self.best, "step": self.best_step, "temperature": self.cfg.msf.temperature,
                "distributed": {"num_workers": self.world, "zero_stage": self.stage,
                                "ray_run": self.run["name"]},
                "provenance": self.run.get("provenance")}

    def save_checkpoint(self, metrics: dict) -> None:
        """Every rank writes its DeepSpeed shards, rank 0 the best AE; Ray merges them into one checkpoint."""
        import ray.train

        with tempfile.TemporaryDirectory(prefix="msf_ckpt_") as tmp:
            client_state = {"step": self.step, "sampler": self.sampler.state_dict(),
                            "best_dev": self.best, "best_step": self.best_step}
            # Frozen backbone weights are not saved: they come from the backbone config on restore.
            self.engine.save_checkpoint(tmp, tag=f"step{self.step}", client_state=client_state,
                                        exclude_frozen_parameters=True)
            if self.rank == 0 and self.best_state is not None:
                _export(Path(tmp) / BEST_DIR, self.best_state, self.ae_shape, self._meta())
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_step{self.step:08d}")

    def restore(self) -> None:
        """Continue from Ray Train's latest checkpoint, if there is one (restart or --resume)."""
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return
        with ckpt.as_directory() as d:
            # load_module_strict=False: the frozen backbone is not in the checkpoint (built from config).
            path, client = self.engine.load_checkpoint(
                d, load_module_strict=False, load_optimizer_states=True, load_lr_scheduler_states=True)
            if path is None:
                raise ArtifactError(f"checkpoint {d}: DeepSpeed could not load it (no 'latest' tag); "
                                    "delete the run's checkpoints or start a new run without --resume")
            self.sampler.load_state_dict(client["sampler"])
            self.step = int(client["step"])
            self.best, self.best_step = float(client["best_dev"]), int(client["best_step"])
            best_dir = Path(d) / BEST_DIR
            if self.rank == 0 and (best_dir / "autoencoder.safetensors").is_file():
                from safetensors.torch import load_file

                self.best_state = load_file(str(best_dir / "autoencoder.safetensors"))
        self.resumed_from = self.step
        log.info("rank %d: resumed from step %d (best dev %.4f at step %d)", self.rank, self.step,
                 self.best, self.best_step)

    # ------------------------------------------------------------------ loop
    def _maybe_crash(self) -> None:
        """Testing aid (`crash_at_step`): the last rank dies for real, once per run, before that step."""
        crash = self.run.get("crash_at_step")
        if crash is None or self.step + 1 != crash or self.rank != self.world - 1:
            return
        marker = Path(self.run["dir"]) / CRASH_MARKER
        if marker.exists():
            return
        import ray.train

        # Ray Train commits a reported checkpoint when its controller next polls the workers (every
        # couple of seconds); a worker that dies before that takes the report with it. Die only once
        # the latest checkpoint is committed, so the test exercises "resume from that checkpoint".
        committed = ray.train.CheckpointConsistencyMode.COMMITTED
        ray.train.get_all_reported_checkpoints(consistency_mode=committed, timeout_s=120)
        marker.write_text(str(crash))
        log.warning("rank %d: injected crash before step %d", self.rank, crash)
        os._exit(1)

    def run_loop(self) -> None:
        m = self.cfg.msf
        history = Path(self.run["dir"]) / "history.jsonl"
        while self.step < m.steps:
            self._maybe_crash()
            row = self.train_step()
            done = self.step
            if done % m.eval_every == 0 or done == m.steps:
                scores = self.evaluate()
                finite = [s for s in scores if not math.isnan(s)]
                row["dev_mean"] = sum(finite) / len(finite) if finite else float("nan")
                row.update({f"dev/{t}": s for t, s in zip(self.tasks, scores, strict=True)})
                if row["dev_mean"] > self.best:  # same decision on every rank: scores were all-gathered
                    self.best, self.best_step = row["dev_mean"], done
                    state = full_fp32_state(self.ae)  # collective
                    self.best_state = state if self.rank == 0 else None
                row["best_dev"] = self.best
            if self.rank == 0:
                append_jsonl(history, {"step": done, "resumed_from": self.resumed_from, **row})
                self.tracker.log_metrics(row, step=done)
            if done % m.checkpoint_every == 0 or done == m.steps:
                metrics = {"step": done, "loss": row["loss"], "best_dev": self.best,
                           "best_step": self.best_step}
                if "dev_mean" in row:
                    metrics["dev_mean"] = row["dev_mean"]
                self.save_checkpoint(metrics)

    def finish(self) -> None:
        """Rank 0 logs the exported AE, the config and the DeepSpeed config to MLflow."""
        if self.rank != 0 or not self.run.get("mlflow_run_id"):
            return
        with tempfile.TemporaryDirectory(prefix="msf_art_") as tmp:
            if self.best_state is not None:
                _export(Path(tmp) / "msf", self.best_state, self.ae_shape, self._meta())
                self.tracker.log_artifact(Path(tmp) / "msf")  # -> artifacts msf/
            save_config(self.cfg, Path(tmp) / "config" / "msf_config.yaml")
            (Path(tmp) / "config" / "ds_config.json").write_text(json.dumps(self.ds_config, indent=2))
            self.tracker.log_artifact(Path(tmp) / "config")  # -> artifacts config/
            self.tracker.flush(retries=5, wait=2.0)


def train_func(config: dict) -> None:
    """Per-worker entry of the TorchTrainer. Reads only `config` (never module globals).

    `config` = {"cfg": asdict(IPTConfig) with absolute paths, "ds_config": resolved DeepSpeed dict,
    "run": {"name", "dir", "mlflow_run_id", "crash_at_step"}}.
    """
    worker = MSFWorker(config)
    worker.restore()
    worker.run_loop()
    worker.finish()


# ==================================================================================== driver


def _mlflow_run(cfg: IPTConfig, record: dict | None, tags: dict, datasets: list[dict] = ()) -> str | None:
    """Create the run's single MLflow run in the driver (or reopen it on --resume); returns its id.

    `datasets`: the training draws (`tracking.msf_datasets`), logged as the new run's dataset inputs.
    """
    if not cfg.tracking.enabled:
        return None
    from mlflow import MlflowClient

    from ipt_dist.tracking import MLflowTracker

    uri = cfg.tracking.tracking_uri
    client = MlflowClient(uri)
    if record and record.get("mlflow_run_id"):
        client.update_run(record["mlflow_run_id"], status="RUNNING")
        client.set_tag(record["mlflow_run_id"], "resumed", "true")
        return record["mlflow_run_id"]
    # MLflowTracker creates the experiment with its artifacts next to an SQLite DB, not in ./mlruns of
    # this process (a temporary directory under `ray job submit`): tracking.get_or_create_experiment.
    name = cfg.tracking.run_name or f"msf-d{cfg.msf.d}"
    tracker = MLflowTracker(uri, cfg.tracking.experiment, name, tags=tags)
    tracker.log_params(flatten_config(cfg))
    if not tracker.flush(retries=3, wait=1.0):
        raise DistributedMSFError(f"MLflow at {uri} did not accept the run's parameters; see the log above")
    tracker.log_inputs(list(datasets))
    if not tracker.flush(retries=3, wait=1.0):  # best effort: never stops training
        log.warning("MLflow run %s: the training tasks' dataset inputs were not logged", tracker.run_id)
    return tracker.run_id


def _missing_resources(cfg: IPTConfig) -> str | None:
    """What the cluster lacks for the worker group, or None when it fits."""
    import ray

    d = cfg.distributed
    per_cpu = d.resources_per_worker.get("CPU", 1)
    per_gpu = d.resources_per_worker.get("GPU", 1) if d.use_gpu else 0
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    have_cpu, have_gpu = sum(r.get("CPU", 0) for r in nodes), sum(r.get("GPU", 0) for r in nodes)
    need_cpu, need_gpu = d.num_workers * per_cpu, d.num_workers * per_gpu
    if have_cpu < need_cpu or have_gpu < need_gpu:
        return (f"{d.num_workers} workers (distributed.num_workers) x {per_cpu:g} CPU / {per_gpu:g} GPU each need "
                f"{need_cpu:g} CPUs / {need_gpu:g} GPUs, the Ray cluster has {have_cpu:g} CPUs / {have_gpu:g} GPUs")
    if not any(r.get("CPU", 0) >= per_cpu and r.get("GPU", 0) >= per_gpu for r in nodes):
        return (f"one worker needs {per_cpu:g} CPU / {per_gpu:g} GPU (distributed.resources_per_worker, use_gpu) "
                "and no node of the Ray cluster has that much")
    return None


def _wait_for_resources(cfg: IPTConfig, poll_s: float = 5.0) -> None:
    """Wait at most `distributed.resource_wait_s` for the cluster to fit the worker group.

    Ray Train would otherwise wait forever for a placement group that cannot be placed.

    Raises:
        DistributedMSFError: still too small after the wait (nothing has been trained).
    """
    d = cfg.distributed
    missing = _missing_resources(cfg)
    if missing is None:
        return
    deadline = time.time() + d.resource_wait_s
    log.warning("%s: waiting up to %.0f s for an autoscaler to add nodes (distributed.resource_wait_s)",
                missing, d.resource_wait_s)
    while missing is not None and time.time() < deadline:
        time.sleep(min(poll_s, max(0.0, deadline - time.time())))
        missing = _missing_resources(cfg)
    if missing is not None:
        raise DistributedMSFError(
            f"{missing} (waited {d.resource_wait_s:.0f} s). Fix: lower distributed.num_workers or "
            "distributed.resources_per_worker, set distributed.use_gpu=false on a CPU cluster, or add nodes")


def _init_ray(cfg: IPTConfig) -> None:
    # No address: `ray job submit` sets RAY_ADDRESS; otherwise join a running local cluster or start one.
    from ipt_dist.distributed.cluster import init_ray

    init_ray(cfg)


def run_distributed_msf(cfg: IPTConfig, *, resume: bool = False, smoke_test: bool = False,
                        crash_at_step: int | None = None) -> dict:
    """Train MSF with Ray Train + DeepSpeed; export the best mean-dev AE to `<output_dir>/msf`.

    Args:
        cfg: the run's config (relative paths are made absolute against the current directory).
        resume: continue the run recorded in `<output_dir>/msf_dist/run.json` from its latest
            checkpoint (same Ray run, same MLflow run). Without it a new run starts.
        smoke_test: first train the stage-0 prompts the run needs (`run_pt`, fast on tiny configs).
        crash_at_step: testing aid: the last worker exits hard before this step, once per run.
    Returns:
        A summary dict (best_dev, best_step, steps, seconds, checkpoint, ray_run, mlflow_run_id, ...).
    Raises:
        ConfigError, MSFInputError: bad config, DeepSpeed config, tasks, data or prompts (raised before
            Ray starts; every problem listed at once).
        DistributedMSFError: the Ray Train run failed (worker errors beyond distributed.max_failures).
    """
    import ray.train
    from ray.train.torch import TorchTrainer

    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") and not Path(cfg.output_dir).expanduser().is_absolute():
        log.warning("output_dir %r is relative and this is a Ray job: it resolves inside the job's temporary "
                    "copy of the working dir and is deleted with it. Pass an absolute --out", cfg.output_dir)
    cfg = absolutize(cfg.validate())
    if smoke_test:
        from ipt_dist.stages.common import resolve_tasks
        from ipt_dist.stages.pt import run_pt

        if Path(cfg.msf.prompts_dir) != Path(cfg.output_dir) / "prompts":
            default = Path(cfg.output_dir) / "prompts"
            raise MSFInputError(f"smoke test: stage 0 writes its prompts to {default}"
                                f" but msf.prompts_dir is {cfg.msf.prompts_dir}. "
                                "Fix: leave msf.prompts_dir unset")
        log.info("smoke test: training the stage-0 prompts first")
        run_pt(cfg, tasks=resolve_tasks(cfg).train)
    checked = check_inputs(cfg, resume=resume)
    if cfg.tracking.enabled:
        from ipt_dist.tracking import check_tracking_store

        check_tracking_store(cfg)  # a clear ConfigError before Ray starts
    ds_config = checked["ds_config"]
    run_dir = ensure_writable_dir(dist_dir(cfg))
    record = json.loads((run_dir / RUN_FILE).read_text()) if resume else None
    if record:
        name = record["ray_run"]  # the same Ray Train run name + storage: V2 restores its latest checkpoint
    else:
        if (run_dir / RUN_FILE).is_file():
            log.info("%s exists: starting a new run (pass --resume to continue that one)", run_dir / RUN_FILE)
        # Unique: Ray Train silently resumes a run whose name and storage path are reused.
        name = f"msf-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        for stale in (run_dir / "history.jsonl", run_dir / CRASH_MARKER):
            stale.unlink(missing_ok=True)
    _init_ray(cfg)
    _wait_for_resources(cfg)  # before the MLflow run: a cluster too small leaves nothing behind
    tags = {"stage": "msf", "backbone": expected_backbone_name(cfg), "d": cfg.msf.d,
            "split": _split_name(cfg), "zero_stage": zero_stage(ds_config),
            "num_workers": cfg.distributed.num_workers,
            "ds_config": Path(cfg.distributed.ds_config).name, "ray_run": name}
    from ipt_dist.tracking import msf_datasets

    mlflow_run_id = _mlflow_run(cfg, record, tags, msf_datasets(cfg, checked["provenance"], checked["sizes"]))
    record = {"ray_run": name, "mlflow_run_id": mlflow_run_id, "storage_path": cfg.distributed.storage_path,
              "tracking_uri": cfg.tracking.tracking_uri if cfg.tracking.enabled else None}
    atomic_write_bytes(run_dir / RUN_FILE, json.dumps(record, indent=2).encode())
    save_config(cfg, run_dir / "msf_config.yaml")
    (run_dir / "ds_config.json").write_text(json.dumps(ds_config, indent=2))

    d = cfg.distributed
    resources = dict(d.resources_per_worker) or None
    trainer = TorchTrainer(
        train_func,
        train_loop_config={"cfg": config_to_dict(cfg), "ds_config": ds_config,
                           "run": {"name": name, "dir": str(run_dir), "mlflow_run_id": mlflow_run_id,
                                   "crash_at_step": crash_at_step, "provenance": checked["provenance"]}},
        scaling_config=ray.train.ScalingConfig(num_workers=d.num_workers, use_gpu=d.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=name, storage_path=d.storage_path,
            failure_config=ray.train.FailureConfig(max_failures=d.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            worker_runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}} if not d.use_gpu else None),
    )
    t0 = time.time()
    log.info("distributed MSF: Ray run %s, %d workers, ZeRO-%d, MLflow run %s", name, d.num_workers,
             zero_stage(ds_config), mlflow_run_id)
    try:
        with _heartbeat(run_dir / "history.jsonl", cfg.msf.steps, f"distributed MSF d={cfg.msf.d}"):
            result = trainer.fit()
    except KeyboardInterrupt:
        _end_mlflow(cfg, mlflow_run_id, "KILLED")
        raise
    except Exception as exc:
        _end_mlflow(cfg, mlflow_run_id, "FAILED")
        raise DistributedMSFError(
            f"distributed MSF run {name} failed: {exc}\n  Checkpoints: {d.storage_path.rstrip('/')}/{name}. "
            f"Fix the cause, then continue with --resume (same output_dir {cfg.output_dir})") from exc
    if result.checkpoint is None:
        _end_mlflow(cfg, mlflow_run_id, "FAILED")
        raise DistributedMSFError(f"run {name} finished without a checkpoint; nothing to export")
    out = Path(cfg.output_dir) / "msf"
    with result.checkpoint.as_directory() as ckpt:
        best = Path(ckpt) / BEST_DIR
        if not (best / "msf.json").is_file():
            _end_mlflow(cfg, mlflow_run_id, "FAILED")
            raise DistributedMSFError(f"the final checkpoint {ckpt} holds no best autoencoder")
        out.mkdir(parents=True, exist_ok=True)
        for f in ("autoencoder.safetensors", "msf.json"):
            atomic_write_bytes(out / f, (best / f).read_bytes())
    meta = json.loads((out / "msf.json").read_text())
    metrics = result.metrics or {}
    summary = {"best_dev": meta["best_dev"], "best_step": meta["step"], "steps": int(metrics.get("step", 0)),
               "final_loss": metrics.get("loss"), "seconds": time.time() - t0, "checkpoint": str(out),
               "d": cfg.msf.d, "tasks": meta["tasks"], "ray_run": name,
               "ray_checkpoint": result.checkpoint.path, "mlflow_run_id": mlflow_run_id,
               "zero_stage": zero_stage(ds_config), "num_workers": d.num_workers}
    atomic_write_bytes(run_dir / "summary.json", json.dumps(summary, indent=2).encode())
    _end_mlflow(cfg, mlflow_run_id, "FINISHED", model_dir=out)
    log.info("distributed MSF done: best mean dev %.4f at step %d -> %s", summary["best_dev"],
             summary["best_step"], out)
    return summary


HEARTBEAT_S = 60.0  # the driver's progress line while Ray Train runs (worker output is not on the console)


def _last_step(history: Path) -> dict | None:
    """The last complete line of rank 0's history.jsonl, or None."""
    try:
        with open(history, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))
            lines = [ln for ln in f.read().splitlines() if ln.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None  # not written yet, or a line being written: the next beat reads it


@contextlib.contextmanager
def _heartbeat(history: Path, total: int, label: str, every_s: float | None = None):
    """While the block runs, log every `every_s` seconds (HEARTBEAT_S) the step rank 0 last wrote to
    `history` (shared storage; on a node the driver cannot read, nothing is logged) and an ETA from
    the step rate measured since the first beat."""
    import threading

    from ipt_dist.distributed.pack_progress import pack_eta

    stop = threading.Event()
    first: list[tuple[int, float]] = []

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S if every_s is None else every_s):
            row = _last_step(history)
            if not row:
                continue
            step, now = int(row.get("step", 0)), time.time()
            if not first:  # a resumed run starts mid-way: the rate counts steps of this run only
                first.append((step, now))
            s0, t0 = first[0]
            log.info("%s: step %d/%d, loss %.4g, ETA %s", label, step, total, float(row.get("loss", math.nan)),
                     pack_eta(step - s0, total - s0, now - t0))

    thread = threading.Thread(target=beat, name="msf-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def _end_mlflow(cfg: IPTConfig, run_id: str | None, status: str, model_dir: Path | None = None) -> None:
    """Close the run; with `model_dir` (the exported checkpoint) first log it as the run's LoggedModel."""
    if run_id is None:
        return
    from ipt_dist.tracking import MLflowTracker, log_msf_model

    tracker = MLflowTracker(cfg.tracking.tracking_uri, cfg.tracking.experiment, run_id=run_id)
    if model_dir is not None:
        log_msf_model(tracker, model_dir)
        if not tracker.flush(retries=3, wait=2.0):  # closing the run must not wait behind the model
            log.error("MLflow run %s: the autoencoder in %s was not logged as a LoggedModel", run_id,
                      model_dir)
            tracker = MLflowTracker(cfg.tracking.tracking_uri, cfg.tracking.experiment, run_id=run_id)
    tracker.end(status)


__all__ = ["run_distributed_msf", "train_func", "check_inputs", "absolutize", "MSFInputError",
           "DistributedMSFError", "MSFWorker", "gathered", "full_fp32_state"]
