#!/usr/bin/env bash
# The GPU benchmarks in one run (<= 10 minutes on one H100 or H200): fine-tuning step time, peak
# and planned memory and MFU; sampling throughput; an online step's split. Results go to
# benchmarks/results/gpu_<device>.json. `--tiny` runs the same code on the toy TANGO on CPU (the
# test suite does, so the script cannot fail for a silly reason on the day a GPU is lent).
#
#   bash benchmarks/gpu/run.sh [--tiny] [--out_dir DIR]
#
# Needs the project importable: an installed checkout (pip install -e .) or, on a machine with
# torch, diffusers, transformers, peft and accelerate already there, nothing more (PYTHONPATH below).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu/run.py "$@"
