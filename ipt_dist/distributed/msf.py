"""Distributed MSF (Ray Train workers, each driving a DeepSpeed engine over the prompt autoencoder).

Kept for one release as the import path of what now lives in:
    ipt_dist.distributed.msf_driver   run_distributed_msf: checks, MLflow run, TorchTrainer, export
    ipt_dist.distributed.msf_worker   train_func / MSFWorker: the Ray Train worker body
    ipt_dist.distributed.msf_inputs   absolutize, check_inputs: paths and input checks (no ray)
"""

from __future__ import annotations

from ipt_dist.distributed.msf_driver import DistributedMSFError, run_distributed_msf
from ipt_dist.distributed.msf_inputs import MSFInputError, absolutize, check_inputs, dist_dir
from ipt_dist.distributed.msf_worker import MSFWorker, full_fp32_state, gathered, train_func

__all__ = ["DistributedMSFError", "MSFInputError", "MSFWorker", "absolutize", "check_inputs", "dist_dir",
           "full_fp32_state", "gathered", "run_distributed_msf", "train_func"]
