"""ipt_dist: Intrinsic Prompt Tuning (Qin et al.) at cluster scale.

Core (plain PyTorch + transformers): `config`, `data`, `modeling`, `metrics`, `train`, `stages`.
Orchestration (Ray Train, DeepSpeed, Ray tasks, MLflow): `distributed`, `tracking`.
"""

__version__ = "0.1.0"
