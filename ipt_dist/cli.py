"""`ipt` command line: thin wrappers that load a config and call one driver.

    ipt pt  --config configs/demo.yaml [--out DIR] [--set pt.lr=0.3 ...]
    ipt msf --config configs/demo.yaml
    ipt ist --config configs/demo.yaml
    ipt quickstart [--out DIR] [--data DIR] [--model NAME_OR_PATH] [--set k=v ...]
    ipt report RUN_DIR
    ipt demo-data DIR
    ipt save-tiny tiny-t5 DIR
    ipt export-peft RUN_DIR --task T [--d D] OUT

`export-peft` writes task T's prompt of a run as a Hugging Face PEFT PromptTuning adapter
directory OUT (adapter_config.json, adapter_model.safetensors, ipt_export.json; no peft needed):
the stage-0 prompt P_T, or with `--d D` the IST prompt Dec(z*) of T's best-dev IST job at d.
Load it with `PeftModel.from_pretrained(base_model, OUT)`. Adapter directories are read back as
stage-0 prompts: `<prompts_dir>/<task>/adapter_config.json` in place of `<task>.safetensors`.

A user error (config, data, artifact, backbone name) prints one `error: ...` line and exits 2;
Ctrl-C exits 130 with finished work kept. `--debug` (or IPT_DEBUG=1) shows tracebacks. The console
shows stages, progress, failures and where results are; library messages and warnings go to
<out>/logs/ipt.log (Ray workers': <out>/logs/workers.log); `--verbose` (or IPT_VERBOSE=1) shows
everything on the console (see ipt_dist/console.py).
"""

from __future__ import annotations

import argparse
import json
import sys


def _debug_flag(p: argparse.ArgumentParser) -> None:
    """--debug and --verbose: what every entry point offers."""
    p.add_argument("--debug", action="store_true", help="show tracebacks (also: IPT_DEBUG=1)")
    p.add_argument("--verbose", action="store_true",
                   help="all library and Ray worker output on the console (also: IPT_VERBOSE=1)")


def _common(p: argparse.ArgumentParser) -> None:
    _debug_flag(p)
    p.add_argument("--config", help="YAML config (see configs/); defaults apply when omitted")
    p.add_argument("--out", help="output directory (overrides output_dir)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set pt.lr=0.3 (repeatable)")


