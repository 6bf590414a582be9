#!/usr/bin/env bash
# Every check that needs a CUDA GPU, in one time-boxed run (a GPU lease is short):
#   1. the CUDA tests (renderer parity, batched K=3 == three separate runs on CUDA);
#   2. bench/gan_kernels.py: step 2's GAN pass under each speed option separately;
#   3. bench/step_throughput.py: celeba at 128px, full-schedule instances/hour, one-at-a-time vs batched;
#   4. bench/quality.py: SIDE/MAD on the ground-truth instrument (with an LPIPS term of random VGG16
#      weights, so the LPIPS option is on the path) with and without both bf16 options;
#   5. bench/throughput.py: sequential vs batched on the ground-truth instrument, with SIDE/MAD;
#   6. profile: bench/profile_step.py, where K=32's device time goes (G, D features, the five networks,
#      LPIPS, renderer, optimizer, copies, other) and how busy the GPU is, then the same for K=1;
#   7. compare: bench/step_throughput.py, full-schedule instances/hour of the one-at-a-time loop
#      (K=1, today's defaults) and of $BEST, side by side, then bench/speedup_table.py's table.
# Each part has its own time limit, so one that hangs or runs long does not cost the others, and no
# part starts past TOTAL_S seconds (default 540: one 9-minute run); a limit is cut to what is left.
# Results go to $OUT (default bench/results/gpu). Usage: bash bench/gpu_checks.sh
# PARTS="tests kernels steps bf16quality quality profile compare" picks parts (default: parts 1-5);
# STEP_SETTINGS replaces the settings of part 3. All of 1-5 together can pass a 10-minute command limit:
# run PARTS=steps, then the rest, in one lease. Parts 6 and 7 fit one 9-minute run together:
#   PARTS="profile compare" bash bench/gpu_checks.sh
# BEST (default 32:autocast=bf16,lpips_autocast=bf16,gan_compile=inductor) names the best settings, BASE
# (default "1:") the one-at-a-time loop; PROFILE_SETTINGS (default: BEST without compilation, then BASE)
# what part 6 profiles. DRY_RUN=1 runs the same parts on the CPU with a tiny random GAN, small K and a few
# iterations (parts 1, 2, 4 and 5 are skipped: they are CUDA or long-CPU checks), to check the plumbing.
set -u
cd "$(dirname "$0")/.."
DRY_RUN=${DRY_RUN:-0}
if [[ $DRY_RUN == 1 ]]; then OUT=${OUT:-bench/results/gpu_dry_run}; else OUT=${OUT:-bench/results/gpu}; fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RECON_CACHE_DIR=${RECON_CACHE_DIR:-/tmp/recon-cache}
PY=${PYTHON:-python3}
PARTS=${PARTS:-tests kernels steps bf16quality quality}
BASE=${BASE:-1:}
BEST=${BEST:-32:autocast=bf16,lpips_autocast=bf16,gan_compile=inductor}
# BEST without compilation: its warm-up takes minutes, so the profile (and the fallback row of the
# comparison table, should the compiled setting not finish) use the same options uncompiled.
no_compile() { local k=${1%%:*} opts=${1#*:}
  echo "$k:$(tr ',' '\n' <<<"$opts" | grep -v '^gan_compile=' | paste -sd, -)"; }
PROFILE_SETTINGS=${PROFILE_SETTINGS:-$(no_compile "$BEST") $BASE}
DEV=cuda
GAN=(--gan reference --preset celeba)
if [[ $DRY_RUN == 1 ]]; then
  # CPU, tiny GAN (64px, narrow networks, batch 2), small K, one stage, a few iterations per step;
  # inductor's C++ compile would take minutes on a small CPU, aot_eager traces the same graphs.
  DEV=cpu
  GAN=(--gan tiny --preset synface)
  DRY_K=${DRY_K:-2}
  BEST=${BEST/#32:/$DRY_K:}; BEST=${BEST//gan_compile=inductor/gan_compile=aot_eager}
  PROFILE_SETTINGS=$(sed "s/^32:/$DRY_K:/; s/ 32:/ $DRY_K:/g" <<<"$PROFILE_SETTINGS")
  # a shared 2-core CPU runs the tiny GAN slower than the H200 runs celeba: CPU-sized limits
  TOTAL_S=${TOTAL_S:-1800} T_PROFILE=${T_PROFILE:-800} T_COMPARE=${T_COMPARE:-800}
fi
TOTAL_S=${TOTAL_S:-540}
# The reference loop first and last (it varied 1.5x between measurements); between them the candidate
# best (K=32, every option) first, so that a budget cut still leaves the decisive comparison, then the
# same without compilation and without bf16 LPIPS, which separates the two options' shares.
STEP_SETTINGS=${STEP_SETTINGS:-1:modconv=grouped 32:autocast=bf16,lpips_autocast=bf16,gan_compile=inductor \
32:autocast=bf16,lpips_autocast=bf16 32:autocast=bf16 1:modconv=grouped}
T0=$(date +%s)
LOG="$OUT/log.txt"
stamp() { echo "[gpu_checks] $1 at +$(( $(date +%s) - T0 ))s" | tee -a "$LOG"; }
# a part runs when PARTS names it, the dry run allows it and TOTAL_S has 20 s left for it
want() {
  [[ " $PARTS " == *" $1 "* ]] || return 1
  if [[ $DRY_RUN == 1 && " profile compare steps " != *" $1 "* ]]; then
    echo "[gpu_checks] $1 skipped: not part of the CPU dry run" | tee -a "$LOG"; return 1; fi
  if (( TOTAL_S - ($(date +%s) - T0) < 20 )); then
    echo "[gpu_checks] $1 skipped: the ${TOTAL_S}s total is spent" | tee -a "$LOG"; return 1; fi
}
# a part's time limit, cut to what is left of TOTAL_S
limit() { local left=$(( TOTAL_S - ($(date +%s) - T0) - 5 )); echo $(( $1 < left ? $1 : left )); }

if [[ $DRY_RUN == 1 ]]; then
  echo "DRY RUN on the CPU: tiny GAN, K=$DRY_K; the figures mean nothing" | tee -a "$LOG"
  $PY -c "import torch; print('torch', torch.__version__)" 2>&1 | tee -a "$LOG"
else
  { nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  } 2>&1 | tee -a "$LOG"
fi

want tests && stamp "tests" && timeout "$(limit "${T_TESTS:-60}")" $PY -m pytest -q -p no:cacheprovider tests/renderer/test_renderer_gpu.py \
    tests/method/test_reconstructor.py -k "cuda" 2>&1 | tee -a "$LOG"

# one instance's batch (16) under every option but compilation, then eight instances' (128) with it too
want kernels && stamp "GAN kernels" && timeout "$(limit "${T_KERNELS:-150}")" $PY bench/gan_kernels.py --device cuda --batches 16 \
    --variants "grouped fp32 (reference)" "dense fp32" "grouped bf16" "dense bf16" "dense bf16 channels-last" \
    --json "$OUT/gan_kernels_16.json" 2>&1 | tee -a "$LOG"
want kernels && timeout "$(limit "${T_KERNELS:-150}")" $PY bench/gan_kernels.py --device cuda --batches 128 --budget-s "${B_KERNELS:-60}" \
    --json "$OUT/gan_kernels_128.json" 2>&1 | tee -a "$LOG"

# A compiled K=32 setting traces and compiles several graphs (step 2 with gradients, collection
# without, the first GAN pass) in its warm-up run: a few minutes, hence the longer limits.
if [[ $DRY_RUN == 1 ]]; then
  STEP_SETTINGS="1: $BEST"; STEP_FLAGS=(--fast 0.002 --warmup-fast 0.002 --no-flops)
else STEP_FLAGS=(); fi
want steps && stamp "step throughput" && timeout "$(limit "${T_STEPS:-480}")" $PY bench/step_throughput.py --device $DEV \
    "${GAN[@]}" --budget-s "${B_STEPS:-420}" --settings $STEP_SETTINGS "${STEP_FLAGS[@]}" \
    --json "$OUT/step_throughput.json" 2>&1 | tee -a "$LOG"

# bf16 quality on the GPU: the ground-truth benchmark with and without both bf16 options, same seeds
for mode in none bf16; do
  want bf16quality && stamp "quality, bf16 $mode" && timeout "$(limit "${T_BF16Q:-120}")" $PY bench/quality.py --device cuda --random-lpips \
      --batch 16 --set autocast=$mode --set lpips_autocast=$mode --json "$OUT/quality_bf16_$mode.json" 2>&1 | tee -a "$LOG"
done

want quality && stamp "throughput with quality" && timeout "$(limit "${T_QUALITY:-90}")" $PY bench/throughput.py --device cuda --ks 8 --repeats 1 \
    --json "$OUT/throughput.json" 2>&1 | tee -a "$LOG"
# 6. Where the device time goes: K=32 with BEST's options uncompiled, then K=1. Per setting a warm-up run,
# a timed run at fast 0.01 (no profiler: also a full-schedule inst/h row of the table below) and the
# profiled run at fast 0.005. About 100 s for K=32 and 25 s for K=1 on the H200.
if [[ $DRY_RUN == 1 ]]; then PROFILE_FLAGS=(--fast 0.002 --timed-fast 0.002 --warmup-fast 0.002)
else PROFILE_FLAGS=(); fi
T_PROFILE=${T_PROFILE:-170}
PROFILE_TABLE=()  # the profile's rows join the comparison table only when made in this run
if want profile; then
  stamp "profile ($PROFILE_SETTINGS)"
  rm -f "$OUT/profile.json"
  PROFILE_TABLE=(--profile "$OUT/profile.json" --expect-profile $PROFILE_SETTINGS)
  timeout "$(limit "$T_PROFILE")" $PY bench/profile_step.py --device $DEV "${GAN[@]}" --settings $PROFILE_SETTINGS \
      "${PROFILE_FLAGS[@]}" --budget-s $(( T_PROFILE - 45 )) --json "$OUT/profile.json" 2>&1 | tee -a "$LOG"
fi

# 7. One at a time vs BEST: BASE, BEST, BASE again (the one-at-a-time loop varied 1.5x between
# measurements). A compiled K=32 compiles its graphs in the warm-up run: minutes, the bulk of the
# limit; should it not finish, the table says so and its best row is the profile part's uncompiled
# K=32. The table is printed whatever happened, from the JSON written after each setting.
COMPARE_SETTINGS=${COMPARE_SETTINGS:-$BASE $BEST $BASE}
if [[ $DRY_RUN == 1 ]]; then COMPARE_FLAGS=(--fast 0.002 --warmup-fast 0.002)
else COMPARE_FLAGS=(); fi
T_COMPARE=${T_COMPARE:-350}
if want compare; then
  stamp "compare ($COMPARE_SETTINGS)"
  rm -f "$OUT/compare.json"
  timeout "$(limit "$T_COMPARE")" $PY bench/step_throughput.py --device $DEV "${GAN[@]}" --no-flops \
      --settings $COMPARE_SETTINGS "${COMPARE_FLAGS[@]}" --budget-s $(( T_COMPARE - 40 )) \
      --json "$OUT/compare.json" 2>&1 | tee -a "$LOG"
  stamp "speedup table"
  $PY bench/speedup_table.py --compare "$OUT/compare.json" "${PROFILE_TABLE[@]}" --expect $COMPARE_SETTINGS \
      --baseline "$BASE" --best "$BEST" --json "$OUT/speedup.json" 2>&1 | tee -a "$LOG"
fi
stamp "done"
