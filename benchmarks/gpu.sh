#!/usr/bin/env bash
# Everything a lent GPU should check, most valuable first, inside a time budget (default 560 s):
#
#   OUT=/some/dir bash benchmarks/gpu.sh          # on a CUDA machine
#   OUT=/tmp/gpu-dry bash benchmarks/gpu.sh --cpu # dry run: the same steps and files on the CPU, tiny sizes
#
# Steps (each its own time limit; a step that would start after the budget is skipped, said so):
# STEPS="paper resume ..." runs only those steps (default: all).
#   paper     crd bench: fp32 hr, lr, crd at 160x192x224 (the paper's comparison), in one process;
#             on CUDA also TF32 (PyTorch's default for convolutions; fp32 here is true float32)
#   converged benchmarks/train_check.py run --as-configured with config/converged.yaml: every default
#             method and the ablations trained to its plateau by the stopping rule, 3 seeds, evaluated
#             and reported (the converged table of the README, on the GPU; its convergence printed)
#   train     benchmarks/train_check.py run: a short training of every default method on a small copy
#             of the embedded dataset (40 iterations; 4 trainings side by side), evaluation of each,
#             the HTML report
#   resume    benchmarks/train_check.py resume: hr training killed (SIGKILL) after a resume state, restarted
#   options   crd bench: every default network at 160x192x224, fp32 + bf16 + channels-last + CUDA graphs,
#             one training step each (fp32)
#   mid       crd bench: every default network at 128x128x128, fp32 + bf16
#   isolated  crd bench: hr and crd each in a fresh process (NVML's per-process figure without other
#             cases' cache; the device-level delta sampled by the parent, for NVML without per-process data)
#   sampler   benchmarks/sampler_overhead.py: does the NVML sampler thread slow short calls?
#   datapath  benchmarks/data_path.py --step: the data path against one hr training step
#   compile   crd bench: hr and crd with torch.compile (cold compilation: slow, so last)
#
# Output, under $OUT (default results/gpu-check): gpu.log (everything printed, written as it goes),
# gpu-results.tar.gz (every table, sidecar, log and the report, repacked after each step, so a
# killed run keeps the steps it finished); the bench tables are also written after every case.
# Exit status: 0 when every step ran and succeeded, 1 otherwise (failures listed at the end).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's crd, also where it is not installed
MODE=cuda
PY=${PYTHON:-python3}  # the interpreter with torch (and crd's dependencies)
[[ "${1:-}" == "--cpu" ]] && MODE=cpu
OUT=${OUT:-results/gpu-check}
BUDGET=${BUDGET:-560}
KNOWN="paper converged train resume options mid isolated sampler datapath compile"  # in the order they run, below
STEPS=" ${STEPS:-$KNOWN} "  # a subset, e.g. STEPS="paper resume"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/crd-gpu-check.XXXXXX")
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu.log") 2>&1

if [[ $MODE == cuda ]]; then
    DEV=cuda BIG=160x192x224 MID=128x128x128 REPEATS=(--repeats 20 --warmup 5) GRAPHS=--cuda-graphs TF32=--tf32
    CHECK=(--iterations 40 --config config.yaml) RESUME_IT=120 THREADS=() JOBS=4 SAMPLER_S=10
    CONVERGED=(--config config.yaml config/converged.yaml) CONVERGED_JOBS=8
else  # dry run: every step and file of the CUDA run, on tiny inputs (CUDA graphs, TF32 need CUDA: left out)
    DEV=cpu BIG=32x64x64 MID=32x32x32 REPEATS=(--repeats 2 --warmup 1) GRAPHS= TF32=
    CHECK=(--iterations 4 --config config.yaml config/smoke.yaml) RESUME_IT=24 THREADS=(--threads 2) JOBS=1 SAMPLER_S=4
    CONVERGED=(--config config.yaml config/smoke.yaml) CONVERGED_JOBS=2  # the smoke config: 2 seeds, tiny
fi
NETWORKS=(hr lr hr-half fst crd fourier-net identity)
for s in $STEPS; do  # a misspelt step would silently run nothing
    [[ " $KNOWN " == *" $s "* ]] || { echo "gpu.sh: unknown step '$s' in STEPS (known: $KNOWN)" >&2; exit 2; }
