#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one time-boxed run (a GPU lease is short):
#   1. the CUDA tests (renderer parity, batched K=3 == three separate runs on CUDA);
#   2. bench/gan_kernels.py: step 2's GAN pass under each speed option separately;
#   3. bench/step_throughput.py: celeba at 128px, full-schedule instances/hour, one-at-a-time vs batched;
#   4. bench/quality.py: SIDE/MAD on the ground-truth instrument (with an LPIPS term of random VGG16
#      weights, so the LPIPS option is on the path) with and without both bf16 options;
#   5. bench/throughput.py: sequential vs batched on the ground-truth instrument, with SIDE/MAD.
# Each part has its own time limit, so one that hangs or runs long does not cost the others.
# Results go to $OUT (default bench/results/gpu). Usage: bash bench/gpu_checks.sh
# PARTS="tests kernels steps bf16quality quality" picks parts; STEP_SETTINGS replaces the settings of part 3.
# All parts together can pass a 10-minute command limit: run PARTS=steps, then the rest, in one lease.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RECON_CACHE_DIR=${RECON_CACHE_DIR:-/tmp/recon-cache}
PY=${PYTHON:-python3}
PARTS=${PARTS:-tests kernels steps bf16quality quality}
# The reference loop first and last (it varied 1.5x between measurements); between them the candidate
# best (K=32, every option) first, so that a budget cut still leaves the decisive comparison, then the
# same without compilation and without bf16 LPIPS, which separates the two options' shares.
STEP_SETTINGS=${STEP_SETTINGS:-1:modconv=grouped 32:autocast=bf16,lpips_autocast=bf16,gan_compile=inductor \
32:autocast=bf16,lpips_autocast=bf16 32:autocast=bf16 1:modconv=grouped}
want() { [[ " $PARTS " == *" $1 "* ]]; }
T0=$(date +%s)
LOG="$OUT/log.txt"
stamp() { echo "[gpu_checks] $1 at +$(( $(date +%s) - T0 ))s" | tee -a "$LOG"; }

{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee -a "$LOG"

want tests && stamp "tests" && timeout "${T_TESTS:-60}" $PY -m pytest -q -p no:cacheprovider tests/renderer/test_renderer_gpu.py \
    tests/method/test_reconstructor.py -k "cuda" 2>&1 | tee -a "$LOG"

# one instance's batch (16) under every option but compilation, then eight instances' (128) with it too
want kernels && stamp "GAN kernels" && timeout "${T_KERNELS:-150}" $PY bench/gan_kernels.py --device cuda --batches 16 \
    --variants "grouped fp32 (reference)" "dense fp32" "grouped bf16" "dense bf16" "dense bf16 channels-last" \
    --json "$OUT/gan_kernels_16.json" 2>&1 | tee -a "$LOG"
want kernels && timeout "${T_KERNELS:-150}" $PY bench/gan_kernels.py --device cuda --batches 128 --budget-s "${B_KERNELS:-60}" \
    --json "$OUT/gan_kernels_128.json" 2>&1 | tee -a "$LOG"

# A compiled K=32 setting traces and compiles several graphs (step 2 with gradients, collection
# without, the first GAN pass) in its warm-up run: a few minutes, hence the longer limits.
want steps && stamp "step throughput" && timeout "${T_STEPS:-480}" $PY bench/step_throughput.py --device cuda \
    --preset celeba --budget-s "${B_STEPS:-420}" --settings $STEP_SETTINGS \
    --json "$OUT/step_throughput.json" 2>&1 | tee -a "$LOG"

# bf16 quality on the GPU: the ground-truth benchmark with and without both bf16 options, same seeds
for mode in none bf16; do
  want bf16quality && stamp "quality, bf16 $mode" && timeout "${T_BF16Q:-120}" $PY bench/quality.py --device cuda --random-lpips \
      --batch 16 --set autocast=$mode --set lpips_autocast=$mode --json "$OUT/quality_bf16_$mode.json" 2>&1 | tee -a "$LOG"
done

want quality && stamp "throughput with quality" && timeout "${T_QUALITY:-90}" $PY bench/throughput.py --device cuda --ks 8 --repeats 1 \
    --json "$OUT/throughput.json" 2>&1 | tee -a "$LOG"
stamp "done"
