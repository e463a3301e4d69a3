#!/usr/bin/env bash
# The whole efficiency bench on a lent GPU, inside 8 minutes; tables (+ .json sidecars, printed
# summaries) under $OUT (default results/bench-gpu). Run from the repository root:
#   OUT=/some/dir bash benchmarks/gpu.sh
# 1. every method at 160x192x224 and 128^3, fp32 + bf16 + channels-last + CUDA graphs (each its
#    own case), one training step per method, all in one process (allocator peak reset between);
# 2. hr and crd with torch.compile (compilation is slow, so only these two, at 160x192x224);
# 3. hr and crd each in a fresh process: NVML per-process figures without other models' cache,
#    so NVML minus the allocator peak shows the CUDA context's share.
# Each step has its own time limit, so one slow step cannot take the others' time.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-results/bench-gpu}
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
python -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())" > "$OUT/torch.txt" 2>&1 || true
METHODS="hr lr hr-half fst crd identity"

timeout 270 python -m crd bench --methods $METHODS --sizes 160x192x224 128x128x128 --device cuda \
    --repeats 20 --warmup 5 --bf16 --channels-last --cuda-graphs --train-step \
    --out "$OUT/gpu_all.csv" > "$OUT/gpu_all.txt" 2> "$OUT/gpu_all.log" || echo "step 1 failed: $?" >> "$OUT/failures.txt"

timeout 150 python -m crd bench --methods hr crd --sizes 160x192x224 --device cuda \
    --repeats 20 --warmup 5 --compile \
    --out "$OUT/gpu_compile.csv" > "$OUT/gpu_compile.txt" 2> "$OUT/gpu_compile.log" || echo "step 2 failed: $?" >> "$OUT/failures.txt"

timeout 60 python -m crd bench --methods hr crd --sizes 160x192x224 --device cuda --isolate process \
    --repeats 20 --warmup 5 \
    --out "$OUT/gpu_isolated.csv" > "$OUT/gpu_isolated.txt" 2> "$OUT/gpu_isolated.log" || echo "step 3 failed: $?" >> "$OUT/failures.txt"

cat "$OUT"/gpu_*.txt
