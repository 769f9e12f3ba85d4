"""Where an MSF autoencoder puts the training prompts: per d, the norms of the codes Enc(P_i), of
Dec(0) (where IST's z ~ N(0, 0.02) starts), of Dec(Enc(P_i)) and its distance to P_i, against the
prompts' own norm and spread. Reads a quality run's prompts/ and msf_d<d>/msf; trains nothing.

    PYTHONPATH=. python bench/msf_codes.py --run runs/quality_cpu --dims 5 50 250
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a quality run's --out (prompts/, msf_d<d>/msf)")
    ap.add_argument("--dims", type=int, nargs="+", required=True)
    args = ap.parse_args(argv)
    run = Path(args.run)
    missing = [d for d in args.dims if not (run / f"msf_d{d}" / "msf" / "msf.json").is_file()]
    if missing:
        print(f"error: no MSF checkpoint for d={missing} under {run} (msf_d<d>/msf/msf.json). Fix: pass the "
              "--run of a quality run and dims it trained", file=sys.stderr)
        return 2

    import torch

    from ipt_dist.artifacts import load_msf_checkpoint, load_task_prompts
    from ipt_dist.modeling.autoencoder import code_centroid

    print("| d | mean norm of Enc(P_i) | centroid code norm | Dec(0) norm | Dec(Enc(P_i)) norm | "
          "error Dec(Enc(P_i)) - P_i | P_i norm | P_i - mean P |")
    print("|---|---|---|---|---|---|---|---|")
    for d in args.dims:
        ae, meta = load_msf_checkpoint(run / f"msf_d{d}" / "msf")
        P = load_task_prompts(run / "prompts", list(meta["tasks"]), meta["prompt_len"], meta["hidden"]).float()
        with torch.no_grad():
            z = ae.encode(P)
            rec = ae.decoder(z)
            dec0 = ae.decoder(torch.zeros(1, d))

        def norm(t):
            return t.flatten(1).norm(dim=1)

        print(f"| {d} | {z.norm(dim=1).mean():.2f} | {code_centroid(ae.encode, P).norm():.2f} | "
              f"{norm(dec0).item():.1f} | {norm(rec).mean():.1f} | {norm(rec - P).mean():.1f} | "
              f"{norm(P).mean():.1f} | {norm(P - P.mean(0)).mean():.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
