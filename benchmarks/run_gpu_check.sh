#!/usr/bin/env bash
# The GPU check, in one command on a machine with an NVIDIA GPU: prints the GPU (nvidia-smi)
# and runs benchmarks/bench_gpu.py (torch eager FP32 vs the torch_cuda backend vs ONNX Runtime on
# the CPU; latency, throughput, parity, zero-shot accuracy, the 3x target) within a wall-clock
# budget, writing bench_gpu.json and bench_gpu.log to $OUT (else a new /tmp/bench_gpu_* folder).
#
# Bundle: $BUNDLE, else the pack .gpu_pack/ in the repository (written here beforehand with
# `python benchmarks/bench_gpu.py --pack .gpu_pack`; it holds the weights, the ONNX graphs and a
# test subset small enough to travel), else <cache>/bundles/default.
# Needs torch (CUDA), numpy, safetensors, pyyaml; onnxruntime, tokenizers, rclpy where there.
# bench_gpu.py's first line names the modules missing here; what needs one is skipped with a
# note, and a pack or bundle that cannot be used ends the run with a one-line note.
# Environment: BUDGET_S (default 420: bench_gpu.py starts no new part after it; the hard
# limit is BUDGET_S + 60 s), QUICK=1 (fewer repetitions), PYTHON (default python3).
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1
export PYTHONPATH="$REPO:$REPO/training${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-420}"
OUT_DIR="${OUT:-$(mktemp -d /tmp/bench_gpu_XXXXXX)}"
mkdir -p "$OUT_DIR"

if [[ -z "${BUNDLE:-}" && -f "$REPO/.gpu_pack/gpu_pack.json" ]]; then
    BUNDLE="$REPO/.gpu_pack"
fi
ARGS=(--device cuda --budget-s "$BUDGET_S" --node-latency --json "$OUT_DIR/bench_gpu.json")
[[ -n "${BUNDLE:-}" ]] && ARGS+=(--bundle "$BUNDLE")
[[ "${QUICK:-0}" == 1 ]] && ARGS+=(--quick)

{
    echo "== $(date -u +%FT%TZ) $(uname -srm), $(nproc) CPUs"
    nvidia-smi || echo "nvidia-smi failed"
    echo "== $PYTHON benchmarks/bench_gpu.py ${ARGS[*]}"
    timeout --signal=INT --kill-after=15 "$((BUDGET_S + 60))" \
        "$PYTHON" benchmarks/bench_gpu.py "${ARGS[@]}"
    rc=$?
    echo "== bench_gpu.py exit status $rc; results in $OUT_DIR"
    exit "$rc"
} 2>&1 | tee "$OUT_DIR/bench_gpu.log"
