#!/usr/bin/env bash
# Both cores, nothing else running: the W3 E2E 200k candidate's whole-run wall time on 2 threads (the -cpu budget is 30 min on 2 cores).
set -u
cd /work/main
export OMP_NUM_THREADS=2 TRITIUM_DATA=/work/shared/data
R=/work/main/bench/results/s17-2026-12-04
mkdir -p $R
/usr/bin/time -v python -m tritium.cli quantize --model smollm2-135m --recipe bench/results/s15-2026-12-04/w3g128-cpu-e2e200k.yaml \
  --eval wikitext2,ptb --limit 16 --no-float --no-progress --checkpoint-dir /work/s17/runs/w3-200k-ckpt \
  --out /work/s17/runs/w3-e2e200k-2core > $R/w3-e2e200k-2core.log 2>&1
