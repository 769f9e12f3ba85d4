"""Fixtures of the distributed tests: one local Ray instance per session, tiny MSF configs.

The Ray instance has its own short temp dir (Ray's unix sockets need short paths) and is
shut down by `ray.shutdown()` from the process that started it; `ray stop` is never called,
because it would stop every Ray instance on the machine.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import torch

TRAIN_TASKS = ["demo_sentiment", "demo_topic", "demo_parity"]
PROMPT_LEN, HIDDEN = 4, 64  # tiny-t5 has hidden size 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_mlflow_server(db: Path, port: int, artifacts: Path | None = None) -> subprocess.Popen:
    """A real `mlflow server` on 127.0.0.1:port over the SQLite store `db`; returns once /health answers."""
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri", f"sqlite:///{db}",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if artifacts is not None:
        cmd += ["--artifacts-destination", str(artifacts)]
    log = db.with_name(f"mlflow_server_{port}.log")
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300  # start-up alone takes 10 s idle, minutes on 2 busy cores
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            stop_mlflow_server(proc)
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            raise RuntimeError(f"mlflow server on port {port} did not start; its log:\n{tail}")
        time.sleep(0.5)


def stop_mlflow_server(proc: subprocess.Popen) -> None:
    """Stop the server and its worker processes (its own process group)."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = "needs `chromium` on PATH for a headless render of the MLflow UI (Debian/Ubuntu: apt-get install -y chromium)"


def render_page(url: str, profile: Path, budget_ms: int = 10000) -> str:
    """The DOM of `url` after the page's scripts ran (headless Chromium, a fresh profile so that no saved
    UI state from another render applies; a wide window so that the runs table renders every column)."""
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
           "--window-size=6000,1600", f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=True).stdout


def page_text(dom: str) -> list[str]:
    """The visible text pieces of a dumped DOM, in order."""
    import html
    import re

    body = re.sub(r"<(style|script)\b.*?</\1>", "", dom, flags=re.DOTALL)
    return [t.strip() for t in html.unescape(re.sub(r"<[^>]+>", "\n", body)).split("\n") if t.strip()]


def run_name_cell_has_expander(dom: str, run_id: str) -> bool:
    """Whether the runs table's name cell of `run_id` holds the expand button of a parent with loaded children."""
    import re

    cells = re.findall(r'role="gridcell"[^>]*col-id="attributes.`Run Name`".*?</a>', dom, flags=re.DOTALL)
    mine = [c for c in cells if f"/runs/{run_id}\"" in c]
    return bool(mine) and all("<button" in c for c in mine)


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if ray.is_initialized():  # another fixture of this session started it
        yield ray
        return
    tmp = tempfile.mkdtemp(prefix="iptray_", dir="/tmp")
    # The dashboard must run: Ray Train V2's PlacementGroupCleaner asks the State API (served by the
    # dashboard) whether the train controller is alive, and takes "no answer" for "dead": without
    # the dashboard it removes a live run's placement group and kills its workers mid-training.
    ray.init(address="local", num_cpus=2, _temp_dir=tmp, include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=free_port(), log_to_driver=True)
    try:
        yield ray
    finally:
        ray.shutdown()
        if os.environ.get("IPT_KEEP_RAY_LOGS"):  # debugging: keep the session logs of the test cluster
            print(f"Ray session logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory) -> str:
    """tiny-t5 saved as an ordinary HF checkpoint: loaded with from_pretrained, so under ZeRO-3 it is
    created sharded (deepspeed.zero.Init) with exactly the weights a single process loads."""
    from ipt_dist.modeling.tiny import save_tiny_backbone

    return save_tiny_backbone("tiny-t5", tmp_path_factory.mktemp("tiny_t5"))


def msf_overrides(out: Path, data_dir: Path, *, backbone: str = "tiny-t5",
                  ds_config: str = "ds_configs/zero2.json", steps: int = 4,
                  tracking: bool = False) -> list[str]:
    """A tiny distributed MSF run: a tiny T5, 3 demo tasks, global batch 8 over 2 workers."""
    return [
        f"output_dir={out}",
        f"data.data_dir={data_dir}",
        f"data.tasks=[{', '.join(TRAIN_TASKS)}]",
        "data.max_examples=16",
        f"backbone.name_or_path={backbone}",
        "backbone.dropout=false",
        "backbone.num_beams=1",
        "backbone.max_new_tokens=4",
        "backbone.max_input_len=32",
        "backbone.max_target_len=8",
        "backbone.label_smoothing=0.1",
        "backbone.eval_batch_size=8",
        f"pt.prompt_len={PROMPT_LEN}",
        "msf.d=4",
        "msf.mid_dim=16",
        "msf.alpha=2.0",
        "msf.lr=0.01",
        "msf.batch_size=8",
        f"msf.steps={steps}",
        "msf.eval_every=2",
        "msf.eval_max_examples=5",
        "msf.checkpoint_every=2",
        "msf.warmup_ratio=0.0",
        "msf.grad_clip=0.5",
        "msf.temperature=2.0",
        "distributed.num_workers=2",
        "distributed.use_gpu=false",
        f"distributed.ds_config={ds_config}",
        "distributed.max_failures=1",
        f"tracking.enabled={'true' if tracking else 'false'}",
        "tracking.experiment=ipt-msf-test",
    ]


def write_seeded_prompts(prompts_dir: Path, tasks: list[str] = TRAIN_TASKS, *, backbone: str = "tiny-t5",
                         seed: int = 1234) -> torch.Tensor:
    """Stage-0 prompt files from a seeded tensor (no PT run needed); returns them (T, L, H)."""
    from ipt_dist.artifacts import prompt_path, save_prompt

    g = torch.Generator().manual_seed(seed)
    prompts = torch.randn(len(tasks), PROMPT_LEN, HIDDEN, generator=g) * 0.5
    for t, p in zip(tasks, prompts, strict=True):
        save_prompt(prompt_path(prompts_dir, t), p, backbone=backbone, task=t)
    return prompts
