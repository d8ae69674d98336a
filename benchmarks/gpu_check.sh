#!/usr/bin/env bash
# The GPU proof in one command (benchmarks/gpu_check.py): on a lent GPU, `benchmarks/gpu_check.sh`; on a CPU,
# `benchmarks/gpu_check.sh --smoke --out-dir DIR`. Runs from the repository root wherever it is called from.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec python benchmarks/gpu_check.py "$@"
