"""Sweep summaries from result records: pure Python (no torch, ray or mlflow), reused by `ipt report`.

Input is what the sweeps write, one dict per job (`<sweep_dir>/results.jsonl`)::

    {"job_id", "task", "kind", "role", "setting", "d", "decoder", "data_seed", "lr", "seen",
     "metric", "best_dev", "test", ...}

`role` says what a record is for: `ist` (settings 3-5, plus the baselines when `decoder` is
`"random"` or `"pca"`), `msf_eval` (settings 1-2), `pt` (stage-0 PT, the denominator of relative
performance), `pt_control` (plain PT next to IPT-initialised PT) and `ipt_pt` (PT started from
Dec(z*)).

Selection rule: for each setting and task the learning rate with the best *mean dev over data
seeds* (few-shot draws) is chosen, and the reported score is the mean test over draws at that lr.
PT's lr is chosen per task by the same rule over its own draws.

Relative performance is paired per draw (`RELATIVE_RULE`): on each draw s, score on s / PT's test
on s (PT trained on the same draw, at PT's chosen lr); per task the mean of those ratios over its
draws; per setting column the mean over tasks (`mean_relative`) with a 95% bootstrap interval over
tasks, and the ratio of means beside it (the paper does not state its averaging). Dividing by PT
averaged over other draws would add PT's draw-to-draw variance to every ratio.

    summary = summarize_ist(records, pt_records, seen=train_tasks, unseen=unseen_tasks)
    Path("summary.md").write_text(summary.to_markdown())
    summary.write_csv("summary.csv")
"""

from __future__ import annotations

import csv
import math
import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BOOTSTRAP_RESAMPLES",
    "BOOTSTRAP_SEED",
    "RELATIVE_RULE",
    "SETTING_LABELS",
    "Selection",
    "Summary",
    "bootstrap_mean_ci",
    "column_name",
    "mean_std",
    "pt_scores_by_draw",
    "select_best_lr",
    "summarize_ist",
    "summarize_pt",
]

# The five evaluation settings of the paper, in its order.
SETTING_LABELS = {
    "msf_seen": "1 MSF, training tasks (Dec(Enc(P_i)))",
    "msf_unseen": "2 MSF, unseen tasks (Dec(Enc(P_i)))",
    "ist_seen_same": "3 IST, training tasks, same data",
    "ist_seen_new": "4 IST, training tasks, new data",
    "ist_unseen": "5 IST, unseen tasks",
}
_EXTRA_LABELS = {"pt_control": "PT, random init (beside IPT-init PT)",
                 "ipt_pt": "PT initialised from Dec(z*)"}
_SETTING_ORDER = list(SETTING_LABELS)

# Bootstrap over tasks: fixed seed (the same summary from the same results), percentile interval.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
RELATIVE_RULE = (
    "relative performance is paired per few-shot draw: ratio = score on draw s / PT test on draw s "
    "(PT trained on the same task and draw s, at PT's lr with the best mean dev over its draws; the column's "
    "lr is chosen the same way per setting and task). <col>/ratio = mean over the task's draws of those "
    "ratios; <col>/pt = mean PT test over the same draws. mean_relative = mean over tasks of <col>/ratio, "
    f"with a 95% percentile bootstrap interval over tasks ({BOOTSTRAP_RESAMPLES} resamples of the tasks with "
    f"replacement, seed {BOOTSTRAP_SEED}; blank with fewer than 2 tasks); ratio_of_means = mean over tasks "
    "of the score on the paired draws / mean over tasks of <col>/pt. A draw whose PT test is <= 0 or "
    "missing has no ratio (the notes list such draws)")


def _num(v: Any) -> float | None:
    """A finite float or None (JSONL stores NaN as null)."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def mean_std(values: Iterable[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, population std, n) over the finite values; (None, None, 0) when there are none."""
    xs = [x for x in (_num(v) for v in values) if x is not None]
    if not xs:
        return None, None, 0
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs)), len(xs)


@dataclass
class Selection:
    """The chosen learning rate of one (setting, task) group and the scores at that lr."""

    lr: float | None
    dev: float | None  # mean dev over seeds at `lr`
    test: float | None  # mean test over seeds at `lr`
    test_std: float | None  # std of test over seeds at `lr` (the spread)
    n_seeds: int
    job_ids: list[str] = field(default_factory=list)
    # data seed (few-shot draw) -> mean test of that draw at `lr` (None: no finite test on it)
    test_by_draw: dict[Any, float | None] = field(default_factory=dict)


