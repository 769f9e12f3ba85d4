"""IST calibration: how far z gets within a schedule, against the level a good z reaches.

For a finished MSF checkpoint of a quality run (`bench/quality.py --out RUN`), on a few training
tasks and their MSF draw (setting 3): the dev curve of IST (z ~ N(0, init_std), Dec frozen) every
`--eval-every` steps for each lr, test at best dev, beside

  - PT on the same task and draw (the denominator of relative performance), and
  - setting 1, Dec(Enc(P_i)): the prompt MSF itself gives the task, which a well-found z can match.

If IST stays far below setting 1 at the schedule's end and is still rising, the schedule (steps,
lr) limits IST, not the subspace. All jobs train as one pack on the run's backbone.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python bench/ist_calibration.py --run /root/ipt_runs/quality_cpu \
        --d 50 --tasks gym__sms_spam gym__blimp-ellipsis_n_bar_2 --lrs 0.1 0.3 1.0 --steps 96 --eval-every 16
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a quality run's --out (pt_sweep/, prompts/, msf_d<d>/)")
    ap.add_argument("--d", type=int, required=True)
    ap.add_argument("--tasks", nargs="+", required=True, help="training tasks of that MSF")
    ap.add_argument("--lrs", type=float, nargs="+", default=[0.1, 0.3, 1.0])
    ap.add_argument("--steps", type=int, default=96)
    ap.add_argument("--eval-every", type=int, default=16)
    ap.add_argument("--json", default=None, help="write the rows here")
    ap.add_argument("--init", choices=["normal", "centroid"], default="normal",
                    help="z's start (ist.z_init): N(0, ist.init_std) (reference) or the mean code Enc(P_i) of the "
                         "MSF's training tasks plus that noise")
    args = ap.parse_args(argv)

    import torch

    from ipt_dist.artifacts import find_prompt, load_msf_checkpoint, load_task_prompts
    from ipt_dist.config import load_config
    from ipt_dist.data.selection import load_tokenized
    from ipt_dist.modeling.autoencoder import code_centroid
    from ipt_dist.modeling.backbone import build_backbone
    from ipt_dist.stages.common import pick_device, setup_logging
    from ipt_dist.train.packed import Job, PackSettings, train_pack, z_init_params
    from ipt_dist.train.steps import evaluate_reconstructed

    setup_logging()
    run = Path(args.run)
    cfg = load_config(str(run / "pt_sweep" / "config.yaml"),
                      [f"ist.steps={args.steps}", f"ist.eval_every={args.eval_every}"])
    seed = cfg.sweep.data_seeds[0]  # the draw MSF trained on (setting 3)
    with open(run / "pt_sweep" / "results.jsonl") as f:
        rows_pt = [json.loads(line) for line in f]
    pt = {r["task"]: r["test"] for r in rows_pt if r["data_seed"] == seed and r["task"] in args.tasks}
    missing = [t for t in args.tasks if t not in pt or not find_prompt(run / "prompts", t).exists()]
    if missing:  # checked before the backbone loads and anything trains
        print(f"error: {', '.join(missing)}: no PT result for draw {seed} in {run / 'pt_sweep'} or no prompt in "
              f"{run / 'prompts'}. Fix: pick training tasks of that run", file=sys.stderr)
        return 2
    backbone = build_backbone(cfg.backbone, pick_device())
    ae, meta = load_msf_checkpoint(run / f"msf_d{args.d}" / "msf", backbone=backbone.name)
    ae.eval()
    data = load_tokenized(cfg, backbone, args.tasks, seed)
    t0 = time.time()
    prompts = load_task_prompts(run / "prompts", args.tasks, meta["prompt_len"], meta["hidden"], backbone.name)
    tasks = [data[t] for t in args.tasks]
    with torch.no_grad():  # setting 1: Dec(Enc(P_i)), as the sweep's msf_eval jobs score it
        s1_dev, s1_test = (evaluate_reconstructed(backbone, ae, prompts, tasks, split, cfg.backbone.eval_batch_size)
                           for split in ("dev", "test"))
    jobs = [Job(job_id=f"cal-{t}-{lr}", task=t, kind="ist", lr=lr, seed=cfg.ist.seed, grad_clip=cfg.ist.grad_clip,
                params={"d": args.d}) for t in args.tasks for lr in args.lrs]
    settings = PackSettings.from_config(cfg, "ist")
    origin = None
    if args.init == "centroid":  # as the sweep does with ist.z_init: centroid
        origin = code_centroid(ae.encode, load_task_prompts(run / "prompts", meta["tasks"], meta["prompt_len"],
                                                            meta["hidden"], backbone.name))
    init = z_init_params(jobs, args.d, settings.init_std, origin)
    results = train_pack(backbone, jobs, {j.job_id: data[j.task] for j in jobs}, settings, decoder=ae.decoder,
                         init=init, progress=True)
    rows = []
    for r in results:
        k = args.tasks.index(r.job.task)
        rows.append({"task": r.job.task, "d": args.d, "lr": r.job.lr, "steps": args.steps, "metric": r.metric,
                     "pt_test": pt.get(r.job.task), "setting1_dev": s1_dev[k], "setting1_test": s1_test[k],
                     "ist_dev_curve": r.dev_curve, "ist_best_step": r.best_step, "ist_test": r.test})
    if args.json:  # before printing: a table problem never loses the measurement
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    print(f"\nIST calibration, d={args.d}, draw {seed}, {args.steps} steps x batch {cfg.ist.batch_size}, "
          f"dev every {args.eval_every} ({time.time() - t0:.0f} s)")
    print("| task | lr | PT test | setting 1 dev / test | IST dev curve | IST best step | IST test |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        curve = " ".join(f"{s:.2f}" for _, s in row["ist_dev_curve"])
        print(f"| {row['task']} | {row['lr']} | {row['pt_test']:.3f} | {row['setting1_dev']:.3f} / "
              f"{row['setting1_test']:.3f} | {curve} | {row['ist_best_step']} | {row['ist_test']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