def load_cli_config(args):
    from ipt_dist.config import load_config

    overrides = list(args.set)
    if args.out:
        overrides.append(f"output_dir={args.out}")
    return load_config(args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ipt", description="Intrinsic Prompt Tuning at cluster scale")
    _debug_flag(parser)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name, help_ in [("pt", "stage 0: prompt tuning per task (single process)"),
                        ("msf", "stage 1: multi-task subspace finding (single process)"),
                        ("ist", "stage 2: intrinsic subspace tuning (single process)")]:
        _common(sub.add_parser(name, help=help_))
    p = sub.add_parser("quickstart", help="the whole method end to end on one machine (local Ray, embedded MLflow)")
    p.add_argument("--out", default="runs/quickstart", help="output directory (default runs/quickstart)")
    p.add_argument("--config", default=None, help="start from this YAML instead of the built-in quickstart config")
    p.add_argument("--data", default=None, help="task folder (JSONL or CrossFit layout) instead of the demo tasks")
    p.add_argument("--model", default=None, help="backbone: hub name, local path, smollm2-135m, tiny-*, demo-*")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    p.add_argument("--single-process-msf", action="store_true",
                   help="train MSF in this process instead of Ray Train + DeepSpeed workers")
    _debug_flag(p)
    p = sub.add_parser("report", help="report.md + PNG plots of a run directory")
    p.add_argument("run_dir")
    _debug_flag(p)
    p = sub.add_parser("demo-data", help="write the built-in demo tasks (JSONL layout + tasks.json)")
    p.add_argument("dir")
    _debug_flag(p)
    p = sub.add_parser("save-tiny", help="save a tiny random backbone as an HF checkpoint directory")
    p.add_argument("kind", choices=["tiny-t5", "tiny-bart", "tiny-llama", "tiny-gpt2"])
    p.add_argument("dir")
    _debug_flag(p)
    p = sub.add_parser("export-peft", help="one task's prompt of a run as a PEFT PromptTuning adapter directory")
    p.add_argument("run_dir", metavar="RUN_DIR", help="output directory of a run (ipt pt, quickstart, sweeps)")
    p.add_argument("--task", required=True, help="the task whose prompt to export")
    p.add_argument("--d", type=int, default=None,
                   help="the IST prompt Dec(z*) at this intrinsic dimension (default: the stage-0 prompt)")
    p.add_argument("out", metavar="OUT", help="new (or empty) directory for the adapter; never overwritten")
    _debug_flag(p)
    args = parser.parse_args(argv)
    from ipt_dist.errors import debug_requested, run_entry

    return run_entry(lambda: _run(args), debug=args.debug or debug_requested())


def _run(args: argparse.Namespace) -> int:
    from ipt_dist import console
    from ipt_dist.artifacts import ensure_writable_dir
    from ipt_dist.stages.common import setup_logging

    setup_logging(verbose=args.verbose)
    if args.cmd == "demo-data":
        from ipt_dist.data.demo import write_demo_tasks

        ensure_writable_dir(args.dir, "demo-data DIR")
        print("\n".join(write_demo_tasks(args.dir)))
        return 0
    if args.cmd == "save-tiny":
        from ipt_dist.modeling.tiny import save_tiny_backbone

        ensure_writable_dir(args.dir, "save-tiny DIR")
        print(save_tiny_backbone(args.kind, args.dir))
        return 0
    if args.cmd == "export-peft":
        from ipt_dist.peft_io import export_peft

        info = export_peft(args.run_dir, args.task, args.out, d=args.d)
        print(json.dumps(info, indent=1, default=str))
        print(f"wrote the PEFT adapter {args.out}")
        return 0
    if args.cmd == "report":
        from ipt_dist.report import make_report

        print(make_report(args.run_dir))
        return 0
    if args.cmd == "quickstart":
        from ipt_dist.pipeline import quickstart_config, run_pipeline

        log_file = console.log_to(args.out)
        cfg = quickstart_config(args.out, config=args.config, data=args.data, model=args.model, overrides=args.set)
        result = run_pipeline(cfg, distributed_msf=not args.single_process_msf)
        print(_quickstart_summary(result, log_file, verbose=console.is_verbose()))
        if result.get("mlflow_view"):
            db = result["tracking_uri"]
            ui = db.rstrip("/") if db.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
            from ipt_dist.tracking import PIPELINE_VIEW

            what = ("every stage's run with the headline metrics, each sweep expandable into its jobs"
                    if result["mlflow_view"].endswith(PIPELINE_VIEW) else "every stage's run with the headline metrics")
            print(f"then open {ui}{result['mlflow_view']} ({what})")
        return 0
    cfg = load_cli_config(args)
    from ipt_dist.tracking import make_tracker

    ensure_writable_dir(cfg.output_dir)  # --out that is a file, read-only, ...: before anything is written
    console.log_to(cfg.output_dir)

    tracker = make_tracker(cfg, run_name=f"{args.cmd}", tags={"stage": args.cmd, "backbone": cfg.backbone.name_or_path})
    status = "FAILED"
    try:
        if args.cmd == "pt":
            from ipt_dist.stages.pt import run_pt

            result = run_pt(cfg, tracker=tracker)
        elif args.cmd == "msf":
            from ipt_dist.stages.msf import run_msf

            result = run_msf(cfg, tracker=tracker)
        else:
            from ipt_dist.stages.ist import run_ist

            result = run_ist(cfg, tracker=tracker)
        status = "FINISHED"
    finally:
        tracker.end(status)
    print(json.dumps(result, indent=1, default=str)[:4000])
    return 0


def _quickstart_summary(result: dict, log_file, verbose: bool = False) -> str:
    """What the quickstart leaves: counts, the headline table (mean relative performance per setting
    and d), and where the report, the MLflow store and the log are. The full result dict with --verbose."""
    rows: dict[str, dict[str, float]] = {}
    dims: list[str] = []
    for col, value in (result.get("mean_relative") or {}).items():
        setting, _, rest = col.partition("@")
        d, _, decoder = rest.partition(":")
        name = f"{setting}:{decoder}" if decoder else setting
        rows.setdefault(name, {})[d or "-"] = value
        if (d or "-") not in dims:
            dims.append(d or "-")
    jobs = result.get("jobs", {})
    lines = [json.dumps(result, indent=1, default=str)] if verbose else []
    lines.append(f"\ndone: {jobs.get('pt', 0)} PT and {jobs.get('ist', 0)} IST jobs, {jobs.get('failed', 0)} failed")
    if rows:
        width = max(len(n) for n in rows)
        lines.append("mean relative performance (score / PT's on the same draw):")
        lines.append(f"  {'':{width}}  " + "  ".join(f"{d:>6}" for d in dims))
        for name, by_d in rows.items():
            cells = [f"{by_d[d]:6.3f}" if isinstance(by_d.get(d), float) else f"{'':>6}" for d in dims]
            lines.append(f"  {name:{width}}  " + "  ".join(cells))
    db = result["tracking_uri"]
    lines += [f"report: {result['report']}", f"MLflow store: {db}",
              f"open the UI with: mlflow ui --backend-store-uri {db}"]
    if log_file:
        lines.append(f"log (library messages, warnings; --verbose shows them here): {log_file}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
