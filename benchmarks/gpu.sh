#!/usr/bin/env bash
# GPU figures for the speed issue (issue 11): training img/s of all seven methods, model FLOP
# utilisation next to diffusers' UNet2DModel, sampling seconds per slice with and without the
# condition cache, bf16 vs fp32 sampling PSNR. At most 8 minutes on one GPU (the script keeps a
# 450 s budget and skips the 1000-step rows it cannot fit; timeout is the hard stop).
#
#   bash benchmarks/gpu.sh                 # CUDA; extra arguments go to benchmarks/gpu.py
#   bash benchmarks/gpu.sh --cpu-smoke     # the same code paths on CPU at tiny sizes
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export PYTHONPATH="${PWD}${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 "$PYTHON" benchmarks/gpu.py "$@"
