"""Orchestration: Ray Train + DeepSpeed MSF (`msf_driver`, `msf_worker`, `msf_inputs`, `deepspeed_config`) and Ray sweep fan-out (`sweep*`).

Import-light on purpose: importing this package imports neither ray nor deepspeed; import the
submodules you need (`from ipt_dist.distributed.msf_driver import run_distributed_msf`).
"""