def select_best_lr(records: list[dict]) -> Selection:
    """Pick the lr with the best mean dev over seeds; ties go to the smaller lr.

    Records without a dev score count as -inf for the choice (never chosen over a scored lr).
    """
    by_lr: dict[Any, list[dict]] = defaultdict(list)
    for r in records:
        by_lr[_num(r.get("lr"))].append(r)
    best_key, best_dev = None, -math.inf
    for lr in sorted(by_lr, key=lambda x: (x is None, x if x is not None else 0.0)):
        dev, _, n = mean_std(r.get("best_dev") for r in by_lr[lr])
        score = dev if n else -math.inf
        if best_key is None or score > best_dev:
            best_key, best_dev = lr, score
    group = by_lr[best_key] if by_lr else []
    dev, _, _ = mean_std(r.get("best_dev") for r in group)
    test, test_std, n = mean_std(r.get("test") for r in group)
    by_draw: dict[Any, list[dict]] = defaultdict(list)
    for r in group:
        by_draw[r.get("data_seed")].append(r)
    return Selection(lr=best_key, dev=dev, test=test, test_std=test_std, n_seeds=n,
                     job_ids=sorted(r["job_id"] for r in group if "job_id" in r),
                     test_by_draw={s: mean_std(r.get("test") for r in by_draw[s])[0]
                                   for s in _draw_order(by_draw)})


def _draw_order(draws: Iterable[Any]) -> list[Any]:
    """A fixed order of data seeds (None last), so sums and notes do not depend on record order."""
    return sorted(draws, key=lambda s: (s is None, str(s)))


def pt_scores_by_draw(pt_records: list[dict]) -> dict[tuple[str, Any], float | None]:
    """(task, data seed) -> PT's test on that draw at PT's lr for the task (best mean dev over draws).

    A key is present when PT has a result on that draw at that lr; its value is None when the
    test score is not finite. These are the denominators of relative performance.
    """
    return {(t, s): v for t, sel in _pt_by_task(pt_records).items() for s, v in sel.test_by_draw.items()}


def bootstrap_mean_ci(values: list[float], *, resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED, level: float = 0.95) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of the mean of `values` (resampled with replacement).

    (None, None) with fewer than 2 values: one task gives no interval, not a zero-width one.
    """
    xs = [x for x in (_num(v) for v in values) if x is not None]
    n = len(xs)
    if n < 2:
        return None, None
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(xs, k=n)) / n for _ in range(resamples))
    return _percentile(means, (1 - level) / 2), _percentile(means, (1 + level) / 2)


def _percentile(sorted_xs: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    h = (len(sorted_xs) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (h - lo) * (sorted_xs[hi] - sorted_xs[lo])


def column_name(setting: str, d: int | None, decoder: str | None = "msf") -> str:
    """`ist_seen_new@d250`; a baseline decoder is a suffix: `ist_seen_new@d250:random`, `...:pca`."""
    name = setting if d is None else f"{setting}@d{d}"
    return name if decoder in (None, "msf") else f"{name}:{decoder}"


def relative(score: float | None, pt: float | None) -> float | None:
    """score / PT, or None where PT is missing or <= 0 (a ratio to a PT at or below 0, e.g. a negative
    Matthews correlation, has no meaning): the one rule for the summary and MLflow's `relative`."""
    if score is None or pt is None or pt <= 0:
        return None
    return score / pt


@dataclass
class Summary:
    """A per-task table (one row per task) plus one aggregate row per setting column."""

    stage: str
    columns: list[str]  # per-task table columns, in order
    rows: list[dict]  # one per task
    setting_columns: list[str]
    settings: list[dict]  # aggregate rows: mean relative performance etc.
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"stage": self.stage, "columns": self.columns, "rows": self.rows,
                "setting_columns": self.setting_columns, "settings": self.settings, "notes": self.notes}

    @classmethod
    def from_dict(cls, data: dict) -> Summary:
        return cls(**data)

    def row(self, task: str) -> dict:
        for r in self.rows:
            if r["task"] == task:
                return r
        raise KeyError(f"no row for task {task!r}; tasks: {[r['task'] for r in self.rows]}")

    def write_csv(self, path: str | Path, settings_path: str | Path | None = None) -> None:
        """Per-task table to `path`; the aggregate table to `settings_path` when given."""
        _write_csv(Path(path), self.columns, self.rows)
        if settings_path is not None:
            _write_csv(Path(settings_path), self.setting_columns, self.settings)

    def to_markdown(self) -> str:
        title = {"ist": "IST sweep summary", "pt": "PT sweep summary"}.get(self.stage, self.stage)
        out = [f"# {title}", ""]
        if self.settings:
            out += ["## Per setting", "", _md_table(self.setting_columns, self.settings), ""]
        # The markdown leaves out the chosen-lr columns to stay readable; the CSV has them all.
        md_cols = [c for c in self.columns if not c.endswith("/lr") and c != "pt_lr"]
        out += ["## Per task", "", _md_table(md_cols, self.rows), ""]
        if self.notes:
            out += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
        return "\n".join(out)


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}"
    return str(v)


