"""`ipt report RUN_DIR`: report.md plus PNG plots of a run directory.

Reads what the stages wrote under RUN_DIR (any part may be missing; its section is skipped):

    pt_sweep/results.jsonl, ist_sweep/{results.jsonl, summary.json, config.yaml, params/...}
    msf/history.jsonl (ipt msf) or msf_dist/history.jsonl (Ray Train MSF)

and writes RUN_DIR/report/{report.md, relative_performance.png, ist_vs_pt.png,
msf_loss.png, ist_vectors.png}. Relative performance is paired per few-shot draw (IST on draw s /
PT on draw s, `ipt_dist.summary.RELATIVE_RULE`), with a 95% bootstrap interval over tasks.
Plots: relative performance vs intrinsic dimension for seen tasks (new data) and unseen tasks,
with the random- and PCA-decoder baselines and the intervals as error bars; per-task IST vs PT
(same draws); MSF LM and reconstruction loss curves; a 2-D projection (PCA) of the learned IST
vectors coloured by task category (the paper's task-similarity view).

Plain Python + matplotlib + torch; MLflow only in `log_report_to_mlflow`.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

import torch

from ipt_dist.artifacts import read_jsonl

log = logging.getLogger(__name__)

SETTING_TITLES = {"ist_seen_new": "seen tasks, new data", "ist_unseen": "unseen tasks",
                  "ist_seen_same": "seen tasks, same data"}
# Line style and marker per IST decoder in the relative-performance plot (colour = setting).
DECODER_STYLES = {"msf": "-", "random": "--", "pca": ":"}
DECODER_MARKERS = {"msf": "o", "random": "x", "pca": "s"}
DECODER_TITLES = {"random": "random decoder", "pca": "PCA decoder"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # headless
    import matplotlib.pyplot as plt

    return plt


def _load_summary(run: Path) -> dict | None:
    path = run / "ist_sweep" / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else None


def plot_relative_performance(summary: dict, path: Path) -> bool:
    """Mean relative performance (IST / PT, paired per draw) vs d, one line per setting and decoder
    (MSF solid, random decoder dashed, PCA decoder dotted), the 95% bootstrap interval over tasks
    as error bars (none with one task)."""
    lines: dict[tuple[str, str], list[tuple[int, float, float | None, float | None]]] = defaultdict(list)
    for s in summary.get("settings", []):
        if s.get("setting") in SETTING_TITLES and s.get("d") and s.get("mean_relative") is not None:
            lines[(s["setting"], s.get("decoder") or "msf")].append(
                (int(s["d"]), float(s["mean_relative"]), s.get("mean_relative_ci_low"),
                 s.get("mean_relative_ci_high")))
    if not lines:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    colours = {"ist_seen_new": "tab:blue", "ist_unseen": "tab:orange", "ist_seen_same": "tab:green"}
    for (setting, decoder), pts in sorted(lines.items(), key=lambda kv: kv[0]):
        pts.sort(key=lambda p: p[0])
        label = SETTING_TITLES[setting] + ("" if decoder == "msf" else f" ({DECODER_TITLES.get(decoder, decoder)})")
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker=DECODER_MARKERS.get(decoder, "o"),
                color=colours[setting], linestyle=DECODER_STYLES.get(decoder, "-."), label=label)
        ci = [p for p in pts if p[2] is not None and p[3] is not None]
        if ci:  # asymmetric bars: the percentile interval need not be centred on the mean
            ax.errorbar([p[0] for p in ci], [100 * p[1] for p in ci], fmt="none", ecolor=colours[setting],
                        capsize=3, alpha=0.7,
                        yerr=[[100 * (p[1] - p[2]) for p in ci], [100 * (p[3] - p[1]) for p in ci]])
    ax.axhline(100, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ds = sorted({p[0] for pts in lines.values() for p in pts})
    ax.set_xticks(ds, [str(d) for d in ds])
    ax.minorticks_off()
    ax.set_xlabel("intrinsic dimension d")
    ax.set_ylabel(f"relative performance IST / PT, {_pairing(summary)} (%)", fontsize=9 if _is_paired(summary)
                  else 7)
    ax.set_title("Recovered PT performance vs intrinsic dimension\n(bars: 95% bootstrap CI over tasks)",
                 fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _best_columns(summary: dict) -> dict[str, str]:
    """setting -> the MSF column with the largest d."""
    best: dict[str, tuple[int, str]] = {}
    for s in summary.get("settings", []):
        if s.get("setting") in ("ist_seen_new", "ist_unseen", "ist_seen_same") and (s.get("decoder") or "msf") == "msf":
            d = int(s.get("d") or 0)
            if s["setting"] not in best or d > best[s["setting"]][0]:
                best[s["setting"]] = (d, s["column"])
    return {k: v[1] for k, v in best.items()}


def _is_paired(summary: dict) -> bool:
    """Summaries written before relative performance was paired per draw have no `<col>/pt` columns."""
    return any(c.endswith("/pt") for c in summary.get("columns", []))


def _pairing(summary: dict) -> str:
    return "same draw" if _is_paired(summary) else "PT averaged over draws: an older, unpaired summary"


def _paired_pt(summary: dict, row: dict, col: str):
    """PT on the same draws as `col` (summaries written before pairing have only the all-draw `pt`)."""
    return row.get(f"{col}/pt") if f"{col}/pt" in summary.get("columns", []) else row.get("pt")


def plot_ist_vs_pt(summary: dict, path: Path) -> bool:
    """Per task: IST score (largest d) against PT on the same draws; the diagonal is full recovery."""
    cols = _best_columns(summary)
    pts = []
    for setting, col in cols.items():
        for r in summary.get("rows", []):
            if r.get(col) is not None and _paired_pt(summary, r, col) is not None:
                pts.append((setting, col, r["task"], float(_paired_pt(summary, r, col)), float(r[col])))
    if not pts:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    markers = {"ist_seen_new": "o", "ist_unseen": "s", "ist_seen_same": "^"}
    for setting in sorted({p[0] for p in pts}):
        sel = [p for p in pts if p[0] == setting]
        ax.scatter([p[3] for p in sel], [p[4] for p in sel], marker=markers[setting],
                   label=f"{SETTING_TITLES[setting]} ({sel[0][1]})", alpha=0.8)
    lim = max(1e-3, max(max(p[3], p[4]) for p in pts)) * 1.05
    ax.plot([0, lim], [0, lim], color="grey", linewidth=0.8)
    ax.set_xlim(0, lim)
    ax.set_ylim(0, lim)
    ax.set_xlabel(f"PT score ({_pairing(summary)})")
    ax.set_ylabel("IST score")
    ax.set_title("Per-task IST vs PT")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_msf_loss(history: list[dict], path: Path) -> bool:
    rows = [r for r in history if "lm_loss" in r and "rec_loss" in r]
    if not rows:
        return False
    plt = _plt()
    fig, ax1 = plt.subplots(figsize=(6, 4))
    steps = [r["step"] for r in rows]
    ax1.plot(steps, [r["lm_loss"] for r in rows], color="tab:blue", label="LM loss")
    ax1.set_xlabel("step")
    ax1.set_ylabel("LM loss", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(steps, [r["rec_loss"] for r in rows], color="tab:red", label="reconstruction (MSE)")
    ax2.set_ylabel("reconstruction MSE", color="tab:red")
    ax2.set_yscale("log")
    ax1.set_title("MSF training losses")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _task_categories(run: Path) -> dict[str, str]:
    """Task -> category from the data's tasks.json (via the sweep's saved config)."""
    cfg_path = run / "ist_sweep" / "config.yaml"
    if not cfg_path.is_file():
        return {}
    import yaml

    data = (yaml.safe_load(cfg_path.read_text()) or {}).get("data", {})
    root = data.get("data_dir") or str(Path(yaml.safe_load(cfg_path.read_text()).get("output_dir", run)) / "demo_data")
    tasks_file = Path(data.get("tasks_file") or Path(root) / "tasks.json")
    if not tasks_file.is_file():
        return {}
    raw = json.loads(tasks_file.read_text())
    records = raw if isinstance(raw, list) else [dict(v, name=k) for k, v in raw.items()]
    return {r["name"]: r.get("subcategory") or r.get("category") or "other" for r in records if "name" in r}


def ist_vectors(run: Path) -> tuple[int, list[dict], torch.Tensor] | None:
    """The learned z of every IST job (MSF decoder) at the largest d: (d, records, Z (N, d))."""
    sdir = run / "ist_sweep"
    recs = [r for r in read_jsonl(sdir / "results.jsonl")
            if r.get("role") == "ist" and (r.get("decoder") or "msf") == "msf" and r.get("param_file")]
    if not recs:
        return None
    d = max(int(r["d"]) for r in recs)
    recs = [r for r in recs if int(r["d"]) == d and (sdir / r["param_file"]).is_file()]
    if len(recs) < 3:
        return None
    from safetensors.torch import load_file

    Z = torch.stack([next(iter(load_file(str(sdir / r["param_file"])).values())).flatten().float() for r in recs])
    return d, recs, Z


def plot_ist_vectors(run: Path, path: Path) -> bool:
    got = ist_vectors(run)
    if got is None:
        return False
    d, recs, Z = got
    Zc = Z - Z.mean(0, keepdim=True)
    if d >= 2:
        _, _, V = torch.linalg.svd(Zc, full_matrices=False)
        xy = Zc @ V[:2].T  # (N, 2) principal components
    else:
        xy = torch.cat([Zc, torch.zeros_like(Zc)], 1)
    cats = _task_categories(run)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    groups = defaultdict(list)
    for i, r in enumerate(recs):
        groups[cats.get(r["task"], "unknown")].append(i)
    for cat, idx in sorted(groups.items()):
        ax.scatter(xy[idx, 0].tolist(), xy[idx, 1].tolist(), label=cat, alpha=0.8)
    seen_label = set()
    for i, r in enumerate(recs):
        if r["task"] not in seen_label:
            ax.annotate(r["task"].replace("demo_", ""), (float(xy[i, 0]), float(xy[i, 1])), fontsize=6, alpha=0.7)
            seen_label.add(r["task"])
    ax.set_title(f"Learned IST vectors z (d={d}), PCA, by task category")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _msf_history(run: Path) -> tuple[str, list[dict]]:
    """(label, rows) of the MSF run in RUN_DIR, or of the largest d under RUN_DIR/msf_d<d>/."""
    per_d = sorted((int(p.name[5:]), p) for p in run.glob("msf_d*") if p.name[5:].isdigit())
    for label, base in [("", run)] + [(f" (d={d})", p) for d, p in reversed(per_d)]:
        for sub in ("msf_dist", "msf"):
            rows = read_jsonl(base / sub / "history.jsonl")
            if rows:
                return label, rows
    return "", []


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _fmt_ci(s: dict) -> str:
    lo, hi = s.get("mean_relative_ci_low"), s.get("mean_relative_ci_high")
    return "" if lo is None or hi is None else f"[{lo:.3f}, {hi:.3f}]"


def make_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report/report.md and the PNGs; returns the report path.

    Raises:
        FileNotFoundError: RUN_DIR does not exist or holds no stage output at all.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist. Fix: pass the --out of a run, "
                                "e.g. ipt report runs/quickstart")
    out = run / "report"
    out.mkdir(parents=True, exist_ok=True)
    summary = _load_summary(run)
    msf_label, history = _msf_history(run)
    if summary is None and not history:
        raise FileNotFoundError(f"{run} holds no ist_sweep/summary.json and no MSF history: nothing to report. "
                                "Run the stages first (ipt quickstart, or the ray_jobs entry points)")
    lines = [f"# IPT report: {run.resolve()}", ""]
    figures = []
    if summary is not None:
        title = ("## Relative performance (IST / PT on the same draw)" if _is_paired(summary) else
                 "## Relative performance (IST / PT averaged over draws: this summary predates pairing; run the "
                 "IST sweep command again to rewrite it with paired ratios)")
        lines += [title, "",
                  ("| setting | d | decoder | tasks | mean score | mean PT | mean relative | 95% CI "
                   "| ratio of means |"),
                  "|---|---|---|---|---|---|---|---|---|"]
        for s in summary.get("settings", []):
            n = _fmt(s.get("n_tasks"))  # mean score is over these; mean PT and the ratios over those with a ratio
            if s.get("n_relative") is not None and s.get("n_relative") != s.get("n_tasks"):
                n += f" ({s['n_relative']} with a ratio)"
            lines.append(f"| {s.get('label')} | {_fmt(s.get('d'))} | {_fmt(s.get('decoder'))} | {n}"
                         f" | {_fmt(s.get('mean_score'))} | {_fmt(s.get('mean_pt'))} | {_fmt(s.get('mean_relative'))}"
                         f" | {_fmt_ci(s)} | {_fmt(s.get('ratio_of_means'))} |")
        # The summary's notes state the rule it was computed with (paired per draw, the interval) and
        # every (task, draw) left without a ratio.
        lines += [""] + [f"- {n}" for n in summary.get("notes", [])]
        lines += ["", ("Paper (random split, BART-base): d=5 recovers 87% (seen tasks, new data) / 65% (unseen); "
                       "d=250: 97% / 83%."), ""]
        if plot_relative_performance(summary, out / "relative_performance.png"):
            figures.append(("Relative performance vs intrinsic dimension", "relative_performance.png"))
        if plot_ist_vs_pt(summary, out / "ist_vs_pt.png"):
            figures.append(("Per-task IST vs PT (largest d)", "ist_vs_pt.png"))
    if history and plot_msf_loss(history, out / "msf_loss.png"):
        figures.append((f"MSF losses{msf_label}", "msf_loss.png"))
    if plot_ist_vectors(run, out / "ist_vectors.png"):
        figures.append(("Learned IST vectors by task category", "ist_vectors.png"))
    for title, name in figures:
        lines += [f"## {title}", "", f"![{title}]({name})", ""]
    if summary is not None:
        cols = list(_best_columns(summary).values())
        head = " | ".join(f"{c} | {c} PT | {c} ratio" for c in cols)
        lines += ["## Per task", "", ("PT: all draws at PT's lr; `<col> PT`: PT on the column's own draws "
                                      "(its denominator); the ratio is the mean over draws of the per-draw ratios."), "",
                  "| task | split | metric | PT | " + head + " |",
                  "|---|---|---|---|" + "---|" * (3 * len(cols))]
        for r in summary.get("rows", []):
            cells = " | ".join(f"{_fmt(r.get(c))} | {_fmt(_paired_pt(summary, r, c))} | {_fmt(r.get(f'{c}/ratio'))}"
                               for c in cols)
            lines.append(f"| {r['task']} | {r.get('split')} | {r.get('metric')} | {_fmt(r.get('pt'))} "
                         f"| {cells} |")
        lines += ["", "Full tables: `ist_sweep/summary.md`, `ist_sweep/summary.csv`.", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines))
    log.info("report written to %s (%d figures)", report, len(figures))
    return report


def log_report_to_mlflow(report: Path, tracking_uri: str, run_ids: list[str]) -> None:
    """Attach report.md and the PNGs to the given MLflow runs (the sweeps' parent runs)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    for run_id in run_ids:
        for f in sorted(report.parent.iterdir()):
            if f.suffix in (".md", ".png"):
                client.log_artifact(run_id, str(f), "report")
