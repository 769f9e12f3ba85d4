"""What a pack needs besides its jobs, built on the driver: the frozen model part it shares with
every pack of its kind and decoder (the MSF decoder, the random or PCA baseline decoder, or the
whole autoencoder and the stage-0 prompts for settings 1-2), and the initial prompts Dec(z*) of
IPT-initialised PT jobs.

Plain Python: the fan-out puts each shared part into Ray's object store once (`shared_key` says
which packs share it); tests build them without Ray.
"""

from __future__ import annotations

import torch

from ipt_dist.artifacts import find_prompt, load_msf_checkpoint, load_prompt, load_task_prompts
from ipt_dist.sweep.grid import pca_tasks
from ipt_dist.sweep.jobs import JobSpec, SweepPlan, prompts_dir
from ipt_dist.sweep.results import load_param

__all__ = ["PackInputs"]


class PackInputs:
    """The model inputs of the packs of one plan; each MSF checkpoint is loaded once."""

    def __init__(self, plan: SweepPlan) -> None:
        self.plan = plan
        self._autoencoders: dict[int, torch.nn.Module] = {}

    def autoencoder(self, d: int):
        if d not in self._autoencoders:
            info = self.plan.decoders[d]
            ae, _ = load_msf_checkpoint(info.path, prompt_len=self.plan.cfg.pt.prompt_len)
            self._autoencoders[d] = ae.eval()
        return self._autoencoders[d]

    @staticmethod
    def shared_key(job: JobSpec) -> tuple | None:
        """Packs with the same key share one frozen model part; None: a PT pack needs none."""
        return None if job.kind == "pt" else (job.kind, job.d, job.decoder)

    def shared_part(self, job: JobSpec) -> dict:
        """The frozen model part of `job`'s pack: {"meta", "decoder", "z_origin"} for IST (MSF, random or
        PCA decoder; `z_origin` (d,): where z starts with `ist.z_init: centroid`, else None),
        {"meta", "autoencoder", "prompts"} for settings 1-2."""
        plan = self.plan
        meta = dict(plan.decoders[job.d].meta)
        ae = self.autoencoder(job.d)
        if job.kind == "msf_eval":
            prompts = {}
            for t in plan.train_tasks + plan.unseen_tasks:
                p = find_prompt(prompts_dir(plan.cfg), t)
                if p.exists():
                    prompts[t] = load_prompt(p)[0]
            return {"meta": meta, "autoencoder": ae.state_dict(), "prompts": prompts}
        from ipt_dist.modeling.autoencoder import code_centroid

        centroid = plan.cfg.ist.z_init == "centroid"
        if job.decoder == "random":  # no encoder: z starts at N(0, init_std) whatever ist.z_init says
            from ipt_dist.modeling.autoencoder import random_decoder

            dec = random_decoder(meta["d"], meta["prompt_len"], meta["hidden"], meta["mid_dim"], seed=plan.cfg.ist.seed)
            return {"meta": meta, "decoder": dec.state_dict(), "z_origin": None}
        prompts = None  # the MSF training tasks' stage-0 prompts (the ones the job ids digest), when needed
        if job.decoder == "pca" or centroid:
            tasks = pca_tasks(plan.decoders[job.d], plan.train_tasks)
            prompts = load_task_prompts(prompts_dir(plan.cfg), tasks, meta["prompt_len"], meta["hidden"])
        if job.decoder == "pca":  # computed here, once per d
            from ipt_dist.modeling.pca_decoder import pca_decoder

            dec = pca_decoder(prompts, job.d)
            return {"meta": meta, "decoder": dec.state_dict(),
                    "z_origin": code_centroid(dec.encode, prompts) if centroid else None}  # ~0: the mean prompt
        return {"meta": meta, "decoder": ae.decoder.state_dict(),  # MSF: centroid = mean Enc(P_i)
                "z_origin": code_centroid(ae.encode, prompts) if centroid else None}

    def inits(self, pack: list[JobSpec]) -> dict[str, torch.Tensor] | None:
        """job_id -> Dec(z*) (L, H) of the pack's IPT-initialised PT jobs; None when it has none."""
        out = {}
        for j in pack:
            if j.role == "ipt_pt":
                z = load_param(self.plan.sweep_dir / "params" / f"{j.z_source}.safetensors")
                with torch.no_grad():
                    out[j.job_id] = self.autoencoder(j.d).decoder(z.view(1, -1).float())[0]  # (L, H)
        return out or None