def _md_table(columns: list[str], rows: list[dict]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else r.get(c)) for c in columns})


def _task_order(records: Iterable[dict], seen: list[str] | None, unseen: list[str] | None) -> list[str]:
    order = list(dict.fromkeys([*(seen or []), *(unseen or [])]))
    known = set(order)  # a set: `in order` on the list was O(records x tasks)
    for r in records:
        t = r.get("task")
        if t is not None and t not in known:
            known.add(t)
            order.append(t)
    return order


def _pt_by_task(pt_records: list[dict]) -> dict[str, Selection]:
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in pt_records:
        by_task[r["task"]].append(r)
    return {t: select_best_lr(rs) for t, rs in by_task.items()}


def summarize_pt(records: list[dict], seen: list[str] | None = None,
                 unseen: list[str] | None = None) -> Summary:
    """Stage-0 sweep: per task the best lr (by mean dev over seeds), dev, test and spread over seeds."""
    pt = [r for r in records if r.get("role", "pt") == "pt"]
    sel = _pt_by_task(pt)
    metric = {r["task"]: r.get("metric") for r in pt}
    unseen_set = set(unseen or [])
    rows = []
    for t in _task_order(pt, seen, unseen):
        s = sel.get(t)
        rows.append({"task": t, "split": "unseen" if t in unseen_set else "seen", "metric": metric.get(t),
                     "best_lr": s.lr if s else None, "dev": s.dev if s else None,
                     "test": s.test if s else None, "test_std": s.test_std if s else None,
                     "n_seeds": s.n_seeds if s else 0})
    columns = ["task", "split", "metric", "best_lr", "dev", "test", "test_std", "n_seeds"]
    mean_test, _, n = mean_std(r["test"] for r in rows)
    settings = [{"column": "pt", "n_tasks": n, "mean_test": mean_test}]
    return Summary(stage="pt", columns=columns, rows=rows, setting_columns=["column", "n_tasks", "mean_test"],
                   settings=settings)


