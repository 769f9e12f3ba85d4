"""Stage 2, single process: train only z in R^d per task through the frozen MSF decoder.

    ipt ist --config configs/demo.yaml
"""

from __future__ import annotations

import logging

from safetensors.torch import save_file

from ipt_dist.artifacts import (
    append_jsonl,
    ensure_writable_dir,
    load_msf_checkpoint,
    load_task_prompts,
    msf_training_tasks,
    read_jsonl,
    read_msf_meta,
)
from ipt_dist.config import ConfigError, IPTConfig
from ipt_dist.data.selection import load_raw, resolve_tasks, tokenize_raw
from ipt_dist.modeling.autoencoder import code_centroid, random_decoder
from ipt_dist.modeling.backbone import build_backbone, resolve_auto_dtype
from ipt_dist.paths import msf_checkpoint_dir, msf_prompts_dir, stage_dir
from ipt_dist.provenance import check_decoder_provenance, file_digest, mismatch_message
from ipt_dist.rerun import claim_stage_dir, recorded_inputs, stage_inputs
from ipt_dist.stages.common import pick_device
from ipt_dist.tracking import log_raw_draws
from ipt_dist.train.packed import Job, PackSettings, train_pack, z_init_params

log = logging.getLogger(__name__)


def ist_settings(cfg: IPTConfig) -> PackSettings:
    """`PackSettings.from_config(cfg, "ist")` (kept for callers of this name)."""
    return PackSettings.from_config(cfg, "ist")


def check_msf_provenance(cfg: IPTConfig, train: list[str]) -> None:
    """The MSF decoder was trained on this config's draw (seen tasks here are setting 3: the same
    data as MSF) with this backbone. The random-decoder baseline uses no MSF weights: not checked.

    Raises:
        FileNotFoundError / ArtifactError: no readable msf.json.
        ConfigError: every mismatched field (checkpoint vs config) and the fix; also a checkpoint
            written before provenance was recorded.
    """
    if cfg.ist.random_decoder:
        return
    ckpt = msf_checkpoint_dir(cfg)
    prov = read_msf_meta(ckpt).get("provenance")
    digests = (prov or {}).get("data", {}).get("train_digest") or {}
    same = load_raw(cfg, [t for t in train if t in digests], cfg.data.data_seed) if digests else {}
    mismatches = check_decoder_provenance(prov, cfg, same, cfg.data.data_seed)
    if not mismatches:
        return
    if prov:
        fix = ("run ipt ist with the checkpoint's values of these fields (its seen tasks train on MSF's own "
               "draw: setting 3; new draws are setting 4 of the IST sweep), or retrain MSF with this config")
    else:
        fix = "retrain MSF with this version (ipt msf), or point ist.msf_checkpoint at a checkpoint that has provenance"
    raise ConfigError(mismatch_message(ckpt, mismatches, fix))


def run_ist(cfg: IPTConfig, tracker=None) -> list[dict]:
    """IST on every task of the config (seen and unseen); results in `<output_dir>/ist/results.jsonl`.

    Raises:
        FileNotFoundError / ArtifactError: MSF checkpoint missing or not matching the backbone.
        ConfigError: the checkpoint was trained on another draw or backbone (`check_msf_provenance`).
    """
    cfg = resolve_auto_dtype(cfg, pick_device().type)  # backbone.dtype "auto" -> what this device runs fast
    out = ensure_writable_dir(stage_dir(cfg, "ist"))
    split = resolve_tasks(cfg)
    check_msf_provenance(cfg, split.train)  # before the backbone loads
    results_file = out / "results.jsonl"
    if results_file.is_file() and recorded_inputs(out) is None:
        raise ConfigError(f"{out} holds IST results written without a record of their inputs (an older ipt_dist): "
                          "they cannot be checked against this config. Fix: run with another --out")
    decoder_file = msf_checkpoint_dir(cfg) / "autoencoder.safetensors"
    if decoder_file.is_file():  # else load_msf_checkpoint below says what to run
        claim_stage_dir(out, "ist", stage_inputs(cfg, "ist", {"decoder": file_digest(decoder_file)}), cfg,
                        has_results=bool(read_jsonl(results_file)))
    backbone = build_backbone(cfg.backbone, pick_device())
    ae, meta = load_msf_checkpoint(msf_checkpoint_dir(cfg), backbone=backbone.name, hidden=backbone.hidden_size,
                                   prompt_len=cfg.pt.prompt_len)
    decoder, origin = ae.decoder, None
    if cfg.ist.random_decoder:  # no encoder: z starts at N(0, init_std) whatever ist.z_init says
        decoder = random_decoder(meta["d"], meta["prompt_len"], meta["hidden"], meta["mid_dim"], seed=cfg.ist.seed)
    elif cfg.ist.z_init == "centroid":  # the mean code Enc(P_i) of the prompts this MSF was trained on
        prompts = load_task_prompts(msf_prompts_dir(cfg), msf_training_tasks(meta, split.train), meta["prompt_len"],
                                    meta["hidden"], backbone.name)
        origin = code_centroid(ae.encode, prompts)
    tag = "random" if cfg.ist.random_decoder else "msf"
    done = {r["job_id"]: r for r in read_jsonl(results_file)}
    jobs = []
    for t in split.all:
        job_id = f"ist-{tag}-d{meta['d']}-{t}-lr{cfg.ist.lr}-s{cfg.ist.seed}-ds{cfg.data.data_seed}"
        if job_id not in done:
            jobs.append(Job(job_id=job_id, task=t, kind="ist", lr=cfg.ist.lr, seed=cfg.ist.seed,
                            grad_clip=cfg.ist.grad_clip,
                            params={"d": meta["d"], "decoder": tag, "data_seed": cfg.data.data_seed,
                                    "seen": t in split.train,
                                    **({"z_init": cfg.ist.z_init} if origin is not None else {})}))
    raw = load_raw(cfg, sorted({j.task for j in jobs})) if jobs else {}
    data = tokenize_raw(cfg, backbone, raw)
    log_raw_draws(tracker, cfg, raw)  # each task's draw as a dataset input of this run (MLflow 3)
    K = cfg.sweep.pack_size
    for s in range(0, len(jobs), K):
        pack = jobs[s : s + K]
        init = None if origin is None else z_init_params(pack, meta["d"], cfg.ist.init_std, origin)
        results = train_pack(backbone, pack, {j.job_id: data[j.task] for j in pack}, ist_settings(cfg),
                             decoder=decoder, init=init, progress=True)
        for r in results:
            (out / "z").mkdir(parents=True, exist_ok=True)
            save_file({"z": r.best_param.contiguous()}, str(out / "z" / f"{r.job.job_id}.safetensors"))
            rec = r.record()
            append_jsonl(results_file, rec)
            done[r.job.job_id] = rec
            if tracker is not None:
                tracker.log_metrics({f"ist/{r.job.task}/dev": r.best_dev, f"ist/{r.job.task}/test": r.test})
            log.info("IST %s (d=%d): best dev %.4f, test %.4f", r.job.task, meta["d"], r.best_dev, r.test)
    return list(done.values())
