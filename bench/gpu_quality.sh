#!/usr/bin/env bash
# The GPU checks of the quality issue (14), in one call meant to end within 10 minutes on one modern GPU.
#
#   bash bench/gpu_quality.sh                      # on a lent GPU: writes $OUT (default bench/results/gpu-quality)
#
# Two jobs share the GPU at once (each alone leaves most of it idle on a 135M model):
#   ptq      the paper's TesseraQ W2g128 recipe (`w2g128-tesseraq`: 512 x 2048 calibration tokens, 20 PAR
#            stages x 250 steps) on SmolLM2, with and without rotation, beside float and RTN on the same chunks;
#   distill  DLT + OFF ternary distillation of $TOKENS tokens (default 50M) with large batches.
# Each job runs under its own time limit and writes its results as it goes, so a job that runs out of time
# still leaves its finished rows. The environment variables below shrink everything for the CPU plumbing test.
set -uo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-bench/results/gpu-quality}
MODEL=${MODEL:-smollm2-135m}
LIMIT=${LIMIT:-16}                     # WikiText-2 test chunks
SEQLEN=${SEQLEN:-2048}                 # evaluation chunk length
PTQ_RECIPES=${PTQ_RECIPES:-full}       # full: the paper's recipes; cpu for the plumbing test
PTQ_METHODS=${PTQ_METHODS:-rtn,tesseraq+rot,tesseraq}
TOKENS=${TOKENS:-50M}
TRAIN_SEQLEN=${TRAIN_SEQLEN:-512}
MICRO_BATCH=${MICRO_BATCH:-64}
DEVICE=${DEVICE:-cuda}
PRECISION=${PRECISION:-bf16}
JOB_SECONDS=${JOB_SECONDS:-560}        # each job's limit; both run at once
export TRITIUM_DATA=${TRITIUM_DATA:-../shared/data}
export PYTHONUNBUFFERED=1

mkdir -p "$OUT"
{
  date -u +"date: %Y-%m-%d %H:%M:%S UTC"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "gpu: none (nvidia-smi absent)"
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available())"
} > "$OUT/machine.txt" 2>&1

timeout "$JOB_SECONDS" python bench/bench_ptq.py --model "$MODEL" --methods "$PTQ_METHODS" --grids w2g128 \
  --recipes "$PTQ_RECIPES" --limit "$LIMIT" --seqlen "$SEQLEN" --resume --out "$OUT/ptq.md" \
  > "$OUT/ptq.log" 2>&1 &
ptq=$!

timeout "$JOB_SECONDS" python bench/bench_distill.py --model "$MODEL" --variants dlt-off --tokens "$TOKENS" \
  --limit "$LIMIT" --seqlen "$TRAIN_SEQLEN" --micro-batch-size "$MICRO_BATCH" --throughput-steps 2 \
  --device "$DEVICE" --precision "$PRECISION" --resume --out "$OUT/distill" \
  > "$OUT/distill.log" 2>&1 &
distill=$!

wait $ptq; ptq_rc=$?
wait $distill; distill_rc=$?
echo "ptq exit $ptq_rc, distill exit $distill_rc (124: stopped at the ${JOB_SECONDS}s limit)" | tee -a "$OUT/machine.txt"
tail -n 30 "$OUT/ptq.md" 2>/dev/null
tail -n 15 "$OUT/distill.log" 2>/dev/null
[ "$ptq_rc" -eq 0 ] && [ "$distill_rc" -eq 0 ]
