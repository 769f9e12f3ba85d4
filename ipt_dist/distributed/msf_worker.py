"""Distributed MSF, the worker side: one Ray Train worker driving a DeepSpeed engine over the prompt
autoencoder (`train_func`, the TorchTrainer's per-worker entry, and `MSFWorker`).

Each worker rebuilds the typed config from the dict it is passed (never module globals), builds
the frozen backbone (sharded at creation under ZeRO-3) and the trainable autoencoder, and trains
with the same `MSFModel`, sampler, evaluation and keep-best rule (`ipt_dist.train.best`) as the
single-process driver (`run_msf`, stages/msf.py). The driver side is `msf_driver`.

This is an orchestration module: ray and deepspeed are imported inside functions, deepspeed
only once DS_ACCELERATOR is set.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from ipt_dist.artifacts import (
    ArtifactError,
    append_jsonl,
    atomic_write_bytes,
    load_task_prompts,
    save_msf_checkpoint,
)
from ipt_dist.config import config_from_dict, save_config
from ipt_dist.distributed.deepspeed_config import batch_sizes, zero_stage
from ipt_dist.testing.faults import maybe_crash_msf_worker
from ipt_dist.train.best import BestTracker, dev_mean
from ipt_dist.train.rows import to_device_async
from ipt_dist.train.steplog import StepLog

log = logging.getLogger(__name__)

BEST_DIR = "best"  # inside every Ray checkpoint: the best autoencoder so far, in the export format


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
        from ipt_dist.data.selection import load_tokenized, resolve_tasks
        from ipt_dist.modeling.autoencoder import build_autoencoder
        from ipt_dist.modeling.backbone import build_backbone
        from ipt_dist.train.optim import linear_warmup_decay, warmup_steps_for
        from ipt_dist.train.steps import MSFModel

        cfg, m = self.cfg, self.cfg.msf
        if cfg.backbone.compile:  # DeepSpeed's hooks (ZeRO-3 gathers) and torch.compile: not combined here
            from dataclasses import replace

            log.warning("backbone.compile is not applied in the DeepSpeed MSF workers; they run the backbone eagerly")
            cfg = replace(cfg, backbone=replace(cfg.backbone, compile=False))
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
        self.steplog = StepLog()  # metrics of the steps not yet read (flush_rows)
        self.best, self.best_state = BestTracker(), None
        self.resumed_from = 0

    # ------------------------------------------------------------------ training
    def train_step(self) -> dict[str, float]:
        """One optimiser step, its metrics read at once: the finished row (`step` + `flush_rows`)."""
        self.step_on_device()
        row = self.flush_rows()[-1]
        del row["step"]
        return row

    def step_on_device(self) -> None:
        """One optimiser step over this rank's share of the global batch (accum micro-batches). Its
        metrics stay on the device in `self.steplog` until `flush_rows`: no host read, no collective."""
        from ipt_dist.train.steps import collate_msf

        b = self.sizes
        t0 = time.perf_counter()
        self.backbone.set_train_mode(True)
        lr = self.scheduler.get_last_lr()[0]  # the lr this step applies
        global_pairs = self.sampler.global_batch_at(self.sampler.step)  # every rank's rows (deterministic)
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
        # the first backward: every rank draws the same global batch from the seeded sampler, so it counts
        # the global batch's target tokens itself (no collective). The reconstruction MSE is a mean over
        # rows and every micro-batch has `micro` rows, so the average of the micro-batch means is the global mean.
        replicas = b.world * b.accum
        global_tgt = (float(sum(len(self.data[t].train.targets[i]) for t, i in global_pairs))
                      if self.model.lm_reduction == "mean" else None)
        lm_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        rec_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for mb in micro_batches:
            mb = {k: to_device_async(v, self.device) for k, v in mb.items()}  # pinned on CUDA: no host wait
            loss, lm, rec = self.engine(mb, replicas=replicas, global_tokens=global_tgt)
            self.engine.backward(loss)
            self.engine.step()
            lm_sum += lm  # stays on the device until flush_rows
            rec_sum += rec
        self.step += 1
        grad_norm = self.engine.get_global_grad_norm()  # before clipping: a tensor, a float, or None (ZeRO-0 fp32)
        # Columns 0-3 are this rank's and get summed over ranks at the flush; grad_norm is already global.
        self.steplog.add(self.step, {"lm": lm_sum, "rec": rec_sum, "tgt": float(tgt), "inp": float(inp),
                                     "grad_norm": grad_norm}, {"lr": lr, "has_norm": grad_norm is not None},
                         started=t0)

    def flush_rows(self) -> list[dict[str, float]]:
        """The finished rows of every step since the last flush, in order: one all-reduce of the
        (steps, 4) per-rank totals and one host read. Collective: every rank flushes at the same steps.
        `step_time` (and the rates from it) is the mean over the flushed steps."""
        b = self.sizes
        replicas = b.world * b.accum

        def sum_over_ranks(table: torch.Tensor) -> None:
            totals = table[:, :4].contiguous()
            self.dist.all_reduce(totals)
            table[:, :4] = totals

        rows = []
        for f in self.steplog.flush(sum_over_ranks):
            v = f.values
            rec_loss = v["rec"] / replicas
            row = {"loss": self.model.objective(v["lm"], v["tgt"], rec_loss),  # as optimised
                   "lm_loss": v["lm"] / max(v["tgt"], 1.0),  # token-mean under either reduction
                   "rec_loss": rec_loss, "target_tokens": v["tgt"], "lr": f.host["lr"]}
            if f.host["has_norm"]:  # a NaN norm is logged as NaN; DeepSpeed's None (no norm kept) is left out
                row["grad_norm"] = v["grad_norm"]
            row.update({"step_time": f.step_time, "samples_per_second": b.global_batch / f.step_time,
                        "tokens_per_second": (v["tgt"] + v["inp"]) / f.step_time})  # input + target, all ranks
            rows.append({"step": f.step, **row})
        return rows

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> list[float]:
        """Dev score of every training task with its reconstructed prompt; generation sharded over ranks
        (`evaluate_groups` with rank/world: every rank gets the same scores)."""
        from ipt_dist.train.steps import evaluate_groups

        with gathered(self.ae.parameters(), self.stage == 3):
            ae_dtype = self.ae.encoder.weight.dtype
            recon = self.ae(self.prompts.to(ae_dtype)).detach().clone()  # (T, L, H)

        def all_gather(local: list) -> list[list]:
            shards: list = [None] * self.world
            self.dist.all_gather_object(shards, local)
            return shards

        scores, _ = evaluate_groups(self.backbone, recon, [d.dev for d in self.data],
                                    [d.info.metric for d in self.data], self.cfg.backbone.eval_batch_size,
                                    self.cfg.msf.eval_max_examples, rank=self.rank, world=self.world,
                                    all_gather=all_gather)
        return scores

    # ------------------------------------------------------------------ checkpoints
    def _meta(self) -> dict:
        return {"backbone": self.backbone.name, "tasks": self.tasks, "alpha": self.cfg.msf.alpha,
                "lm_reduction": self.cfg.msf.lm_reduction,
                "best_dev": self.best.best, "step": self.best.step, "temperature": self.cfg.msf.temperature,
                "distributed": {"num_workers": self.world, "zero_stage": self.stage,
                                "ray_run": self.run["name"]},
                "provenance": self.run.get("provenance")}

    def save_checkpoint(self, metrics: dict) -> None:
        """Every rank writes its DeepSpeed shards, rank 0 the best AE; Ray merges them into one checkpoint."""
        import ray.train

        with tempfile.TemporaryDirectory(prefix="msf_ckpt_") as tmp:
            client_state = {"step": self.step, "sampler": self.sampler.state_dict(),
                            "best_dev": self.best.best, "best_step": self.best.step}
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
            self.best = BestTracker(float(client["best_dev"]), int(client["best_step"]))
            best_dir = Path(d) / BEST_DIR
            if self.rank == 0 and (best_dir / "autoencoder.safetensors").is_file():
                from safetensors.torch import load_file

                self.best_state = load_file(str(best_dir / "autoencoder.safetensors"))
        self.resumed_from = self.step
        log.info("rank %d: resumed from step %d (best dev %.4f at step %d)", self.rank, self.step,
                 self.best.best, self.best.step)

    # ------------------------------------------------------------------ loop
    def _maybe_crash(self) -> None:
        """Testing aid (`crash_at_step`, see `ipt_dist.testing.faults`): the last rank dies for real."""

        def wait_for_commit() -> None:
            import ray.train

            # Ray Train commits a reported checkpoint when its controller next polls the workers (every
            # couple of seconds); a worker that dies before that takes the report with it. Die only once
            # the latest checkpoint is committed, so the test exercises "resume from that checkpoint".
            committed = ray.train.CheckpointConsistencyMode.COMMITTED
            ray.train.get_all_reported_checkpoints(consistency_mode=committed, timeout_s=120)

        maybe_crash_msf_worker(self.run.get("crash_at_step"), self.step + 1, self.rank, self.world, self.run["dir"],
                               before_exit=wait_for_commit)

    def run_loop(self) -> None:
        m = self.cfg.msf
        history = Path(self.run["dir"]) / "history.jsonl"
        while self.step < m.steps:
            self._maybe_crash()
            self.step_on_device()
            done = self.step
            evaluate = done % m.eval_every == 0 or done == m.steps
            checkpoint = done % m.checkpoint_every == 0 or done == m.steps
            if not (evaluate or checkpoint or done % m.log_every == 0):
                continue  # the metrics stay on the device (msf.log_every)
            rows = self.flush_rows()  # same steps on every rank: a collective
            row = rows[-1]
            if evaluate:
                scores = self.evaluate()
                row["dev_mean"] = dev_mean(scores, self.tasks)  # NaN tasks left out (train.best)
                row.update({f"dev/{t}": s for t, s in zip(self.tasks, scores, strict=True)})
                if self.best.update(row["dev_mean"], done):  # same on every rank: scores were all-gathered
                    state = full_fp32_state(self.ae)  # collective
                    self.best_state = state if self.rank == 0 else None
                row["best_dev"] = self.best.best
            if self.rank == 0:
                for r in rows:
                    step = r.pop("step")
                    append_jsonl(history, {"step": step, "resumed_from": self.resumed_from, **r})
                    self.tracker.log_metrics(r, step=step)
            if checkpoint:
                metrics = {"step": done, "loss": row["loss"], "best_dev": self.best.best,
                           "best_step": self.best.step}
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


__all__ = ["BEST_DIR", "MSFWorker", "full_fp32_state", "gathered", "train_func"]
