"""The body of one pack on a worker: rebuild the config, load (or reuse) the backbone, tokenize the
pack's data, run `train_pack` (PT, IST) or score Dec(Enc(P_i)) (settings 1-2), and return each
job's record and learned parameter. Writes nothing: the driver stores results.

Plain Python: `ipt_dist.distributed.fanout` runs `run_pack` as a Ray task, or `PackRunner.run` on a
Ray actor; tests call it in-process.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import defaultdict
from dataclasses import asdict
from typing import Any

import torch

from ipt_dist.config import IPTConfig, config_from_dict
from ipt_dist.data.selection import load_tokenized
from ipt_dist.modeling.backbone import pick_device
from ipt_dist.sweep.jobs import JobSpec, pack_settings
from ipt_dist.sweep.progress import ThrottledProgress
from ipt_dist.testing.faults import maybe_crash

__all__ = ["PackRunner", "run_pack"]

_BACKBONES: dict[str, Any] = {}  # per worker process: reused by later packs of a reused (CPU) worker


def _cached_backbone(cfg: IPTConfig, device: torch.device):
    from ipt_dist.modeling.backbone import build_backbone

    key = json.dumps([asdict(cfg.backbone), str(device)], sort_keys=True)
    if key not in _BACKBONES:
        _BACKBONES.clear()  # one backbone per worker at a time
        _BACKBONES[key] = build_backbone(cfg.backbone, device)
    return _BACKBONES[key]


def run_pack(cfg_dict: dict, jobs: list[dict], shared: dict | None = None,
             inits: dict[str, torch.Tensor] | None = None, crash: str | None = None,
             progress: tuple | None = None) -> list[dict]:
    """Run one pack (a Ray task body; also callable in-process). Returns per job
    `{"record": dict, "param": tensor, "param_name": "z" | "prompt"}`; writes nothing.
    Each record's `worker_seconds` is its share of the whole task (backbone load, tokenisation,
    training, evaluation), `seconds` its share of training and evaluation alone, `worker` the
    host:pid that ran it.

    Args:
        cfg_dict: `config_to_dict` of the resolved config (rebuilt here, no module globals).
        jobs: `asdict(JobSpec)` of jobs sharing `pack_key`.
        shared: the frozen model part from the object store: {"meta", "decoder"} state for IST,
            {"meta", "autoencoder", "prompts"} for settings 1-2.
        inits: job_id -> initial prompt (L, H) for IPT-initialised PT jobs.
        crash: the driver's crash request of the tests (`ipt_dist.testing.faults`); None in real runs.
        progress: (board actor handle, pack id): training steps done / total go to the board
            (`ipt_dist.sweep.progress`), which the driver's heartbeat reads.
    """
    from ipt_dist import console

    console.setup_worker()  # this worker's logging and warnings -> <out>/logs/workers.log
    t0 = time.perf_counter()
    outs = _run_pack(cfg_dict, jobs, shared, inits, crash, progress)
    share = (time.perf_counter() - t0) / max(1, len(outs))
    worker = f"{socket.gethostname()}:{os.getpid()}"
    for out in outs:
        out["record"].update(worker_seconds=share, worker=worker)
    return outs


def _forwarder(progress: tuple | None):
    """train_pack's on_progress for a pack whose driver gave it a progress board (else None)."""
    if progress is None:
        return None
    board, pack_id = progress
    return ThrottledProgress(lambda done, total, secs: board.update.remote(pack_id, done, total, secs))


