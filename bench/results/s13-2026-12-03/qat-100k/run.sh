#!/bin/bash
# W1.58A16 vs W1.58A8 DLT+OFF at the same 100k tokens, one thread on core 1, after the W3A4 base cells.
while pgrep -f "wa-w3a4-base.md" >/dev/null; do sleep 10; done
cd /work/bench-tree
export TRITIUM_DATA=/work/shared/data OMP_NUM_THREADS=1 PYTHONPATH=/work/bench-tree/src
for r in ternaryllm-cpu ternaryllm-a8-cpu; do
  echo "[$(date +%T)] $r start"
  /usr/bin/time -v taskset -c 1 python -m tritium.cli distill --model smollm2-135m --recipe $r --tokens 100k \
    --precision bf16 --eval wikitext2 --limit 16 --no-float --no-progress --out /work/s13/qat/$r > /work/s13/qat/$r.log 2>&1
  echo "[$(date +%T)] $r rc=$?"
done
