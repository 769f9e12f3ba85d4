"""Sweep summaries from result records: pure Python (no torch, ray or mlflow), reused by `ipt report`.

Input is what the sweeps write, one dict per job (`<sweep_dir>/results.jsonl`)::

    {"job_id", "task", "kind", "role", "setting", "d", "decoder", "data_seed", "lr", "seen",
     "metric", "best_dev", "test", ...}

`role` says what a record is for: `ist` (settings 3-5, plus the baselines when `decoder` is
`"random"` or `"pca"`), `msf_eval` (settings 1-2), `pt` (stage-0 PT, the denominator of relative
performance), `pt_control` (plain PT next to IPT-initialised PT) and `ipt_pt` (PT started from
Dec(z*)).

Selection rule (the paper does not state its averaging, so both numbers are reported): for each
setting and task the learning rate with the best *mean dev over data seeds* is chosen, and the
reported score is the mean test over seeds at that learning rate. Relative performance is, per
task, IST score / PT score; a setting's mean relative performance is the mean of those ratios,
with the ratio of means beside it.

    summary = summarize_ist(records, pt_records, seen=train_tasks, unseen=unseen_tasks)
    Path("summary.md").write_text(summary.to_markdown())
    summary.write_csv("summary.csv")
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "SETTING_LABELS",
    "Selection",
    "Summary",
    "column_name",
    "mean_std",
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
    return Selection(lr=best_key, dev=dev, test=test, test_std=test_std, n_seeds=n,
                     job_ids=sorted(r["job_id"] for r in group if "job_id" in r))


def column_name(setting: str, d: int | None, decoder: str | None = "msf") -> str:
    """`ist_seen_new@d250`; a baseline decoder is a suffix: `ist_seen_new@d250:random`, `...:pca`."""
    name = setting if d is None else f"{setting}@d{d}"
    return name if decoder in (None, "msf") else f"{name}:{decoder}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


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
    order = list(seen or []) + [t for t in (unseen or []) if t not in (seen or [])]
    for r in records:
        if r.get("task") is not None and r["task"] not in order:
            order.append(r["task"])
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
    """The IST sweep table: per task PT score, each setting's score and ratio, baselines, IPT-init PT.

    Args:
        records: the IST sweep's results (roles ist, msf_eval, pt_control, ipt_pt).
        pt_records: stage-0 PT results (role pt), the denominator of relative performance.
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
        if col_meta[c]["setting"] in ("ipt_pt", "pt_control"):
            columns += [c, f"{c}/std"]
        else:
            columns += [c, f"{c}/ratio", f"{c}/lr"]

    rows = []
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
                row[f"{c}/ratio"] = _ratio(s.test, row["pt"])
                row[f"{c}/lr"] = s.lr
        rows.append(row)

    settings = []
    for c in setting_cols:
        m = col_meta[c]
        have = [r for r in rows if r.get(c) is not None]
        both = [r for r in have if r["pt"] is not None and r["pt"] != 0]
        mean_score, _, n = mean_std(r[c] for r in have)
        mean_rel, _, _ = mean_std(r[c] / r["pt"] for r in both)
        ratio_of_means = _ratio(mean_std(r[c] for r in both)[0], mean_std(r["pt"] for r in both)[0])
        spread, _, _ = mean_std(r.get(f"{c}/std") for r in have)
        label = SETTING_LABELS.get(m["setting"]) or _EXTRA_LABELS.get(m["setting"], m["setting"])
        settings.append({"column": c, "setting": m["setting"], "label": label,
                         "d": m["d"], "decoder": m["decoder"], "n_tasks": n, "mean_score": mean_score,
                         "mean_pt": mean_std(r["pt"] for r in both)[0], "mean_relative": mean_rel,
                         "ratio_of_means": ratio_of_means, "mean_std_over_seeds": spread})
    setting_columns = ["column", "label", "d", "decoder", "n_tasks", "mean_score", "mean_pt", "mean_relative",
                       "ratio_of_means", "mean_std_over_seeds"]
    notes = ["score = mean test over data seeds at the lr with the best mean dev (per setting and task)",
             ("mean_relative = mean over tasks of score/PT; "
              "ratio_of_means = mean score / mean PT over the same tasks")]
    missing_pt = [t for t in tasks if t not in pt_sel]
    if missing_pt:
        notes.append(f"no PT score for {', '.join(missing_pt)}: their ratios are blank")
    return Summary(stage="ist", columns=columns, rows=rows, setting_columns=setting_columns,
                   settings=settings, notes=notes)