def _run_pack(cfg_dict: dict, jobs: list[dict], shared: dict | None, inits: dict[str, torch.Tensor] | None,
              crash: str | None, progress: tuple | None = None) -> list[dict]:
    specs = [JobSpec(**j) for j in jobs]
    maybe_crash(crash, [name for j in specs for name in (j.job_id, j.task)])
    cfg = config_from_dict(cfg_dict, "sweep worker config")
    device = pick_device(cfg.sweep.num_gpus > 0)
    backbone = _cached_backbone(cfg, device)
    data = {}
    by_seed: dict[int, list[JobSpec]] = defaultdict(list)
    for j in specs:
        by_seed[j.data_seed].append(j)
    for seed, js in by_seed.items():
        tok = load_tokenized(cfg, backbone, sorted({j.task for j in js}), seed)
        data.update({j.job_id: tok[j.task] for j in js})
    extra = {"backbone": backbone.name}
    kind = specs[0].kind
    if kind == "ist" and cfg.ist.z_init != "normal":  # recorded only when set (rerun.LATE_FIELDS)
        extra["z_init"] = cfg.ist.z_init if specs[0].decoder != "random" else "normal"
    if kind == "msf_eval":
        return _run_msf_eval(cfg, backbone, specs, data, shared, extra)
    from ipt_dist.train.packed import Job, settings_init_params, train_pack, z_init_params

    train_jobs = [Job(job_id=j.job_id, task=j.task, kind=kind, lr=j.lr, seed=j.data_seed, grad_clip=j.grad_clip,
                      params={**j.params(), **extra}) for j in specs]
    if kind == "ist":
        from ipt_dist.modeling.autoencoder import PromptDecoder

        m = shared["meta"]
        if m["hidden"] != backbone.hidden_size:
            raise ValueError(f"MSF decoder d={m['d']} makes prompts of hidden size {m['hidden']}, the backbone "
                             f"{backbone.name} has {backbone.hidden_size}: use the checkpoint of this backbone")
        if specs[0].decoder == "pca":
            from ipt_dist.modeling.pca_decoder import PCADecoder

            decoder = PCADecoder(**shared["decoder"], prompt_len=m["prompt_len"], hidden=m["hidden"])
        else:
            decoder = PromptDecoder(m["d"], m["prompt_len"], m["hidden"], m["mid_dim"])
            decoder.load_state_dict(shared["decoder"])
        settings = pack_settings(cfg, "ist")
        origin = shared.get("z_origin")  # ist.z_init centroid; None: N(0, init_std) as in the reference
        init = None if origin is None else z_init_params(train_jobs, m["d"], settings.init_std, origin)
        results = train_pack(backbone, train_jobs, data, settings, decoder=decoder, init=init,
                             on_progress=_forwarder(progress))
        name = "z"
    else:
        settings = pack_settings(cfg, "pt")
        shape = (cfg.pt.prompt_len, backbone.hidden_size)
        init = None
        if inits:
            rows = []
            for j in train_jobs:
                if j.job_id in inits:
                    p = inits[j.job_id].float()
                    if tuple(p.shape) != shape:
                        raise ValueError(f"job {j.job_id}: initial prompt shape {tuple(p.shape)} != {shape}")
                    rows.append(p)
                else:  # plain PT in the same pack: its own seeded init, as when alone
                    rows.append(settings_init_params(backbone, [j], shape, settings, "pt")[0])
            init = torch.stack(rows)  # (K, L, H)
        results = train_pack(backbone, train_jobs, data, settings, prompt_len=cfg.pt.prompt_len, init=init,
                             on_progress=_forwarder(progress))
        name = "prompt"
    return [{"record": r.record(), "param": r.best_param.contiguous(), "param_name": name} for r in results]


def _run_msf_eval(cfg, backbone, specs: list[JobSpec], data: dict, shared: dict, extra: dict) -> list[dict]:
    """Settings 1-2: score Dec(Enc(P_i)) on dev and test; the 'learned' vector is Enc(P_i)."""
    from ipt_dist.modeling.autoencoder import PromptAutoencoder
    from ipt_dist.train.steps import evaluate_reconstructed

    t0 = time.time()
    m = shared["meta"]
    if m["hidden"] != backbone.hidden_size:
        raise ValueError(f"MSF checkpoint d={m['d']} has hidden size {m['hidden']}, backbone has "
                         f"{backbone.hidden_size}")
    ae = PromptAutoencoder(m["d"], m["prompt_len"], m["hidden"], m["mid_dim"])
    ae.load_state_dict(shared["autoencoder"])
    ae = ae.to(backbone.device).eval()
    prompts = torch.stack([shared["prompts"][j.task] for j in specs]).float()  # (K, L, H)
    tasks = [data[j.job_id] for j in specs]
    bs = cfg.backbone.eval_batch_size
    dev = evaluate_reconstructed(backbone, ae, prompts, tasks, "dev", bs)
    test = evaluate_reconstructed(backbone, ae, prompts, tasks, "test", bs)
    with torch.no_grad():
        z = ae.encode(prompts.to(backbone.device)).cpu()  # (K, d)
    secs = (time.time() - t0) / len(specs)
    out = []
    for k, j in enumerate(specs):
        rec = {"job_id": j.job_id, "task": j.task, "kind": j.kind, "lr": None, "seed": j.data_seed,
               **j.params(), **extra, "metric": tasks[k].info.metric, "best_dev": dev[k], "best_step": None,
               "test": test[k], "dev_curve": [], "loss_curve": [], "seconds": secs}
        out.append({"record": rec, "param": z[k].contiguous(), "param_name": "z"})
    return out


class PackRunner:
    """Body of the Ray actors that run a GPU sweep's packs: one per task slot, each holding its
    GPU(s) and its cached backbone for the whole fan-out, so a pack pays no process start, CUDA
    initialisation or backbone load. (Ray tasks cannot do this on GPUs: a reused task worker keeps
    the CUDA device it first initialised whatever GPU Ray assigns its next task, so Ray gives GPU
    functions a fresh process per call.)"""

    def run(self, cfg_dict: dict, jobs: list[dict], shared: dict | None = None,
            inits: dict[str, torch.Tensor] | None = None, crash: str | None = None,
            progress: tuple | None = None) -> list[dict]:
        return run_pack(cfg_dict, jobs, shared, inits, crash, progress)
