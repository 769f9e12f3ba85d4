#!/usr/bin/env bash
# Fill .whl/ (git-ignored) with what bench/msf_throughput.py and bench/peer_peft.py need on a GPU box
# that has torch and transformers but no DeepSpeed, no peft and no network (Python 3.12 there):
# DeepSpeed built without ops (a pure-Python wheel; its ops JIT-build when used), peft and
# accelerate at this venv's versions, and their missing dependencies.
# Run here, in the repo root, with the project's venv active (building the DeepSpeed wheel imports torch):
#     bash bench/gpu_wheels.sh
# then carry .whl to the GPU box; bench/gpu_suite.sh installs it into /tmp/site there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
DS_VERSION=$(python -c "from importlib.metadata import version; print(version('deepspeed'))")
plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" \
  -d .whl hjson pydantic pydantic-core annotated-types typing-inspection typing-extensions psutil
PEFT_VERSION=$(python -c "from importlib.metadata import version; print(version('peft'))")
ACC_VERSION=$(python -c "from importlib.metadata import version; print(version('accelerate'))")
python -m pip download -q --no-deps --only-binary=:all: -d .whl "peft==${PEFT_VERSION}" "accelerate==${ACC_VERSION}"
tmp=$(mktemp -d)
python -m pip download -q --no-deps --no-binary=:all: "deepspeed==${DS_VERSION}" -d "$tmp"
DS_BUILD_OPS=0 python -m pip wheel -q --no-deps --no-build-isolation "$tmp"/deepspeed-*.tar.gz -w .whl
rm -rf "$tmp"
ls -la .whl
du -sh .whl