done
FAILED=()

pack() {  # every file of the check so far, into one archive (the device tool returns at most 8 files)
    tar czf "$OUT/gpu-results.tmp.tar.gz" --exclude='*.pt' --exclude='*.nii.gz' --exclude='.*.resume' -C "$WORK" . && mv "$OUT/gpu-results.tmp.tar.gz" "$OUT/gpu-results.tar.gz"
}

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, print its output, pack the results
    local name=$1 limit=$2 left=$((BUDGET - SECONDS)) t0=$SECONDS rc
    shift 2
    [[ $STEPS == *" $name "* ]] || return 0
    if ((left < 15)); then
        echo "== $name: SKIPPED (the ${BUDGET} s budget is spent)"
        FAILED+=("$name(skipped)")
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit} s, at ${SECONDS} s): $*"
    timeout -k 10 "$limit" "$@" > "$WORK/$name.txt" 2> "$WORK/$name.log"
    rc=$?
    cat "$WORK/$name.txt"
    local why=
    ((rc == 124)) && why=' (TIME LIMIT)'
    ((rc == 137)) && why=' (KILLED: past its time limit, or out of memory)'
    echo "== $name: exit $rc after $((SECONDS - t0)) s$why"
    if ((rc != 0)); then
        FAILED+=("$name(exit $rc)")
        tail -n 20 "$WORK/$name.log"
    fi
    pack
}

bench() {  # bench NAME LIMIT_S crd-bench-arguments...
    local name=$1 limit=$2
    shift 2
    step "$name" "$limit" "$PY" -m crd bench --device "$DEV" "${REPEATS[@]}" "${THREADS[@]}" --keep-going \
        --out "$WORK/$name.csv" "$@"
}

echo "gpu.sh: mode $MODE, budget ${BUDGET} s, work folder $WORK, output $OUT, $(date -u +%FT%TZ)"
(nvidia-smi || echo "no nvidia-smi") > "$WORK/nvidia-smi.txt" 2>&1
"$PY" - <<'EOF' || { echo "gpu.sh: python cannot import what crd needs (see above)"; exit 1; }
import importlib, torch
missing = [m for m in ("monai", "nibabel", "jsonschema", "pandas", "jinja2", "matplotlib", "psutil", "pynvml")
           if importlib.util.find_spec(m) is None]
print("torch", torch.__version__, "CUDA", torch.version.cuda, "device",
      torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
if missing:
    raise SystemExit(f"missing Python packages: {', '.join(missing)} (pip install -e . installs them)")
EOF

bench paper 90 --methods hr lr crd --sizes "$BIG" --isolate none $TF32
step converged 240 "$PY" benchmarks/train_check.py run --as-configured --device "$DEV" --work "$WORK/converged" \
    "${CONVERGED[@]}" --jobs "$CONVERGED_JOBS"
step train 200 "$PY" benchmarks/train_check.py run --device "$DEV" --work "$WORK/train" "${CHECK[@]}" --jobs "$JOBS"
step resume 60 "$PY" benchmarks/train_check.py resume --device "$DEV" --work "$WORK/resume" \
    "${CHECK[@]}" --iterations "$RESUME_IT"
bench options 150 --methods "${NETWORKS[@]}" --sizes "$BIG" --isolate none --bf16 --channels-last $GRAPHS --train-step
bench mid 60 --methods "${NETWORKS[@]}" --sizes "$MID" --isolate none --bf16
bench isolated 60 --methods hr crd --sizes "$BIG" --isolate process
step sampler 40 "$PY" benchmarks/sampler_overhead.py --device "$DEV" "${THREADS[@]}" --seconds "$SAMPLER_S" \
    --out "$WORK/sampler.csv"
step datapath 45 "$PY" benchmarks/data_path.py --size "$BIG" --device "$DEV" "${THREADS[@]}" --step
bench compile 120 --methods hr crd --sizes "$BIG" --isolate none --compile

pack
echo "gpu.sh: done after ${SECONDS} s; failed or skipped: ${FAILED[*]:-none}"
((${#FAILED[@]} == 0))