def summarize_ist(records: list[dict], pt_records: list[dict] | None = None, seen: list[str] | None = None,
                  unseen: list[str] | None = None) -> Summary:
    """The IST sweep table: per task PT score, each setting's score and paired ratio, baselines, IPT-init PT.

    Args:
        records: the IST sweep's results (roles ist, msf_eval, pt_control, ipt_pt).
        pt_records: stage-0 PT results (role pt) with their `data_seed`: PT on draw s is the
            denominator of every score on draw s (`RELATIVE_RULE`).
        seen / unseen: task order and split labels (tasks only in `records` are appended).
    """
    pt_records = [r for r in (pt_records or []) if r.get("role", "pt") == "pt"]
    pt_sel = _pt_by_task(pt_records)
    unseen_set = set(unseen or [])
    metric: dict[str, Any] = {r["task"]: r.get("metric") for r in pt_records}
    metric.update({r["task"]: r.get("metric") for r in records if r.get("metric")})

    # (column, task) -> records; one column per (setting, d, decoder) plus IPT-init PT per d.
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    col_meta: dict[str, dict] = {}
    for r in records:
        role = r.get("role")
        if role in ("ist", "msf_eval"):
            col = column_name(r["setting"], r.get("d"), r.get("decoder", "msf"))
            col_meta.setdefault(col, {"setting": r["setting"], "d": r.get("d"),
                                      "decoder": r.get("decoder", "msf")})
        elif role == "ipt_pt":
            col = f"ipt_pt@d{r.get('d')}"
            col_meta.setdefault(col, {"setting": "ipt_pt", "d": r.get("d"), "decoder": "msf"})
        elif role == "pt_control":
            col = "pt_control"
            col_meta.setdefault(col, {"setting": "pt_control", "d": None, "decoder": None})
        else:
            continue
        groups[(col, r["task"])].append(r)

    def col_key(c: str):
        m = col_meta[c]
        s = m["setting"]
        rank = _SETTING_ORDER.index(s) if s in _SETTING_ORDER else len(_SETTING_ORDER) + (s == "ipt_pt")
        return (m["decoder"] not in (None, "msf"), m["decoder"] or "", rank, m["d"] or 0)  # baselines last

    setting_cols = sorted(col_meta, key=col_key)
    tasks = _task_order(records + pt_records, seen, unseen)
    columns = ["task", "split", "metric", "pt", "pt_std", "pt_lr"]
    for c in setting_cols:
        # Every column is paired with PT on its own draws: /pt is that denominator (settings 1-3 use
        # data_seeds[0], setting 4 the others), so it differs from the all-draw `pt` column.
        extra = ["/std"] if col_meta[c]["setting"] in ("ipt_pt", "pt_control") else ["/lr"]
        columns += [c, f"{c}/ratio", f"{c}/pt"] + [f"{c}{e}" for e in extra]

    rows = []
    paired_score: dict[tuple[str, str], float] = {}  # (column, task) -> mean score on the paired draws
    unpaired: dict[str, list[str]] = defaultdict(list)  # column -> "task@draw" without a PT denominator
    for t in tasks:
        p = pt_sel.get(t)
        row: dict[str, Any] = {"task": t, "split": "unseen" if t in unseen_set else "seen",
                               "metric": metric.get(t), "pt": p.test if p else None,
                               "pt_std": p.test_std if p else None, "pt_lr": p.lr if p else None}
        for c in setting_cols:
            rs = groups.get((c, t))
            if not rs:
                continue
            s = select_best_lr(rs)
            row[c] = s.test
            if col_meta[c]["setting"] in ("ipt_pt", "pt_control"):
                row[f"{c}/std"] = s.test_std
            else:
                row[f"{c}/lr"] = s.lr
            pairs, draws = [], []  # (score on draw s, PT test on draw s); the draws paired
            for draw, score in s.test_by_draw.items():
                if score is None:
                    continue
                den = p.test_by_draw.get(draw) if p else None
                if relative(score, den) is None:
                    if p is not None:  # a task without any PT result has its own note
                        unpaired[c].append(f"{t}@{draw}")
                    continue
                pairs.append((score, den))
                draws.append(draw)
            row[f"{c}/ratio"] = mean_std(a / b for a, b in pairs)[0]
            row[f"{c}/draws"] = sorted(draws, key=str)  # which draws the ratio averages (comparisons check them)
            row[f"{c}/pt"] = mean_std(b for _, b in pairs)[0]
            if pairs:
                paired_score[(c, t)] = mean_std(a for a, _ in pairs)[0]
        rows.append(row)

    settings = []
    for c in setting_cols:
        m = col_meta[c]
        have = [r for r in rows if r.get(c) is not None]
        paired = [r for r in rows if r.get(f"{c}/ratio") is not None]
        ratios = [r[f"{c}/ratio"] for r in paired]
        mean_score, _, n = mean_std(r[c] for r in have)
        mean_rel, _, n_rel = mean_std(ratios)
        ci_low, ci_high = bootstrap_mean_ci(ratios)
        mean_pt = mean_std(r[f"{c}/pt"] for r in paired)[0]
        ratio_of_means = relative(mean_std(paired_score[(c, r["task"])] for r in paired)[0], mean_pt)
        spread, _, _ = mean_std(r.get(f"{c}/std") for r in have)
        label = SETTING_LABELS.get(m["setting"]) or _EXTRA_LABELS.get(m["setting"], m["setting"])
        settings.append({"column": c, "setting": m["setting"], "label": label,
                         "d": m["d"], "decoder": m["decoder"], "n_tasks": n, "mean_score": mean_score,
                         "mean_pt": mean_pt, "mean_relative": mean_rel, "mean_relative_ci_low": ci_low,
                         "mean_relative_ci_high": ci_high, "n_relative": n_rel,
                         "ratio_of_means": ratio_of_means, "mean_std_over_seeds": spread})
    setting_columns = ["column", "label", "d", "decoder", "n_tasks", "mean_score", "mean_pt", "mean_relative",
                       "mean_relative_ci_low", "mean_relative_ci_high", "n_relative", "ratio_of_means",
                       "mean_std_over_seeds"]
    notes = ["score = mean test over data seeds at the lr with the best mean dev (per setting and task)",
             RELATIVE_RULE,
             ("n_tasks = tasks with a score; n_relative = tasks with at least one paired ratio "
              "(mean_relative, its interval and ratio_of_means are over these)")]
    missing_pt = [t for t in tasks if t not in pt_sel]
    if missing_pt:
        notes.append(f"no PT score for {', '.join(missing_pt)}: their ratios are blank")
    for c in setting_cols:
        if unpaired[c]:
            lost = [r["task"] for r in rows if r.get(c) is not None and r["task"] in pt_sel
                    and r.get(f"{c}/ratio") is None]
            notes.append(f"{c}: no ratio on {', '.join(unpaired[c])} (PT test <= 0 or missing on that draw)"
                         + (f"; left out of its averages: {', '.join(lost)}" if lost else ""))
    return Summary(stage="ist", columns=columns, rows=rows, setting_columns=setting_columns,
                   settings=settings, notes=notes)
